"""Multi-scale STFT discriminator (EnCodec / X-codec style, as Hybrid-Sep's ACT uses) and the LSGAN losses.
Each scale: complex STFT (real, imaginary) -> 2-D convolutions dilated along time, strided along frequency
-> a map of real/fake scores. Shape legend: b batch, s samples, t frames, f bins.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class STFTDiscriminator(nn.Module):
    def __init__(self, n_fft: int, channels: int = 32):
        super().__init__()
        self.n_fft, self.hop = n_fft, n_fft // 4
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        layers, c = [nn.Conv2d(2, channels, (3, 9), padding=(1, 4))], channels
        for dilation in (1, 2, 4):
            layers += [nn.LeakyReLU(0.2), nn.Conv2d(c, channels, (3, 9), stride=(1, 2), dilation=(dilation, 1),
                                                    padding=(dilation, 4))]
        layers += [nn.LeakyReLU(0.2), nn.Conv2d(channels, channels, (3, 3), padding=1), nn.LeakyReLU(0.2),
                   nn.Conv2d(channels, 1, (3, 3), padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, wave: torch.Tensor, features: bool = False):
        """(b, s) -> scores (b, 1, t, f'); with `features`, (scores, every convolution's output)."""
        z = torch.stft(wave, self.n_fft, self.hop, window=self.window, return_complex=True)  # (b, f, t)
        x, maps = torch.view_as_real(z).permute(0, 3, 2, 1), []
        for layer in self.net:
            x = layer(x)
            if features and isinstance(layer, nn.Conv2d):
                maps.append(x)
        return (x, maps[:-1]) if features else x


class MultiScaleSTFTDiscriminator(nn.Module):
    def __init__(self, n_ffts: list[int], channels: int = 32):
        super().__init__()
        self.scales = nn.ModuleList([STFTDiscriminator(n, channels) for n in n_ffts])

    def forward(self, wave: torch.Tensor, features: bool = False):
        """Scores per scale; with `features`, (scores per scale, feature maps of every scale in one list)."""
        if not features:
            return [d(wave) for d in self.scales]
        outs = [d(wave, features=True) for d in self.scales]
        return [o[0] for o in outs], [m for o in outs for m in o[1]]


def discriminator_loss(real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
    """LSGAN: ½(E[(D(x) − 1)²] + E[D(G(m))²]), summed over scales."""
    return sum(0.5 * (F.mse_loss(r, torch.ones_like(r)) + F.mse_loss(f, torch.zeros_like(f))) for r, f in zip(real, fake))


def generator_loss(fake: list[torch.Tensor]) -> torch.Tensor:
    """LSGAN: E[(D(G(m)) − 1)²], summed over scales."""
    return sum(F.mse_loss(f, torch.ones_like(f)) for f in fake)


def feature_matching_loss(real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
    """Mean over feature maps of |D_l(x) − D_l(G(m))|₁ relative to |D_l(x)|₁ (EnCodec's, as stable-audio-tools'
    EncodecDiscriminator loss computes it)."""
    return sum((r - f).abs().mean() / (r.abs().mean() + 1e-8) for r, f in zip(real, fake)) / len(real)
