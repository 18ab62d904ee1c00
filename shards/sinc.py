"""Band-limited resampling of a batch of torch waveforms on their own device (the GPU in training), where soxr
(shards/audio.py) would need a trip to the CPU. On the CPU soxr is the faster (8 clips of 4 s, 44.1 to 16 kHz,
2 cores: 14 ms against 90 ms), so `resample` uses it there, the whole batch in one call.

The GPU method (`sinc_resample`) is the Hann-windowed sinc interpolation of torchaudio's `functional.resample` (default
lowpass_filter_width 6, rolloff 0.99), which cannot be installed here: the rates are reduced by their gcd to
orig → new, and one strided conv1d with `new` kernels (one per output phase) gives every output sample. Output
length ceil(new · s / orig), as torchaudio's.
"""

from __future__ import annotations

import math

import torch


def kernels(orig: int, new: int, width: int = 6, rolloff: float = 0.99, device=None,
            dtype=torch.float32) -> tuple[torch.Tensor, int]:
    """(new, 1, taps) interpolation kernels for gcd-reduced rates, and the padding (taps on each side)."""
    base = min(orig, new) * rolloff  # the low-pass cut-off, in units of the reduced rates
    pad = math.ceil(width * orig / base)
    idx = torch.arange(-pad, pad + orig, device=device, dtype=torch.float64)[None, None] / orig
    t = (-torch.arange(new, device=device, dtype=torch.float64)[:, None, None] / new + idx) * base
    t = t.clamp(-width, width)
    window = torch.cos(t * math.pi / width / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t)
    return (sinc * window * base / orig).to(dtype), pad


def resample(waves: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """(b, s) at orig_rate -> (b, s') at new_rate on the waves' device: soxr on the CPU, else `sinc_resample`."""
    if orig_rate == new_rate:
        return waves
    if waves.device.type == "cpu":
        import soxr

        out = soxr.resample(waves.detach().float().numpy().T, orig_rate, new_rate, quality="HQ")  # clips as channels
        return torch.from_numpy(out.T.copy())
    return sinc_resample(waves, orig_rate, new_rate)


def sinc_resample(waves: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """(..., s) at orig_rate -> (..., ceil(new_rate · s / orig_rate)) at new_rate, on the waves' device."""
    if orig_rate == new_rate:
        return waves
    g = math.gcd(orig_rate, new_rate)
    orig, new = orig_rate // g, new_rate // g
    shape, n = waves.shape[:-1], waves.shape[-1]
    kernel, pad = kernels(orig, new, device=waves.device, dtype=waves.dtype)
    x = torch.nn.functional.pad(waves.reshape(-1, 1, n), (pad, pad + orig))
    out = torch.nn.functional.conv1d(x, kernel, stride=orig)  # (b, new phases, frames)
    out = out.transpose(1, 2).reshape(x.shape[0], -1)
    return out[:, :math.ceil(new * n / orig)].reshape(*shape, -1)
