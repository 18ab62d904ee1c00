"""Shard I/O, measured in one run, as ratios:

- writer: our ShardSetWriter vs webdataset's TarWriter writing the same members into the same shard sizes
  (fsynced, with the manifest and sidecars ours writes on top) vs a plain fsynced write of the same bytes;
  --repeats interleaved rounds, best and median of each printed (the disk here is shared and drifts);
- reader: our pipeline (no audio decode) vs plain `webdataset.WebDataset` iteration over the same tars;
- memory: peak memory of `shards stats` and `shards release` (captions only) on synthetic sets of
  --sizes captioned clips, per 100 k rows: Python allocations (tracemalloc) + Arrow's pool, in a child
  process each. Target: flat in the number of rows, under 300 MB at any size.

    python benchmarks/shards_io.py [--clips 300 --seconds 10 --repeats 5 --sizes 25000 100000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from shards import audio  # noqa: E402
from shards.manifest import open_shard_set, write_manifest  # noqa: E402
from shards.reader import SampleDecoder, make_pipeline  # noqa: E402
from shards.writer import ShardSetWriter, encode_members  # noqa: E402

PER_SHARD = 100


def synthetic_set(directory: Path, rows: int) -> None:
    """A captioned shard set of `rows` json-only samples (20 scored candidates each, AudioSet-like)."""
    rng = np.random.default_rng(0)
    labels = [f"label {i}" for i in range(527)]
    open_shard_set(directory, {"synthetic": rows, "clap": {"threshold": 0.4}})
    with ShardSetWriter(directory, prefix="s", max_count=10_000) as w:
        for i in range(rows):
            scores = np.round(rng.uniform(0, 0.7, 20), 4)
            cands = [{"text": f"a sound number {j} of clip {i}", "clap": float(s), "kind": "alm", "engine": "e",
                      "prompt": "p", "seed": j} for j, s in enumerate(scores)]
            w.write(f"s-{i:08d}", {"json": {
                "key": f"s-{i:08d}", "source": "s", "id": str(i), "duration": 10.0, "sample_rate": 48000,
                "split": "train" if i % 50 else "eval", "labels": list(rng.choice(labels, 2)), "candidates": cands,
                "captions": [c["text"] for c in sorted(cands, key=lambda c: -c["clap"])[:3]]}})
    write_manifest(directory)


def _measure(kind: str, directory: Path, out: Path, queue) -> None:
    import tracemalloc

    import pyarrow as pa

    from shards.release import release
    from shards.stats import write_stats

    tracemalloc.start()
    if kind == "stats":
        write_stats(directory, out)
    else:
        release(directory, out, license="mit", progress=False)
    queue.put(tracemalloc.get_traced_memory()[1] + pa.default_memory_pool().max_memory())


def peak_memory(kind: str, directory: Path, out: Path) -> int:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_measure, args=(kind, directory, out, queue))
    child.start()
    peak = queue.get()
    child.join()
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--sizes", type=int, nargs="+", default=[25_000, 100_000], help="rows of the memory sets")
    args = parser.parse_args()
    import webdataset as wds

    rng = np.random.default_rng(0)
    n = int(args.seconds * args.sample_rate)
    t = np.arange(n) / args.sample_rate
    clips = [audio.Audio((0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t) + 0.05 * rng.standard_normal(n))
                         .astype(np.float32)[None], args.sample_rate) for _ in range(args.clips)]
    flacs = [audio.encode_flac(c) for c in clips]
    metas = [{"key": f"b-{i}", "source": "b", "id": str(i), "duration": args.seconds, "sample_rate": args.sample_rate,
              "channels": 1, "candidates": [{"text": f"caption {j}", "clap": 0.4} for j in range(20)],
              "captions": ["caption 0"]} for i in range(args.clips)]
    latents = [rng.standard_normal((128, 500)).astype(np.float16) for _ in range(args.clips)]
    members = [{"flac": flacs[i], "json": metas[i], "npy": latents[i]} for i in range(args.clips)]
    total = sum(sum(len(b) for b in encode_members(m).values()) for m in members)

    with tempfile.TemporaryDirectory(dir=".") as tmp:
        tmp = Path(tmp)

        def ours(directory: Path) -> float:
            start = time.perf_counter()
            open_shard_set(directory, {"bench": True})
            with ShardSetWriter(directory, prefix="b", max_count=PER_SHARD) as w:
                for i, m in enumerate(members):
                    w.write(f"b-{i}", m)
            write_manifest(directory)
            return time.perf_counter() - start

        def tarwriter(directory: Path) -> float:
            directory.mkdir()
            start = time.perf_counter()
            for shard in range(0, args.clips, PER_SHARD):
                path = directory / f"b-{shard:06d}.tar"
                with open(path, "wb") as f:
                    with wds.TarWriter(f) as sink:
                        for i in range(shard, min(shard + PER_SHARD, args.clips)):
                            sink.write({"__key__": f"b-{i}", **encode_members(members[i])})
                    f.flush()
                    os.fsync(f.fileno())
            return time.perf_counter() - start

        def plain(directory: Path) -> float:  # the same bytes into files of the same sizes, fsynced
            directory.mkdir()
            encoded = [b"".join(encode_members(m).values()) for m in members]
            start = time.perf_counter()
            for shard in range(0, args.clips, PER_SHARD):
                with open(directory / f"plain-{shard}.bin", "wb") as f:
                    for blob in encoded[shard: shard + PER_SHARD]:
                        f.write(blob)
                    f.flush()
                    os.fsync(f.fileno())
            return time.perf_counter() - start

        ours(tmp / "warmup")  # one-off library initialisation
        times = {"ours": [], "tarwriter": [], "plain": []}
        for r in range(args.repeats):
            for name, fn in (("ours", ours), ("tarwriter", tarwriter), ("plain", plain)):
                times[name].append(fn(tmp / f"{name}{r}"))

        urls = [str(p) for p in sorted((tmp / "ours0").glob("*.tar"))]
        reads = {"ours": [], "webdataset": []}
        for _ in range(args.repeats):
            start = time.perf_counter()
            count = sum(1 for _ in make_pipeline(tmp / "ours0", decoder=SampleDecoder(decode_audio=False)))
            reads["ours"].append(time.perf_counter() - start)
            start = time.perf_counter()
            plain_count = sum(1 for _ in wds.WebDataset(urls, shardshuffle=False))
            reads["webdataset"].append(time.perf_counter() - start)
        assert count == plain_count == args.clips

        memory = {}
        for rows in args.sizes:
            synthetic_set(tmp / f"mem{rows}", rows)
            memory[rows] = (peak_memory("stats", tmp / f"mem{rows}", tmp / f"mem{rows}_stats"),
                            peak_memory("release", tmp / f"mem{rows}", tmp / f"mem{rows}_release"))

    mb = total / 1e6
    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.clips} clips x {args.seconds:.0f} s (flac + json + 128x500 fp16 latents), {mb:.1f} MB, "
          f"{args.repeats} interleaved rounds")
    for name in times:
        print(f"  write {name:<10} best {mb / best[name]:7.1f} MB/s   median {mb / med[name]:7.1f} MB/s")
    print(f"writer / TarWriter: best {best['tarwriter'] / best['ours']:.2f}, median {med['tarwriter'] / med['ours']:.2f} "
          "(> 1: ours faster)")
    print(f"writer / plain fsynced write: best {best['plain'] / best['ours']:.2f}, median {med['plain'] / med['ours']:.2f} "
          "(target >= 0.5)")
    rb = {k: min(v) for k, v in reads.items()}
    rm = {k: statistics.median(v) for k, v in reads.items()}
    print(f"reader / plain webdataset iteration: best {rb['webdataset'] / rb['ours']:.2f}, median "
          f"{rm['webdataset'] / rm['ours']:.2f} (ours also parses json and checks keys)")
    for rows, (stats_peak, release_peak) in memory.items():
        print(f"{rows:>9,} rows: stats peak {stats_peak / 2**20:6.1f} MB ({stats_peak / 2**20 * 1e5 / rows:6.1f} MB per "
              f"100k rows), release peak {release_peak / 2**20:6.1f} MB ({release_peak / 2**20 * 1e5 / rows:6.1f} MB per 100k)")


if __name__ == "__main__":
    main()
