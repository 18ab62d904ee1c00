"""Long signals in windows, streamed: the one windowing and crossfade of the editor and the separator.

A signal of n steps is covered by windows of `window` steps every `hop = window − fade`, and a last one that
ends at n (one window when n <= window): `spans`. `overlap_add` reads the signal as blocks of any size, hands
`batch` windows at a time to a function, sums what it returns with linear fades of `fade` steps where windows
overlap a neighbour (never at the signal's own start and end), divides by the summed weights, so that windows
returned unchanged give the signal back exactly, and yields each stretch of the result as soon as no later
window touches it. Memory is that of a batch of windows whatever the signal's length, which need not be known
in advance. Blocks and windows are (..., steps) tensors (numpy blocks are taken as tensors); the result is a
float32 CPU tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch


def spans(n: int, window: int, hop: int) -> list[tuple[int, int]]:
    """[(start, end)] covering [0, n): one window when n <= window, else every `hop` and a last one ending at n."""
    if window <= 0 or hop <= 0:
        raise ValueError(f"window and hop must be positive, got {window} and {hop}")
    if n <= window:
        return [(0, n)]
    return [(a, a + window) for a in range(0, n - window, hop)] + [(n - window, n)]


def _windows(blocks: Iterable, window: int, hop: int) -> Iterator[tuple[int, int, torch.Tensor, bool]]:
    """(index, start, window's steps, is_last) in the order of `spans`, reading blocks only as far as needed: a
    window at `start` is a regular one when the signal goes on past start + window, else the last one ends at
    the signal's end (and starts after the previous regular window's start)."""
    buffer, base, start, k = None, 0, 0, 0  # buffer holds steps [base, base + its length)
    source = iter(blocks)
    ended = False
    while True:
        while not ended and (buffer is None or base + buffer.shape[-1] <= start + window):
            block = next(source, None)
            if block is None:
                ended = True
            else:
                block = torch.as_tensor(block)
                buffer = block if buffer is None else torch.cat([buffer, block], dim=-1)
        seen = 0 if buffer is None else base + buffer.shape[-1]
        if seen == 0:
            raise ValueError("an empty signal has no windows")
        if seen > start + window:
            yield k, start, buffer[..., start - base: start - base + window], False
            k, start = k + 1, start + hop
            keep = start - hop + 1 - base  # the last window starts after the previous regular one
            buffer, base = buffer[..., keep:], base + keep
        else:
            first = max(0, seen - window)
            yield k, first, buffer[..., first - base:], True
            return


def overlap_add(blocks: Iterable, window: int, fade: int, batch: int,
                process: Callable[[torch.Tensor, list[int]], torch.Tensor]) -> Iterator[torch.Tensor]:
    """Stream `process` over the windows of a signal given as blocks (..., steps), crossfaded.

    process(windows (w, ..., steps), indices) -> (w, ..., steps): up to `batch` windows at a time, all of one
    length (the window's, or the whole signal's when it is shorter), with their indices in the signal (for
    per-window seeds). Yields the result in order, (..., steps) pieces that together are as long as the signal."""
    if not 0 <= fade < window:
        raise ValueError(f"the fade must be in [0, window), got fade {fade} and window {window}")
    if batch < 1:
        raise ValueError(f"a window batch holds at least one window, got {batch}")
    out = weight = None  # the output steps [done, done + their length) not yet yielded
    done = 0
    group: list[tuple[int, int, torch.Tensor, bool]] = []
    for item in _windows(blocks, window, window - fade):
        group.append(item)
        if len(group) < batch and not item[3]:
            continue
        processed = process(torch.stack([piece for _, _, piece, _ in group]), [k for k, _, _, _ in group])
        for (k, start, _, last), piece in zip(group, processed):
            piece = piece.detach().float().cpu()
            n = piece.shape[-1]
            ramp = torch.ones(n)
            f = min(fade, n // 2)
            if f:
                edge = torch.linspace(0, 1, f + 2)[1:-1]
                if k > 0:
                    ramp[:f] = edge
                if not last:
                    ramp[-f:] = torch.minimum(ramp[-f:], edge.flip(0))
            if out is None:
                out, weight = torch.zeros(*piece.shape[:-1], 0), torch.zeros(0)
            grow = start + n - done - out.shape[-1]
            if grow > 0:
                out = torch.cat([out, out.new_zeros(*out.shape[:-1], grow)], dim=-1)
                weight = torch.cat([weight, weight.new_zeros(grow)])
            out[..., start - done: start - done + n] += piece * ramp
            weight[start - done: start - done + n] += ramp
        # every later window starts after the last one processed: the steps before its start are final
        ready = out.shape[-1] if group[-1][3] else group[-1][1] - done
        if ready > 0:
            yield out[..., :ready] / weight[:ready].clamp_min(1e-6)
            out, weight, done = out[..., ready:], weight[ready:], done + ready
        group = []
