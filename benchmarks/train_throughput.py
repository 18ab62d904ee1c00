"""Training-input headroom: samples/s of the latent data loader alone and of loader + training step, for
the tiny preset on 10-s EzAudio-shaped latents (128 channels x 500 frames), as a ratio from one run.
Target (issue #5): the loader at least 5x faster than the step it feeds.
With CUDA: also dit-l in bf16 (samples/s and model FLOPs utilisation).
Needs the project's environment (webdataset, pydantic, accelerate, diffusers): unlike dit_step.py, which
needs torch alone, it measures the real loader and training loop.

    python benchmarks/train_throughput.py [--steps 30 --micro-batch 8 --workers 1]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pretrain.config import PretrainConfig  # noqa: E402
from pretrain.data import LatentBatches  # noqa: E402
from pretrain.train import Trainer  # noqa: E402
from shards.manifest import open_shard_set, write_manifest  # noqa: E402
from shards.writer import ShardSetWriter  # noqa: E402

CHANNELS, FRAMES = 128, 500  # 10 s at 50 latent frames/s (EzAudio's VAE)
H200_BF16_DENSE_FLOPS = 989e12


def write_latents(directory: Path, clips: int) -> Path:
    rng = np.random.default_rng(0)
    open_shard_set(directory, {"bench": True}, kind="latent")
    with ShardSetWriter(directory, prefix="latent", max_count=64) as w:
        for i in range(clips):
            meta = {"key": f"b-{i}", "duration": 10.0, "captions": ["a dog barks twice", "rain on a roof"],
                    "candidates": [{"text": "a dog barks twice", "clap": 0.5}, {"text": "rain on a roof", "clap": 0.45}],
                    "latent": {"frames": FRAMES, "valid_frames": FRAMES}}
            w.write(f"b-{i}", {"npy": rng.standard_normal((CHANNELS, FRAMES)).astype(np.float16), "json": meta})
    codec = {"pretrained": "unused", "subfolder": None, "sample_posterior": False,
             "latent_mean": [0.0] * CHANNELS, "latent_std": [1.0] * CHANNELS}
    write_manifest(directory, extra={"codec": codec, "frame_rate": 50.0, "latent_channels": CHANNELS})
    return directory


def config(out: Path, shards: Path, preset: str, micro: int, workers: int, steps: int) -> PretrainConfig:
    return PretrainConfig.model_validate({
        "stage": "mask", "output_dir": str(out), "model": {"preset": preset},
        "data": {"shards": [str(shards)], "micro_batch_size": micro, "num_workers": workers, "shuffle": 64},
        "optim": {"lr": 1e-4, "warmup_steps": 1}, "ema": {"enabled": True}, "validation": {"every": 0},
        "steps": steps, "batch_size": micro, "log_every": 10**9, "save_every": 10**9, "tensorboard": False})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = write_latents(tmp / "latents", 256)
        cfg = config(tmp / "run", shards, "tiny", args.micro_batch, args.workers, args.steps)

        stream = iter(LatentBatches(cfg))
        next(stream)  # start-up (workers, first shard) is not throughput
        start = time.perf_counter()
        for _ in range(args.steps):
            next(stream)
        loader = args.steps * args.micro_batch / (time.perf_counter() - start)

        trainer = Trainer(cfg)
        batch = next(trainer.batches)
        trainer.loss(batch).backward()  # warm-up
        trainer.optimizer.zero_grad()
        trainer.cfg = cfg.model_copy(update={"steps": args.steps + 1})
        trainer.state.step = 1
        start = time.perf_counter()
        trainer.train()
        train = args.steps * args.micro_batch / (time.perf_counter() - start)

    print(f"tiny preset, micro-batch {args.micro_batch}, latents {CHANNELS}x{FRAMES} float16, "
          f"{args.workers} loader worker(s), CPU")
    print(f"data loader alone:       {loader:8.1f} samples/s")
    print(f"loader + training step:  {train:8.1f} samples/s")
    print(f"loader headroom:         {loader / train:8.1f}x (target >= 5)")
    if torch.cuda.is_available():
        gpu(args)
    else:
        print("no GPU here: the dit-l bf16 samples/s and MFU part runs where CUDA is available")


def gpu(args) -> None:
    from benchmarks.dit_step import model_flops  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = write_latents(tmp / "latents", 512)
        cfg = config(tmp / "run", shards, "dit-l", 32, 8, 20).model_copy(update={"mixed_precision": "bf16"})
        trainer = Trainer(cfg)
        trainer.cfg = cfg.model_copy(update={"steps": 5})
        trainer.train()  # warm-up steps
        torch.cuda.synchronize()
        trainer.cfg = cfg.model_copy(update={"steps": 25})
        start = time.perf_counter()
        trainer.train()
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / 20
        params = sum(p.numel() for p in trainer.unwrapped.parameters())
        mfu = model_flops(trainer.unwrapped.config, params, 32, FRAMES, text_len=0) / seconds / H200_BF16_DENSE_FLOPS
        print(f"GPU {torch.cuda.get_device_name()}: dit-l mask stage, bf16, batch 32 x 10 s: "
              f"{32 / seconds:.1f} samples/s, MFU {mfu:.1%} (of 989 TFLOP/s)")


if __name__ == "__main__":
    main()
