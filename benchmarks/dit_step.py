"""DiT training-step cost of the AdaLN variants and of long skips, as ratios to `sola`, from one run.

CPU (default): forward+backward time and peak training memory (parameters + gradients + activations saved
for backward, counted exactly through autograd's saved-tensor hooks) for a small preset.
GPU (when CUDA is available): also dit-l in bf16 at batch 32 × 10 s: tokens/s and model FLOPs utilisation.
Also prints the parameter savings of SOLA vs full AdaLN at dit-l and dit-xl scale.
Needs torch only.

    python benchmarks/dit_step.py [--preset small --batch 8 --frames 250 --steps 5]
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
H200_BF16_DENSE_FLOPS = 989e12  # NVIDIA H100/H200 SXM datasheet, dense bf16


def _batch(cfg, b, n, device, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, cfg.latent_channels, n, generator=g)
    text = torch.randn(b, 100, cfg.text_dim, generator=g)
    return (x.to(device, dtype), torch.rand(b).to(device), torch.randn_like(x).to(device, dtype),
            (torch.rand(b, n, generator=g) > 0.3).to(device), text.to(device, dtype),
            torch.ones(b, 100, dtype=torch.bool, device=device))


def step_cost(name: str, b: int, n: int, steps: int, device: str, dtype, **overrides) -> dict:
    torch.manual_seed(0)
    cfg = preset(name, **overrides)
    model = EzAudioDiT(cfg).to(device, dtype)
    inputs = _batch(cfg, b, n, device, dtype)
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    def run():
        model.zero_grad(set_to_none=True)
        model(*inputs).float().pow(2).mean().backward()

    run()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        run()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.zero_grad(set_to_none=True)
        loss = model(*inputs).float().pow(2).mean()
    loss.backward()
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else 2 * params + saved[0]  # params + grads + acts
    return {"seconds": seconds, "memory": peak, "params": sum(p.numel() for p in model.parameters()), "config": cfg}


def model_flops(cfg, params: int, b: int, n: int, text_len: int = 100) -> float:
    """Training FLOPs of one step: 6·params·tokens for the matmuls + attention score/value products."""
    blocks, d = 2 * cfg.depth + 1, cfg.width
    attn = 12 * blocks * b * n * d * (n + text_len)  # (QKᵀ + AV) × (fwd + 2·bwd) for self and cross
    return 6 * params * b * n + attn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=250, help="latent frames (250 = 5 s at 50 Hz)")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    print(f"CPU, preset {args.preset}, batch {args.batch} x {args.frames} frames, fp32, forward+backward")
    results = {v: step_cost(args.preset, args.batch, args.frames, args.steps, "cpu", torch.float32, **o)
               for v, o in VARIANTS.items()}
    base = results["sola"]
    print(f"{'variant':<14}{'params':>10}{'ms/step':>10}{'time/sola':>11}{'memory MB':>11}{'mem/sola':>10}")
    for v, r in results.items():
        print(f"{v:<14}{r['params'] / 1e6:>9.2f}M{1e3 * r['seconds']:>10.1f}{r['seconds'] / base['seconds']:>11.2f}"
              f"{r['memory'] / 2**20:>11.1f}{r['memory'] / base['memory']:>10.2f}")

    print("\nAdaLN parameters, SOLA vs full:")
    for name in ("dit-l", "dit-xl"):
        sola, full = model_info(name)["total"], model_info(name, adaln="full")["total"]
        print(f"  {name}: sola {sola / 1e6:.1f} M, full {full / 1e6:.1f} M -> sola/full {sola / full:.3f} "
              f"({(full - sola) / 1e6:.1f} M saved)")

    if torch.cuda.is_available():
        b, n = 32, 500  # 10 s at 50 latent frames/s
        print(f"\nGPU {torch.cuda.get_device_name()}: dit-l, bf16, batch {b} x {n} frames")
        for v in ("sola", "full"):
            r = step_cost("dit-l", b, n, 10, "cuda", torch.bfloat16, **VARIANTS[v])
            flops = model_flops(r["config"], r["params"], b, n)
            print(f"  {v:<6} {1e3 * r['seconds']:.1f} ms/step, {b * n / r['seconds']:,.0f} tokens/s, "
                  f"MFU {flops / r['seconds'] / H200_BF16_DENSE_FLOPS:.1%} (of 989 TFLOP/s), "
                  f"peak {r['memory'] / 2**30:.1f} GiB")
    else:
        print("\nno GPU here: the dit-l bf16 tokens/s and MFU part runs where CUDA is available")


if __name__ == "__main__":
    main()
