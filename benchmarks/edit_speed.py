"""Instruction-editing speed, in one run: seconds per 10-s edit against generating a 10-s clip at the same step
size (editing integrates from t_start, so the ratio should follow 1 − t_start), and the cost of two-scale
guidance (instruction + source: 3 branches) against instruction-only CFG (2 branches), all branches batched.

The DiT sampling loop is timed (the VAE runs once per clip either way, and text encoding once per
instruction); text embeddings are random tensors of the encoder's width. CPU: the small preset; with CUDA
also dit-l in bf16 (RFM-Editing reports 10.97 s per edit with 200 Euler steps; the target is 10x less).

Memory on long files (edit and separate): benchmarks/long_file_memory.py.

    python benchmarks/edit_speed.py [--steps 50] [--preset small]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import best_of  # noqa: E402
from finetune.editor import editor_velocity  # noqa: E402
from pretrain.dit import EzAudioDiT, preset  # noqa: E402
from pretrain.flow import start_point  # noqa: E402
from pretrain.sampler import guided_velocity, integrate  # noqa: E402

FRAME_RATE = 44100 / 2048  # Stable Audio Open's Oobleck: 21.5 latent frames per second


def run(name: str, device: str, dtype: torch.dtype, steps: int) -> None:
    torch.manual_seed(0)
    dit = EzAudioDiT(preset(name)).add_source_input().to(device, dtype).eval()
    c, e = dit.config.latent_channels, dit.config.text_dim
    n = round(10 * FRAME_RATE)
    text, null = torch.randn(1, 100, e, device=device), torch.randn(1, 100, e, device=device)
    mask = torch.ones(1, 100, dtype=torch.bool, device=device)
    source, noise = torch.randn(1, c, n, device=device), torch.randn(1, c, n, device=device)

    def generate():
        v = guided_velocity(dit, text=text, text_mask=mask, neg_text=null, neg_mask=mask, scale=5.0, rescale=0.75)
        integrate(v, noise, 0.0, steps)

    def edit(t_start: float, cfg_source: float | None):
        v = editor_velocity(dit, source, text, mask, null, mask, cfg=3.0, cfg_source=cfg_source, rescale=0.5)
        integrate(v, start_point(source, noise, t_start), t_start, max(1, round(steps * (1 - t_start))))

    with torch.no_grad():
        generate()  # warm-up
        gen = best_of(generate)
        print(f"{name} on {device} ({str(dtype).split('.')[-1]}), 10-s clip = {n} frames, {steps} steps at t_start 0:")
        print(f"  generate                      {gen:7.3f} s")
        for t_start in (0.01, 0.5):
            only = best_of(lambda t=t_start: edit(t, None))
            two = best_of(lambda t=t_start: edit(t, 1.5))
            print(f"  edit t_start {t_start:<4} instruction {only:7.3f} s (edit/generate {only / gen:.2f}, 1 - t_start "
                  f"{1 - t_start:.2f}); two-scale {two:7.3f} s (two-scale/instruction-only {two / only:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--preset", default="small")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    run(args.preset, "cpu", torch.float32, args.steps)
    if torch.cuda.is_available():
        run("dit-l", "cuda", torch.bfloat16, 200)
    else:
        print("dit-l on GPU: not measured (no CUDA device)")


if __name__ == "__main__":
    main()
