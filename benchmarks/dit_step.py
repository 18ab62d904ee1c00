"""DiT training-step cost of the AdaLN variants and of long skips, as ratios to `sola`, from one run.

CPU (default): forward+backward time and peak training memory (parameters + gradients + activations saved
for backward, counted exactly through autograd's saved-tensor hooks) for a small preset.
GPU (when CUDA is available): also dit-l in bf16 at batch 32 × 10 s: tokens/s and model FLOPs utilisation.
Also prints the parameter savings of SOLA vs full AdaLN at dit-l and dit-xl scale.
With --ezaudio-src PATH (a checkout of github.com/haidog-yaqub/EzAudio; needs einops), EzAudio's own MaskDiT
is built at the same config with random weights and compared side by side: parameters, step time and memory.
Needs torch only.

    python benchmarks/dit_step.py [--preset small --batch 8 --frames 250 --steps 5] [--ezaudio-src PATH]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pretrain.dit import EzAudioDiT, preset  # noqa: E402
from pretrain.info import model_info  # noqa: E402

VARIANTS = {"sola": {}, "full": {"adaln": "full"}, "single": {"adaln": "single"}, "sola-no-skip": {"long_skip": False}}
# dense bf16 peaks from NVIDIA's datasheets (SXM parts), by a substring of torch.cuda.get_device_name()
BF16_DENSE_PEAK = {"H100": 989e12, "H200": 989e12, "B200": 2250e12, "A100": 312e12, "L40S": 362e12}


def peak_flops() -> float | None:
    """This GPU's dense bf16 peak, or None for a card not in the table (MFU is then not printed)."""
    name = torch.cuda.get_device_name()
    return next((v for k, v in BF16_DENSE_PEAK.items() if k in name), None)


def mfu(flops: float, seconds: float) -> str:
    peak = peak_flops()
    return "MFU n/a (card not in BF16_DENSE_PEAK)" if peak is None else f"MFU {flops / seconds / peak:.1%}"


def _batch(cfg, b, n, device, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, cfg.latent_channels, n, generator=g)
    text = torch.randn(b, 100, cfg.text_dim, generator=g)
    return (x.to(device, dtype), torch.rand(b).to(device), torch.randn_like(x).to(device, dtype),
            (torch.rand(b, n, generator=g) > 0.3).to(device), text.to(device, dtype),
            torch.ones(b, 100, dtype=torch.bool, device=device))


class Bench:
    """One model variant with its inputs: timed forward+backward steps and exact training-memory count."""

    def __init__(self, name: str, b: int, n: int, device: str, dtype, **overrides):
        torch.manual_seed(0)
        self.cfg = preset(name, **overrides)
        self.model = self.build().to(device, dtype)
        self.inputs = _batch(self.cfg, b, n, device, dtype)
        self.device = device
        self.params = sum(p.numel() for p in self.model.parameters())
        self.run()  # warm-up

    def build(self) -> torch.nn.Module:
        return EzAudioDiT(self.cfg)

    def forward(self) -> torch.Tensor:
        return self.model(*self.inputs)

    def run(self) -> float:
        if self.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        self.model.zero_grad(set_to_none=True)
        self.forward().float().pow(2).mean().backward()
        if self.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    def memory(self) -> int:
        """Bytes: on GPU the allocator's peak; on CPU parameters + gradients + activations saved for backward."""
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.run()
            return torch.cuda.max_memory_allocated()
        saved = [0]

        def pack(t):
            saved[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = self.forward().float().pow(2).mean()
        loss.backward()
        return 2 * sum(p.numel() * p.element_size() for p in self.model.parameters()) + saved[0]


class EzAudioBench(Bench):
    """EzAudio's own MaskDiT (src/models/conditioners.py of its repository) at the same configuration: the
    same inputs, its DDPM integer timesteps, its masked-context input (gt + mae mask)."""

    src: Path | None = None

    def build(self) -> torch.nn.Module:
        from ezaudio_parity import (
            build_maskdit,  # benchmarks/ezaudio_parity.py: EzAudio's MaskDiT at a config
        )

        return build_maskdit(self.src, self.cfg)

    def forward(self) -> torch.Tensor:
        x, t, context, mask, text, text_mask = self.inputs
        steps = (t * 1000).long()  # EzAudio's DDPM timesteps
        out, _ = self.model(x=x, timesteps=steps, context=text, context_mask=text_mask, gt=context.clone(),
                            mae_mask_infer=mask[:, None, :])
        return out


def interleaved(benches: dict[str, Bench], rounds: int) -> dict[str, float]:
    """Best step time per variant over `rounds` round-robin passes (machine drift hits all variants alike)."""
    best = dict.fromkeys(benches, float("inf"))
    for _ in range(rounds):
        for name, bench in benches.items():
            best[name] = min(best[name], bench.run())
    return best


def step_flops(cfg, b: int, n: int, text_len: int = 100) -> int:
    """FLOPs of one training forward + backward of the DiT at this config, counted by torch's FlopCounterMode on
    the meta device (no memory, no compute): the matmuls, convolutions and attention products the model runs,
    so per-sample layers (time embedding, AdaLN) count once per sample, not once per frame as 6·params·tokens
    would have them. The optimizer's element-wise work is not counted (the MFU convention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = EzAudioDiT(cfg)
        x = torch.empty(b, cfg.latent_channels, n)
        extra = {}
        if cfg.text_dim is not None and text_len:
            extra = {"text": torch.empty(b, text_len, cfg.text_dim), "text_mask": torch.ones(b, text_len, dtype=torch.bool)}
        if cfg.source_channels:
            extra["source"] = torch.empty(b, cfg.source_channels, n)
        with FlopCounterMode(display=False) as counter:
            model(x, torch.empty(b), context=torch.empty_like(x), mask=torch.ones(b, n, dtype=torch.bool),
                  **extra).float().pow(2).mean().backward()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=250, help="latent frames (250 = 5 s at 50 Hz)")
    parser.add_argument("--steps", type=int, default=4, help="interleaved timing rounds")
    parser.add_argument("--ezaudio-src", type=Path, default=None,
                        help="a checkout of EzAudio's repository: compare with its MaskDiT at the same config")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    print(f"CPU, preset {args.preset}, batch {args.batch} x {args.frames} frames, fp32, forward+backward, "
          f"best of {args.steps} interleaved rounds")
    benches = {v: Bench(args.preset, args.batch, args.frames, "cpu", torch.float32, **o) for v, o in VARIANTS.items()}
    if args.ezaudio_src:
        EzAudioBench.src = args.ezaudio_src.resolve()
        benches["ezaudio-maskdit"] = EzAudioBench(args.preset, args.batch, args.frames, "cpu", torch.float32)
    times = interleaved(benches, args.steps)
    memory = {v: b.memory() for v, b in benches.items()}
    print(f"{'variant':<14}{'params':>10}{'ms/step':>10}{'time/sola':>11}{'memory MB':>11}{'mem/sola':>10}")
    for v, bench in benches.items():
        print(f"{v:<14}{bench.params / 1e6:>9.2f}M{1e3 * times[v]:>10.1f}{times[v] / times['sola']:>11.2f}"
              f"{memory[v] / 2**20:>11.1f}{memory[v] / memory['sola']:>10.2f}")

    print("\nAdaLN parameters, SOLA vs full:")
    for name in ("dit-l", "dit-xl"):
        sola, full = model_info(name)["total"], model_info(name, adaln="full")["total"]
        print(f"  {name}: sola {sola / 1e6:.1f} M, full {full / 1e6:.1f} M -> sola/full {sola / full:.3f} "
              f"({(full - sola) / 1e6:.1f} M saved)")

    if torch.cuda.is_available():
        b, n = 32, 500  # 10 s at 50 latent frames/s
        print(f"\nGPU {torch.cuda.get_device_name()}: dit-l, bf16, batch {b} x {n} frames")
        benches = {v: Bench("dit-l", b, n, "cuda", torch.bfloat16, **VARIANTS[v]) for v in ("sola", "full")}
        if args.ezaudio_src:
            benches["ezaudio-maskdit"] = EzAudioBench("dit-l", b, n, "cuda", torch.bfloat16)
        times = interleaved(benches, 10)
        for v, bench in benches.items():
            flops = step_flops(bench.cfg, b, n)
            print(f"  {v:<6} {1e3 * times[v]:.1f} ms/step, {b * n / times[v]:,.0f} tokens/s, "
                  f"{mfu(flops, times[v])}, "
                  f"peak {bench.memory() / 2**30:.1f} GiB")
    else:
        print("\ndit-l bf16 tokens/s, MFU and peak memory at batch 32 x 10 s: not measured (no GPU)")


if __name__ == "__main__":
    main()
