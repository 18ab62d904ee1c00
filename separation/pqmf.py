"""Pseudo-QMF filter bank (Nguyen 1994 as used by Multi-band MelGAN / Hybrid-Sep): a Kaiser-windowed
prototype low-pass, cosine-modulated into N analysis and synthesis filters. Analysis: filter, then keep every
N-th sample; synthesis: zero-stuff, filter, sum. Near-perfect reconstruction (error stated in the tests).
Shape legend: b batch, k bands, s samples.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def prototype(taps: int, cutoff: float, beta: float) -> np.ndarray:
    """Kaiser-windowed ideal low-pass of `taps + 1` coefficients, cutoff as a fraction of π."""
    n = np.arange(taps + 1) - taps / 2
    with np.errstate(invalid="ignore"):
        h = np.sin(np.pi * cutoff * n) / (np.pi * n)
    h[taps // 2] = cutoff
    return h * np.kaiser(taps + 1, beta)


class PQMF(nn.Module):
    """N-band PQMF; the default (4 bands, 62 taps, cutoff 0.142, beta 9) is Multi-band MelGAN's."""

    def __init__(self, bands: int = 4, taps: int = 62, cutoff: float = 0.142, beta: float = 9.0):
        super().__init__()
        self.bands, self.taps = bands, taps
        h = prototype(taps, cutoff, beta)
        k = np.arange(bands)[:, None]
        n = np.arange(taps + 1)[None, :]
        phase = (-1) ** k * np.pi / 4
        arg = (2 * k + 1) * np.pi / (2 * bands) * (n - taps / 2)
        analysis = 2 * h * np.cos(arg + phase)
        synthesis = 2 * h * np.cos(arg - phase)
        self.register_buffer("analysis", torch.from_numpy(analysis).float()[:, None], persistent=False)  # (k, 1, taps+1)
        self.register_buffer("synthesis", torch.from_numpy(synthesis).float()[None], persistent=False)  # (1, k, taps+1)
        stuff = torch.zeros(bands, bands, bands)
        for i in range(bands):
            stuff[i, i, 0] = 1.0
        self.register_buffer("stuff", stuff, persistent=False)

    def padded_length(self, samples: int) -> int:
        return -(-samples // self.bands) * self.bands

    def analyse(self, x: torch.Tensor) -> torch.Tensor:
        """(b, s) -> (b, k, ceil(s / k)); s is zero-padded to a multiple of k."""
        x = F.pad(x, (0, self.padded_length(x.shape[-1]) - x.shape[-1]))[:, None]
        y = F.conv1d(F.pad(x, (self.taps // 2, self.taps // 2)), self.analysis)
        return y[..., :: self.bands]

    def synthesise(self, y: torch.Tensor, samples: int | None = None) -> torch.Tensor:
        """(b, k, n) -> (b, samples) (default k·n)."""
        up = F.conv_transpose1d(y, self.stuff * self.bands, stride=self.bands)  # zero-stuffing, gain k
        x = F.conv1d(F.pad(up, (self.taps // 2, self.taps // 2)), self.synthesis)[:, 0]
        return x[..., :samples] if samples is not None else x
