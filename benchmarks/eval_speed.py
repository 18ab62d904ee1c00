"""Evaluation speed on this machine, in one run: clips/s of each backbone (PANNs CNN14, VGGish, CLAP) on
10-s clips (after each backbone's reference-toolkit preparation), one clip per call and a batch of them per
call, on the CPU and, where CUDA exists, on the GPU; and the speedup of cached reference statistics over
re-embedding the reference set.

Backbones are the random ones of `capflow tiny-models` (CNN14 and VGGish have fixed widths, so their cost is
the real models'; the tiny CLAP is smaller than laion's).

    python benchmarks/eval_speed.py [--clips 16 --seconds 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from capflow.tiny import write_all_tiny_models  # noqa: E402
from evaluation.backbones import load_backbone  # noqa: E402
from evaluation.evaluate import EvalConfig, evaluate  # noqa: E402
from shards.audio import Audio  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = write_all_tiny_models(tmp / "models")
        for name in ("ref", "gen"):
            (tmp / name).mkdir()
            for i in range(args.clips):
                sf.write(tmp / name / f"{i:03d}.wav", 0.1 * rng.standard_normal(int(args.seconds * 16000)), 16000)
        waves = [0.1 * rng.standard_normal(int(args.seconds * 16000)).astype(np.float32) for _ in range(args.clips)]
        print(f"{args.clips} clips of {args.seconds:g} s, CPU ({os.cpu_count()} cores)")
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for device in devices:
            for name in ("panns-cnn14", "vggish", "clap"):
                backbone = load_backbone(name, models[name], device)
                prepared = [backbone.prepare(Audio(w[None], 16000)) for w in waves]
                backbone(prepared[:1])  # warm-up
                start = time.perf_counter()
                for wave in prepared:
                    backbone([wave])
                single = time.perf_counter() - start
                start = time.perf_counter()
                backbone(prepared)
                batched = time.perf_counter() - start
                print(f"  {device:<4} {name:<12} one per call {args.clips / single:7.2f} clips/s, batch of {args.clips} "
                      f"{args.clips / batched:7.2f} clips/s (batch/single {single / batched:.2f})")
        if devices == ["cpu"]:
            print("  cuda: not measured (no CUDA on this machine)")
        cfg = EvalConfig(generated=str(tmp / "gen"), reference=str(tmp / "ref"), models=str(tmp / "models"),
                         metrics=["fd", "fad"], out=str(tmp / "eval"))
        start = time.perf_counter()
        evaluate(cfg)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        report = evaluate(cfg)
        warm = time.perf_counter() - start
        assert report["metrics"]["fd"]["reference_cached"]
        print(f"fd + fad, reference embedded: {cold:.1f} s; reference statistics from the cache: {warm:.1f} s "
              f"-> speedup {cold / warm:.2f} (the generated side is embedded both times)")


if __name__ == "__main__":
    main()
