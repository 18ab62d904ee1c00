"""Seconds to generate a 10-s clip: the DiT sampling loop (batched CFG + rescale, Euler) in fp32, bf16 and
with torch.compile (bf16 on a GPU; fp32 on the CPU with --cpu-compile), at 25 and 50 steps, in one run. Each
setting is printed as it is measured: the device's default path first (`capflow generate`'s: bf16 + compile on
CUDA, fp32 on a CPU), the others as ratios to it.

CPU (default): the `small` preset (random weights), batch 1 x 100 frames (2 s at 50 latent frames/s; a 10-s
clip costs ~5x as much: 0.6 s per batched-CFG forward on a 2-core machine).
GPU (when CUDA is available): also dit-l, the same settings, seconds per 10-s clip (best of 3).
Flan-T5 and the VAE decode run once per clip and are not timed here (the DiT runs 2 x steps times).
Needs torch (and the project's pretrain package):

    python benchmarks/generate_speed.py [--preset small --frames 100 --batch 1 --rounds 2] [--cpu-compile]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pretrain.dit import EzAudioDiT, preset  # noqa: E402
from pretrain.pipeline import fast_path  # noqa: E402
from pretrain.sampler import guided_velocity, integrate  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class Sampler:
    """One precision/compile setting of the same DiT weights, with fixed inputs."""

    def __init__(self, base: EzAudioDiT, dtype: str, compile: bool, batch: int, frames: int, device: str):
        self.model = copy.deepcopy(base).eval().to(DTYPES[dtype])
        if compile:
            self.model.compile()
        g = torch.Generator().manual_seed(0)
        cfg = base.config
        self.x = torch.randn(batch, cfg.latent_channels, frames, generator=g).to(device)
        text = torch.randn(batch, 100, cfg.text_dim, generator=g).to(device)
        mask = torch.ones(batch, 100, dtype=torch.bool, device=device)
        self.velocity = guided_velocity(self.model, text=text, text_mask=mask, neg_text=torch.zeros_like(text),
                                        neg_mask=mask, scale=5.0, rescale=0.75)
        self.device = device
        start = time.perf_counter()
        self.run(2)  # warm-up (and compilation)
        self.warmup_s = time.perf_counter() - start

    @torch.no_grad()
    def run(self, steps: int) -> float:
        if self.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        integrate(self.velocity, self.x, steps=steps)
        if self.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


def measure(name: str, batch: int, frames: int, device: str, rounds: int, compiled: str | None) -> None:
    """Prints one row per setting as it is measured, the device's default (`fast_path`) first, with each
    setting's seconds as a ratio to the default's."""
    torch.manual_seed(0)
    with torch.device(device):
        base = EzAudioDiT(preset(name))
    with torch.no_grad():  # random, not zero-initialised, modulation (zeros would make blocks trivial)
        for p in base.parameters():
            p.add_(0.02 * torch.randn_like(p))
    settings = {"fp32": ("fp32", False), "bf16": ("bf16", False)}
    if compiled:
        settings[f"{compiled}+compile"] = (compiled, True)
    dtype, compile = fast_path(device)
    default = f"{dtype}+compile" if compile else dtype
    order = [default, *(k for k in settings if k != default)]
    print(f"{'setting':<22}{'s @25':>9}{'s @50':>9}{'x default @50':>15}{'50/25':>8}{'warm-up s':>11}")
    first = None
    for k in order:
        sampler = Sampler(base, *settings[k], batch, frames, device)
        best = {s: min(sampler.run(s) for _ in range(rounds)) for s in (25, 50)}
        first = first or best[50]
        label = f"{k} (default)" if k == default else k
        print(f"{label:<22}{best[25]:>9.3f}{best[50]:>9.3f}{best[50] / first:>15.2f}{best[50] / best[25]:>8.2f}"
              f"{sampler.warmup_s:>11.1f}", flush=True)
        del sampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--frames", type=int, default=100,
                        help="latent frames on the CPU (100 = 2 s at 50 Hz; the GPU part always uses 500 = 10 s)")
    parser.add_argument("--rounds", type=int, default=2, help="timing runs per setting and step count (the best is kept)")
    parser.add_argument("--cpu-compile", action="store_true",
                        help="also time torch.compile on the CPU (inductor builds C++ kernels: minutes on 2 cores)")
    parser.add_argument("--gpu-only", action="store_true", help="skip the CPU part")
    args = parser.parse_args()

    if not args.gpu_only:
        print(f"CPU ({torch.get_num_threads()} threads), preset {args.preset}, batch {args.batch} x {args.frames} "
              f"frames, Euler with batched CFG, best of {args.rounds}")
        measure(args.preset, args.batch, args.frames, "cpu", args.rounds, "fp32" if args.cpu_compile else None)
    if torch.cuda.is_available():
        print(f"\nGPU {torch.cuda.get_device_name()}: dit-l, batch {args.batch} x 500 frames (10 s), best of 3")
        measure("dit-l", args.batch, 500, "cuda", 3, "bf16")
    else:
        print("\ndit-l seconds per 10-s clip at 25/50 steps, bf16 with and without compile on a GPU: "
              "not measured (no GPU)")


if __name__ == "__main__":
    main()
