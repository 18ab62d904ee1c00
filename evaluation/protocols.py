"""The reference toolkits' audio preparation, by name, so that a number matches the toolkit it claims to.

A backbone sees what the toolkit would have fed it, not what capflow would have chosen:

- `audioldm_eval` (haoheliu/audioldm_eval, `WaveDataset.read_from_file`): the first channel, the mean
  removed (DC), torchaudio's windowed-sinc resampling with its defaults (Hann window, 6 zero crossings,
  rolloff 0.99) to the backbone's rate, zero-padded to 2 s (32,000 samples at 16 kHz); float32. Its README:
  the resampler alone moves FD by up to ±30 and KL by ±0.4, so it is reproduced here, not replaced by soxr.
- `fadtk` (microsoft/fadtk, `FrechetAudioDistance.load_audio` + `ModelLoader.load_wav`): the channels
  averaged, torchaudio's Kaiser-windowed sinc (64 zero crossings, rolloff 0.9476, β 14.7697; its kernel computed
  in float64, as `transforms.Resample` builds it, and cast to float32), written as
  16-bit PCM through soundfile and read back as int16 / 32768, zero-padded to the model's minimum length
  (1 s for VGGish); embeddings stored as float16 (`ModelLoader.get_embedding`).

`sinc_resample` is torchaudio.functional.resample (torchaudio cannot be installed here) written from its
documented definition: for output phase j of `new` and input offset i, the kernel is
sinc(π·b·(i/orig − j/new))·w(·)·b/orig with b = min(orig, new)·rolloff, clamped to ±width zero crossings,
applied as a strided conv1d over the input padded by the kernel's half-width.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch

from shards import audio


def _sinc_kernel(orig: int, new: int, width_zc: int, rolloff: float, window: str, beta: float | None,
                 dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """(new, 1, taps) kernel for `orig` → `new` (already divided by their gcd) and its half-width in input samples."""
    base = min(orig, new) * rolloff
    width = math.ceil(width_zc * orig / base)
    idx = torch.arange(-width, width + orig, dtype=dtype)[None, None] / orig  # input offsets (1, 1, taps)
    t = (torch.arange(0, -new, -1, dtype=dtype)[:, None, None] / new + idx) * base  # (new, 1, taps)
    t = t.clamp(-width_zc, width_zc)
    if window == "hann":
        w = torch.cos(t * math.pi / width_zc / 2) ** 2
    elif window == "kaiser":
        beta_t = torch.as_tensor(float(beta), dtype=dtype)
        w = torch.i0(beta_t * torch.sqrt(1 - (t / width_zc) ** 2)) / torch.i0(beta_t)
    else:
        raise ValueError(f"unknown resampling window {window!r}; valid: hann, kaiser")
    t = t * math.pi
    kernel = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t)
    return kernel * w * (base / orig), width


def sinc_resample(wave: torch.Tensor, orig_rate: int, new_rate: int, lowpass_filter_width: int = 6,
                  rolloff: float = 0.99, window: str = "hann", beta: float | None = None,
                  kernel_dtype: str | None = None) -> torch.Tensor:
    """torchaudio.functional.resample of (..., t): ceil(t·new/orig) output samples, the kernel computed in the
    input's dtype; kernel_dtype "float64": computed in float64 and cast to it, as torchaudio.transforms.Resample
    builds its kernel (dtype None)."""
    if orig_rate == new_rate:
        return wave
    g = math.gcd(int(orig_rate), int(new_rate))
    orig, new = int(orig_rate) // g, int(new_rate) // g
    kernel, width = _sinc_kernel(orig, new, lowpass_filter_width, rolloff, window, beta,
                                 getattr(torch, kernel_dtype) if kernel_dtype else wave.dtype)
    kernel = kernel.to(wave.dtype)
    shape = wave.shape
    x = wave.reshape(-1, shape[-1])  # (b, t)
    length = x.shape[-1]
    x = torch.nn.functional.pad(x, (width, width + orig))
    y = torch.nn.functional.conv1d(x[:, None], kernel, stride=orig)  # (b, new, frames)
    y = y.transpose(1, 2).reshape(x.shape[0], -1)[:, :math.ceil(new * length / orig)]
    return y.reshape(*shape[:-1], y.shape[-1])


@dataclass(frozen=True)
class Protocol:
    """How a reference toolkit turns a decoded file into a backbone's input."""
    name: str
    source: str
    channels: str  # "first" or "mean"
    remove_dc: bool
    resampler: dict
    min_seconds: float
    pcm16: bool  # a 16-bit PCM round trip after resampling (fadtk writes its resampled audio as a 16-bit wav)
    embedding_dtype: str | None  # the dtype the toolkit stores embeddings in

    def prepare(self, clip: audio.Audio, sample_rate: int) -> np.ndarray:
        """The mono (t,) waveform at `sample_rate` the toolkit would feed its backbone."""
        x = torch.from_numpy(np.ascontiguousarray(clip.samples, dtype=np.float32))  # (channels, t)
        x = x[0] if self.channels == "first" else x.mean(dim=0)
        if self.remove_dc:
            x = x - x.mean()
        x = sinc_resample(x, clip.sample_rate, sample_rate, **self.resampler).numpy()
        if self.pcm16:
            buffer = io.BytesIO()
            sf.write(buffer, x, sample_rate, format="WAV", subtype="PCM_16")
            buffer.seek(0)
            x = sf.read(buffer, dtype="int16")[0] / 32768.0
        minimum = int(math.ceil(self.min_seconds * sample_rate))
        if len(x) < minimum:
            x = np.pad(x, (0, minimum - len(x)))
        return x

    def embeddings(self, values: np.ndarray) -> np.ndarray:
        """Embeddings in the toolkit's storage dtype (fadtk keeps float16, and its statistics start from those)."""
        return values.astype(self.embedding_dtype) if self.embedding_dtype else values

    def describe(self) -> str:
        r = self.resampler
        parts = [f"{self.name} ({self.source})", "first channel" if self.channels == "first" else "channel mean"]
        parts += ["DC removed"] if self.remove_dc else []
        parts.append(f"torchaudio sinc resampling ({r.get('window', 'hann')}, width {r.get('lowpass_filter_width', 6)}, "
                     f"rolloff {r.get('rolloff', 0.99):.4g}"
                     + (f", kernel in {r['kernel_dtype']}" if r.get("kernel_dtype") else "") + ")")
        parts += ["16-bit PCM round trip"] if self.pcm16 else []
        parts.append(f"zero-padded to {self.min_seconds:g} s")
        parts += [f"{self.embedding_dtype} embeddings"] if self.embedding_dtype else []
        return ", ".join(parts)


PROTOCOLS = {
    "audioldm_eval": Protocol("audioldm_eval", "haoheliu/audioldm_eval", "first", True, {}, 2.0, False, None),
    "fadtk": Protocol("fadtk", "microsoft/fadtk", "mean", False,
                      {"lowpass_filter_width": 64, "rolloff": 0.9475937167399596, "window": "kaiser",
                       "beta": 14.769656459379492, "kernel_dtype": "float64"}, 1.0, True, "float16"),
}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {name!r}; valid: {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]
