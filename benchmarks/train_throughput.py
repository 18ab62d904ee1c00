"""The training loop's speed against the bare model step it wraps, in one run (ratios; this machine is noisy).

- loader headroom (tiny preset, 10-s EzAudio-shaped latents, 128 x 500): the latent loader alone against loader
  + training step; target (issue #5) >= 5.
- loop / raw step: `Trainer.step()` (loader, accumulation, finiteness checks, clipping, AdamW, schedule, EMA)
  against forward + backward + AdamW on one batch already on the device, timed over optimizer steps only
  (after warm-up); a checkpoint's save and the export are timed apart, as seconds per checkpoint. Target
  (issue #22) loop >= 0.9x the raw step.
- CPU: the small preset; with CUDA: dit-l, bf16, batch 32 x 10 s, eager and torch.compile, with MFU (the model's
  FLOPs counted by torch's FlopCounterMode, over the card's dense bf16 peak) and the host syncs per step.
  Without CUDA the GPU lines say "not measured".
Needs the project's environment (webdataset, pydantic, accelerate, diffusers).

    python benchmarks/train_throughput.py [--steps 20 --micro-batch 8 --workers 1]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.dit_step import mfu, step_flops  # noqa: E402
from pretrain.config import PretrainConfig  # noqa: E402
from pretrain.data import LatentBatches  # noqa: E402
from pretrain.train import Trainer  # noqa: E402
from shards.manifest import open_shard_set, write_manifest  # noqa: E402
from shards.writer import ShardSetWriter  # noqa: E402

CHANNELS, FRAMES = 128, 500  # 10 s at 50 latent frames/s (EzAudio's VAE)


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
    write_manifest(directory, extra={"codec": codec, "frame_rate": 50.0, "latent_channels": CHANNELS, "duration": 10.0})
    return directory


def config(out: Path, shards: Path, preset: str, micro: int, workers: int, steps: int, **extra) -> PretrainConfig:
    return PretrainConfig.model_validate({
        "stage": "mask", "output_dir": str(out), "model": {"preset": preset, "compile": extra.pop("compile", False)},
        "data": {"shards": [str(shards)], "micro_batch_size": micro, "num_workers": workers, "shuffle": 64},
        "optim": {"lr": 1e-4, "warmup_steps": 1}, "ema": {"enabled": True}, "validation": {"every": 0},
        "steps": steps, "batch_size": micro, "log_every": 10**9, "save_every": 10**9, "tensorboard": False, **extra})


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_raw_step(trainer: Trainer, steps: int) -> float:
    """Seconds per forward + backward + AdamW step on one batch already on the device (no loader, no checks,
    no clipping, no EMA): the model step the loop wraps."""
    batch = {k: v.to(trainer.acc.device) if torch.is_tensor(v) else v for k, v in next(trainer.batches).items()}
    model, optimizer, device = trainer.model, trainer.optimizer, trainer.acc.device

    def one():
        with trainer.acc.autocast():
            loss = trainer.loss(batch)
        trainer.acc.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        one()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        one()
    sync(device)
    del model
    return (time.perf_counter() - start) / steps


def time_loop(trainer: Trainer, steps: int, warmup: int = 3) -> tuple[float, float, float, float]:
    """(seconds per optimizer step of Trainer.step after warm-up steps, the median step's seconds, seconds to
    save a checkpoint, seconds to export). The steps run back to back with one sync at the end, as in
    training (a sync per step would add the wait the loop avoids); on a GPU the median comes from CUDA events
    between steps. A mean well over the median means a few slow steps (recompiles)."""
    device = trainer.acc.device
    for _ in range(warmup):
        trainer.step()
    sync(device)
    cuda = device.type == "cuda"
    events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)] if cuda else []
    stamps = [time.perf_counter()]
    if cuda:
        events[0].record()
    for i in range(1, steps + 1):
        trainer.step()
        stamps.append(time.perf_counter())
        if cuda:
            events[i].record()
    sync(device)
    mean = (time.perf_counter() - stamps[0]) / steps
    times = [a.elapsed_time(b) / 1e3 for a, b in zip(events, events[1:])] if cuda else np.diff(stamps)
    start = time.perf_counter()
    trainer.save()
    save = time.perf_counter() - start
    start = time.perf_counter()
    trainer.export()
    return mean, float(np.median(times)), save, time.perf_counter() - start


def busy(fn, steps: int = 3) -> tuple[float, str, str]:
    """(the share of fn's wall time that the GPU spends in kernels over `steps` calls under the profiler, the top
    kernels table, the whole table): near 1 means the step is GPU-bound, lower means the GPU waits on the host
    (launches, syncs, data). The profiler slows the host, so this share is a lower bound."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    events = prof.key_averages()
    kernels = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA) / 1e6
    return kernels / wall, *(events.table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=width)
                             for rows, width in ((20, 70), (-1, 200)))


def syncs_per_step(trainer: Trainer, steps: int = 3) -> float:
    """Host syncs per Trainer.step, counted by CUDA's sync debug mode (each waits for the GPU's queue to drain;
    the loop is built to make none)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(steps):
                trainer.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught) / steps


def loop_vs_raw(label: str, cfg: PretrainConfig, steps: int, gpu_stats: bool = False,
                profile_table: Path | None = None) -> None:
    """One Trainer (one compile where compiled) times the raw step, then the loop."""
    trainer = Trainer(cfg)
    flops = None
    if gpu_stats:
        flops = step_flops(trainer.unwrapped.config, cfg.data.micro_batch_size, FRAMES, text_len=0)  # mask stage
    raw = time_raw_step(trainer, steps)
    loop, median, save, export = time_loop(trainer, steps)
    if gpu_stats:
        loop_busy, table, full = busy(trainer.step)
        if profile_table is not None:
            profile_table.write_text(f"{label}\n{full}\n")
        syncs = syncs_per_step(trainer)
    b = cfg.data.micro_batch_size
    line = (f"{label}: raw step {raw * 1e3:8.1f} ms ({b / raw:6.1f} samples/s), loop {loop * 1e3:8.1f} ms "
            f"({b / loop:6.1f} samples/s), loop/raw speed {raw / loop:.2f} (target >= 0.9)")
    if flops is not None:
        line += f", raw {mfu(flops, raw)}, loop {mfu(flops, loop)}"
    print(line)
    retries = torch.cuda.memory_stats().get("num_alloc_retries", 0) if torch.cuda.is_available() else 0
    print(f"{' ' * len(label)}  median loop step {median * 1e3:.1f} ms; checkpoint save {save:.2f} s, export "
          f"{export:.2f} s (not in the step times); allocator retries {retries}")
    if gpu_stats:
        print(f"{' ' * len(label)}  host syncs per loop step {syncs:.1f}; GPU busy in kernels {loop_busy:.0%} of the "
              f"loop's steps; top kernels:\n{table}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--gpu-only", action="store_true", help="skip the CPU parts")
    parser.add_argument("--gpu-modes", default="eager,compiled", help="which of eager,compiled to time on the GPU")
    parser.add_argument("--profile-dir", type=Path, default=None,
                        help="write each GPU mode's whole kernel table (profiled loop steps) here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not args.gpu_only:
        cpu(args)
    if torch.cuda.is_available():
        gpu(args.gpu_modes.split(","), args.profile_dir)
    else:
        print("GPU dit-l bf16 batch 32 x 10 s (eager, compiled): not measured (no CUDA on this machine)")


def cpu(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = write_latents(tmp / "latents", 256)
        cfg = config(tmp / "run", shards, "tiny", args.micro_batch, args.workers, 10**6)

        stream = iter(LatentBatches(cfg))
        next(stream)  # start-up (workers, first shard) is not throughput
        start = time.perf_counter()
        for _ in range(args.steps):
            next(stream)
        loader = args.steps * args.micro_batch / (time.perf_counter() - start)
        trainer = Trainer(cfg)
        for _ in range(2):
            trainer.step()
        start = time.perf_counter()
        for _ in range(args.steps):
            trainer.step()
        train = args.steps * args.micro_batch / (time.perf_counter() - start)
        print(f"tiny preset, micro-batch {args.micro_batch}, latents {CHANNELS}x{FRAMES} float16, "
              f"{args.workers} loader worker(s), CPU")
        print(f"data loader alone:       {loader:8.1f} samples/s")
        print(f"loader + training step:  {train:8.1f} samples/s")
        print(f"loader headroom:         {loader / train:8.1f}x (target >= 5)")

        small = config(tmp / "small", shards, "small", 4, args.workers, 10**6)
        loop_vs_raw("CPU small preset, batch 4 x 10 s, fp32", small, max(3, args.steps // 4))


def gpu(modes: list[str], profile_dir: Path | None = None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = write_latents(tmp / "latents", 512)
        for compiled in [m == "compiled" for m in modes]:
            cfg = config(tmp / f"run-{compiled}", shards, "dit-l", 32, 8, 10**6, mixed_precision="bf16", compile=compiled)
            loop_vs_raw(f"GPU {torch.cuda.get_device_name()} dit-l bf16 batch 32 x 10 s, "
                        f"{'compiled' if compiled else 'eager'}", cfg, 10, gpu_stats=True,
                        profile_table=profile_dir and profile_dir / f"kernels_{'compiled' if compiled else 'eager'}.txt")
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
