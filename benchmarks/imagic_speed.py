"""Imagic editing speed, in one run: seconds per step of the embedding optimisation (step 1) and of the DiT
tuning (step 2) with LoRA and with full fine-tuning, their ratio, and the total per 10-s edit at the paper's
500 + 1500 steps plus one sampling sweep. The paper: 0.42 s per embedding step and 17 minutes for full
fine-tuning of a 10-s clip on an RTX 3090 (9 minutes with LoRA).

The DiT is built at the preset's size with random weights and random text embeddings (the loops' cost does
not depend on the weights). CPU: the small preset; with CUDA also dit-l.

    python benchmarks/imagic_speed.py [--preset small] [--steps 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune.imagic import ImagicConfig, ImagicEditor  # noqa: E402
from pretrain.dit import EzAudioDiT, preset  # noqa: E402
from pretrain.pipeline import SamplerDefaults  # noqa: E402

FRAME_RATE = 44100 / 2048


def per_step(fn, steps: int) -> float:
    fn(1)  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(steps)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def run(name: str, device: str, steps: int, sample_steps: int) -> None:
    torch.manual_seed(0)
    dit = EzAudioDiT(preset(name)).to(device)
    for blk in dit.blocks():  # a trained model's cross-attention is not zero: the text gets a gradient
        torch.nn.init.normal_(blk.cross_attn.proj.weight, std=0.02)
    t2a = SimpleNamespace(dit=dit, codec=SimpleNamespace(frame_rate=FRAME_RATE), device=torch.device(device),
                          sampler=SamplerDefaults(steps=sample_steps), text_encoder=None)
    n = round(10 * FRAME_RATE)
    z = torch.randn(1, dit.config.latent_channels, n, device=device)
    e = torch.randn(1, 100, dit.config.text_dim, device=device)
    mask = torch.ones(1, 100, dtype=torch.bool, device=device)

    def editor(**kw):
        return ImagicEditor(t2a, ImagicConfig(eta=0.7, clap_model=None, **kw))

    embed = per_step(lambda k: editor(embed_steps=k).optimise_embedding(z, e, mask), steps)
    timings = {}
    for label, rank in (("LoRA r16", 16), ("full", None)):
        def tune(k, rank=rank):
            tuned, restore = editor(tune_steps=k, lora_rank=rank).tune(z, e, mask)
            restore()
        timings[label] = per_step(tune, steps)
    print(f"{name} on {device}, 10-s clip ({n} frames):")
    print(f"  step 1 embedding optimisation {embed:.4f} s/step (paper, RTX 3090: 0.42)")
    for label, t in timings.items():
        print(f"  step 2 tuning, {label:<8} {t:.4f} s/step")
    print(f"  LoRA / full per tuning step: {timings['LoRA r16'] / timings['full']:.2f}")
    for label, t in timings.items():
        total = 500 * embed + 1500 * t
        print(f"  per edit at 500 + 1500 steps, {label}: {total:.1f} s ({total / 60:.1f} min) + one sampling sweep")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    run(args.preset, "cpu", args.steps, 25)
    if torch.cuda.is_available():
        run("dit-l", "cuda", 20, 100)
    else:
        print("dit-l on GPU: not measured (no CUDA device)")


if __name__ == "__main__":
    main()
