"""Wall-clock timing for the benchmarks: best of a few runs, CUDA synchronised around each."""

from __future__ import annotations

import time

import torch


def best_of(fn, repeats: int = 2, warmup: bool = False) -> float:
    """Seconds of the fastest of `repeats` calls of fn() (after one warm-up call when asked)."""
    if warmup:
        fn()
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best
