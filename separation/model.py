"""Hybrid-Sep's audio separation model (ASM) and conditional denoiser (CD), after the paper's Fig. 3 / Table 1.

ASM: mono mixture -> PQMF into 4 sub-bands -> STFT of each (real, imaginary: 8 channels), concatenated with
frame-wise SSL features -> an interleaved stack of TRCNN (Conv2d down / ConvTranspose2d up along frequency,
GELU, BiLSTM over time; U-Net skips), frequency-axis conformer (FA) and target-embedding cross-attention
(TEACA: the target's CLAP audio embedding as queries, channel-wise scale and shift of the feature map) ->
a complex ratio mask per sub-band -> iSTFT -> PQMF synthesis. The CD is the same stack without TEACA; it
denoises a noisy target spectrogram conditioned on projections of the ASM's last four TRCNN feature maps.
Shape legend: b batch, c channels, t frames, f frequency bins, s samples, e embedding width.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .pqmf import PQMF
from .weights import Pretrained


@dataclass
class SeparatorConfig:
    sample_rate: int = 16000
    n_fft: int = 64  # per sub-band STFT; f = n_fft / 2 bins (the Nyquist bin is dropped)
    hop: int = 32
    channels: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 32, 16, 8, 8])  # paper: 48 … 384 … 8
    lstm: list[int] = field(default_factory=lambda: [4, 8, 16, 32, 16, 8, 4])  # paper: [12, 24, 48, 96, 48, 24, 2]
    fa_kernel: int = 9
    fa_heads: int = 2
    teaca_dim: int = 32
    teaca_heads: int = 4
    embed_dim: int = 512  # the CLAP embedding width
    ssl_dim: int = 0  # frame-wise SSL feature width (0: no SSL encoder)
    cond_dim: int = 8  # CD: channels of each projected TRCNN feature map

    @property
    def bins(self) -> int:
        return self.n_fft // 2


PRESETS = {
    "tiny": SeparatorConfig(),
    # Table 1: CNN channels [48, 96, 192, 384, 192, 96, 48, 8], BiLSTM [12, 24, 48, 96, 48, 24, 2] (the last
    # TRCNN's is ours: its 8 channels are the 4 sub-bands' real and imaginary masks), FA kernel 9, TEACA 64 / 8
    "paper": SeparatorConfig(sample_rate=44100, n_fft=1024, hop=256, channels=[48, 96, 192, 384, 192, 96, 48, 8],
                             lstm=[12, 24, 48, 96, 48, 24, 2, 4], fa_heads=4, teaca_dim=64, teaca_heads=8,
                             embed_dim=512, ssl_dim=768),
}


def preset(name: str, **overrides) -> SeparatorConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown separator preset {name!r}; valid: {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


class TRCNN(nn.Module):
    """Conv2d (down) or ConvTranspose2d (up) by 2 along frequency, GELU, then a BiLSTM over time per bin."""

    def __init__(self, c_in: int, c_out: int, hidden: int, up: bool, resample: bool = True):
        super().__init__()
        stride = (1, 2) if resample else (1, 1)
        conv = nn.ConvTranspose2d if up else nn.Conv2d
        self.conv = conv(c_in, c_out, kernel_size=stride, stride=stride)
        self.lstm = nn.LSTM(c_out, hidden, batch_first=True, bidirectional=True)
        self.proj = nn.Linear(2 * hidden, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (b, c, t, f) -> (b, c', t, f')
        h = F.gelu(self.conv(x))
        b, c, t, f = h.shape
        seq = h.permute(0, 3, 2, 1).reshape(b * f, t, c)
        out = self.proj(self.lstm(seq)[0]).reshape(b, f, t, c).permute(0, 3, 2, 1)
        return h + out


class FrequencyConformer(nn.Module):
    """A conformer layer over the frequency axis of every frame (FA): ½FFN, MHSA, conv module, ½FFN."""

    def __init__(self, channels: int, heads: int, kernel: int):
        super().__init__()
        heads = max(1, min(heads, channels // 4))
        while channels % heads:
            heads -= 1
        self.ff1, self.ff2 = (nn.Sequential(nn.LayerNorm(channels), nn.Linear(channels, 4 * channels), nn.SiLU(),
                                            nn.Linear(4 * channels, channels)) for _ in range(2))
        self.norm_attn = nn.LayerNorm(channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.norm_conv = nn.LayerNorm(channels)
        self.pointwise1 = nn.Conv1d(channels, 2 * channels, 1)
        self.depthwise = nn.Conv1d(channels, channels, kernel, padding=kernel // 2, groups=channels)
        self.pointwise2 = nn.Conv1d(channels, channels, 1)
        self.norm_out = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (b, c, t, f)
        b, c, t, f = x.shape
        h = x.permute(0, 2, 3, 1).reshape(b * t, f, c)
        h = h + 0.5 * self.ff1(h)
        a = self.norm_attn(h)
        h = h + self.attn(a, a, a, need_weights=False)[0]
        y = self.pointwise1(self.norm_conv(h).transpose(1, 2))
        y = self.pointwise2(F.silu(self.depthwise(F.glu(y, dim=1))))
        h = h + y.transpose(1, 2)
        h = self.norm_out(h + 0.5 * self.ff2(h))
        return h.reshape(b, t, f, c).permute(0, 3, 1, 2)


class TEACA(nn.Module):
    """Target-embedding cross-attention: the embedding becomes `heads` query vectors that attend over the
    feature map's positions; what they read sets a per-channel scale and shift (zero at initialisation)."""

    def __init__(self, channels: int, embed_dim: int, dim: int, heads: int):
        super().__init__()
        self.heads, self.dim = heads, dim
        self.query = nn.Linear(embed_dim, heads * dim)
        self.key, self.value = nn.Linear(channels, dim), nn.Linear(channels, dim)
        self.out = nn.Linear(heads * dim, 2 * channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # (b, c, t, f), (b, e)
        b, c, t, f = x.shape
        tokens = x.permute(0, 2, 3, 1).reshape(b, t * f, c)
        q = self.query(emb).reshape(b, self.heads, 1, self.dim)
        k, v = self.key(tokens)[:, None], self.value(tokens)[:, None]  # (b, 1, n, d)
        read = F.scaled_dot_product_attention(q, k.expand(-1, self.heads, -1, -1), v.expand(-1, self.heads, -1, -1))
        scale, shift = self.out(read.reshape(b, -1)).chunk(2, dim=-1)  # (b, c) each
        return x * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


class Stack(nn.Module):
    """4 TRCNN down, 4 TRCNN up with U-Net skips; an FA after every second TRCNN; TEACA (when `embed`) after
    each FA but the last. Returns the output map and the last four TRCNN feature maps."""

    def __init__(self, cfg: SeparatorConfig, c_in: int, embed: bool):
        super().__init__()
        ch, hid = cfg.channels, cfg.lstm
        ins = [c_in, ch[0], ch[1], ch[2], ch[3], 2 * ch[4], 2 * ch[5], 2 * ch[6]]
        self.trcnn = nn.ModuleList([TRCNN(ins[i], ch[i], hid[min(i, len(hid) - 1)], up=i >= 4, resample=i not in (0, 7))
                                    for i in range(8)])
        self.fa = nn.ModuleList([FrequencyConformer(ch[i], cfg.fa_heads, cfg.fa_kernel) for i in (1, 3, 5, 7)])
        self.teaca = nn.ModuleList([TEACA(ch[i], cfg.embed_dim, cfg.teaca_dim, cfg.teaca_heads) for i in (1, 3, 5)]) \
            if embed else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None):
        skips, feats = [], []
        for i, layer in enumerate(self.trcnn):
            if i >= 5:
                x = torch.cat([x, skips[7 - i]], dim=1)
            x = layer(x)
            if i < 4:
                skips.append(x)
            if i >= 4:
                feats.append(x)
            if i % 2:
                x = self.fa[i // 2](x)
                if self.teaca is not None and i < 7:
                    x = self.teaca[i // 2](x, emb)
        return x, feats


class Separator(Pretrained, nn.Module):
    """The ASM (and, with `denoiser=True`, the CD: no TEACA, input = noisy target + condition maps)."""

    config_class = SeparatorConfig

    def __init__(self, cfg: SeparatorConfig, denoiser: bool = False):
        super().__init__()
        self.config = cfg
        self.pqmf = PQMF()
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)
        c_in = 8 + (4 * cfg.cond_dim if denoiser else cfg.ssl_dim and 8)
        self.ssl_proj = nn.Linear(cfg.ssl_dim, 8) if cfg.ssl_dim and not denoiser else None
        self.stack = Stack(cfg, c_in, embed=not denoiser)
        self.cond = nn.ModuleList([nn.Linear(c, cfg.cond_dim) for c in cfg.channels[4:]]) if not denoiser else None

    # ---- spectra ----------------------------------------------------------------------------------------
    def frames(self, samples: int) -> int:
        sub = self.pqmf.padded_length(samples) // 4
        return sub // self.config.hop + 1

    def spec(self, wave: torch.Tensor) -> torch.Tensor:
        """(b, s) -> (b, 8, t, f): real and imaginary STFT of the 4 sub-bands (Nyquist bin dropped)."""
        bands = self.pqmf.analyse(wave)  # (b, 4, s/4)
        b = bands.shape[0]
        z = torch.stft(bands.reshape(b * 4, -1), self.config.n_fft, self.config.hop, window=self.window,
                       center=True, return_complex=True)[:, :-1]  # (b·4, f, t)
        z = torch.view_as_real(z).reshape(b, 4, self.config.bins, -1, 2)
        return z.permute(0, 1, 4, 3, 2).reshape(b, 8, -1, self.config.bins)

    def wave(self, spec: torch.Tensor, samples: int) -> torch.Tensor:
        """(b, 8, t, f) -> (b, samples)."""
        b, _, t, f = spec.shape
        z = spec.reshape(b, 4, 2, t, f).permute(0, 1, 4, 3, 2).reshape(b * 4, f, t, 2)
        z = F.pad(torch.view_as_complex(z.contiguous()), (0, 0, 0, 1))  # the Nyquist bin back, as zero
        sub = self.pqmf.padded_length(samples) // 4
        bands = torch.istft(z, self.config.n_fft, self.config.hop, window=self.window, center=True, length=sub)
        return self.pqmf.synthesise(bands.reshape(b, 4, sub), samples)

    # ---- the separator -------------------------------------------------------------------------------------
    def forward(self, mixture: torch.Tensor, emb: torch.Tensor, ssl: torch.Tensor | None = None):
        """(b, s) mixture, (b, e) target embedding, (b, t', d) SSL features -> (b, s) target, the spectrum of
        the estimate (b, 8, t, f) and the CD's condition maps."""
        samples = mixture.shape[-1]
        mix = self.spec(mixture)
        x = mix
        if self.ssl_proj is not None:
            feats = self.ssl_proj(ssl).transpose(1, 2)  # (b, 8, t')
            feats = F.interpolate(feats, size=mix.shape[2], mode="linear", align_corners=False)
            x = torch.cat([x, feats[..., None].expand(-1, -1, -1, mix.shape[-1])], dim=1)
        mask, feats = self.stack(x, emb)
        est = _complex_mul(mix, mask)
        cond = torch.cat([F.interpolate(proj(f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), size=mix.shape[2:])
                          for proj, f in zip(self.cond, feats)], dim=1)
        return self.wave(est, samples), est, cond

    def denoise(self, noisy: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """CD: a noisy target spectrum (b, 8, t, f) and the ASM's condition maps -> the clean spectrum."""
        return self.stack(torch.cat([noisy, cond], dim=1))[0]


def _complex_mul(spec: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Complex ratio masking of (b, 8, t, f) spectra whose channels are (band, real/imag) pairs."""
    b, _, t, f = spec.shape
    s, m = spec.reshape(b, 4, 2, t, f), mask.reshape(b, 4, 2, t, f)
    re = s[:, :, 0] * m[:, :, 0] - s[:, :, 1] * m[:, :, 1]
    im = s[:, :, 0] * m[:, :, 1] + s[:, :, 1] * m[:, :, 0]
    return torch.stack([re, im], dim=2).reshape(b, 8, t, f)
