"""Long signals in windows: the one windowing and crossfade of the editor and the separator.

`spans(n, window, hop)` covers [0, n) with windows of `window` steps every `hop` (the last one ends at n);
`OverlapAdd` sums processed windows with linear fades over their overlaps at inner edges and divides by the
summed weights, so a constant signal comes back unchanged whatever the overlaps. Windows are added as they
are processed, `batch` at a time (`batches`), so memory is that of a batch of windows plus the output.
Works on torch tensors (..., n) on any device.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def spans(n: int, window: int, hop: int) -> list[tuple[int, int]]:
    """[(start, end)] covering [0, n): one window when n <= window, else every `hop` and a last one ending at n."""
    if window <= 0 or hop <= 0:
        raise ValueError(f"window and hop must be positive, got {window} and {hop}")
    if n <= window:
        return [(0, n)]
    return [(a, a + window) for a in range(0, n - window, hop)] + [(n - window, n)]


def batches(items: list, size: int) -> Iterator[list]:
    if size < 1:
        raise ValueError(f"a window batch holds at least one window, got {size}")
    for i in range(0, len(items), size):
        yield items[i:i + size]


class OverlapAdd:
    """Accumulates windows (..., end − start) at their spans of a (..., n) output with linear crossfades of
    `fade` steps at the edges that overlap a neighbour (never at the signal's own start and end)."""

    def __init__(self, shape: tuple[int, ...], n: int, fade: int, windows: list[tuple[int, int]],
                 device: torch.device | str = "cpu"):
        self.out = torch.zeros(*shape, n, device=device)
        self.weight = torch.zeros(*shape, n, device=device)
        self.fade, self.last = fade, len(windows) - 1
        self.index = {w: k for k, w in enumerate(windows)}

    def add(self, piece: torch.Tensor, start: int, end: int, at: tuple = ()) -> None:
        """Add a processed window; `at` indexes the leading dims it belongs to (e.g. (channel,)), default all."""
        k = self.index[(start, end)]
        ramp = torch.ones(end - start, device=self.out.device)
        f = min(self.fade, (end - start) // 2)
        if f:
            edge = torch.linspace(0, 1, f + 2, device=self.out.device)[1:-1]
            if k > 0:
                ramp[:f] = edge
            if k < self.last:
                ramp[-f:] = torch.minimum(ramp[-f:], edge.flip(0))
        self.out[at][..., start:end] += piece.to(self.out) * ramp
        self.weight[at][..., start:end] += ramp

    def result(self) -> torch.Tensor:
        return self.out / self.weight.clamp_min(1e-6)
