"""Audio I/O: decode any container to float32 (channels, samples), mix, resample, pad/crop, encode FLAC.

soundfile (libsndfile) reads wav/flac/ogg/mp3; everything else AudioSet downloads come as (m4a, opus,
webm, mp4) goes through PyAV. Resampling is soxr (high quality, fast on CPU).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

# libsndfile handles these natively; anything else is decoded with PyAV (FFmpeg). Suffixes are compared
# lower-cased, so .WAV and .Flac count too.
SOUNDFILE_SUFFIXES = {".wav", ".wave", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".aifc", ".au", ".snd",
                      ".caf", ".w64", ".rf64"}
AUDIO_SUFFIXES = SOUNDFILE_SUFFIXES | {".m4a", ".opus", ".webm", ".mp4", ".aac", ".mkv", ".mka", ".wma", ".ac3",
                                       ".amr", ".3gp", ".mov", ".mp2", ".spx"}


def is_audio_path(path: str | Path) -> bool:
    """A file name soundfile or PyAV decodes, whatever the case of its suffix."""
    return Path(path).suffix.lower() in AUDIO_SUFFIXES


class AudioError(ValueError):
    """An audio file could not be decoded; the message names the file and the reason."""


@dataclass
class Audio:
    samples: np.ndarray  # (channels, samples) float32 in [-1, 1]
    sample_rate: int

    @property
    def duration(self) -> float:
        return self.samples.shape[-1] / self.sample_rate

    @property
    def channels(self) -> int:
        return self.samples.shape[0]


def _decode_soundfile(src) -> Audio:
    data, sr = sf.read(src, dtype="float32", always_2d=True)  # (samples, channels)
    return Audio(np.ascontiguousarray(data.T), int(sr))


def _decode_pyav(src) -> Audio:
    import av

    with av.open(src) as container:
        if not container.streams.audio:
            raise AudioError("the container has no audio stream")
        stream = container.streams.audio[0]
        # Resample to planar float so every codec yields the same layout.
        resampler = av.AudioResampler(format="fltp", layout=stream.layout.name, rate=stream.rate)
        chunks = [out.to_ndarray() for frame in container.decode(stream) for out in resampler.resample(frame)]
        chunks += [out.to_ndarray() for out in resampler.resample(None)]
        if not chunks:
            raise AudioError("no audio frames decoded")
        return Audio(np.concatenate(chunks, axis=1).astype(np.float32), int(stream.rate))


def check_readable(path: str | Path) -> float | None:
    """Seconds of audio the file's header announces (None when the container does not say); raises AudioError
    naming the file unless it holds audio. Nothing is decoded."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    try:
        if path.suffix.lower() in SOUNDFILE_SUFFIXES:
            try:
                info = sf.info(str(path))
                if info.frames > 0:
                    return info.frames / info.samplerate
                raise AudioError(f"{path}: holds no audio samples")
            except sf.LibsndfileError:
                pass  # e.g. an mp3 an old libsndfile does not read: PyAV below
        import av

        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioError(f"{path}: the container has no audio stream")
            return container.duration / 1e6 if container.duration else None
    except AudioError:
        raise
    except Exception as e:  # noqa: BLE001  (PyAV and libsndfile raise many types for a bad file)
        raise AudioError(f"{path}: not a readable audio file ({type(e).__name__}: {str(e)[:200]})") from None


def decode(src: str | Path | bytes, name: str | None = None) -> Audio:
    """Decode a file path or encoded bytes. Raises AudioError naming the file for unreadable/empty audio."""
    label = name or (str(src) if not isinstance(src, bytes) else "<bytes>")
    suffix = Path(name or (src if not isinstance(src, bytes) else "")).suffix.lower()
    if isinstance(src, (str, Path)) and not Path(src).is_file():
        raise AudioError(f"{label}: no such file")
    handle = io.BytesIO(src) if isinstance(src, bytes) else str(src)
    try:
        if suffix in SOUNDFILE_SUFFIXES or (isinstance(src, bytes) and not suffix):
            try:
                audio = _decode_soundfile(handle)
            except sf.LibsndfileError:
                if isinstance(handle, io.BytesIO):
                    handle.seek(0)
                audio = _decode_pyav(handle)
        else:
            audio = _decode_pyav(handle)
    except AudioError as e:
        raise AudioError(f"{label}: {e}") from None
    except Exception as e:  # decoder libraries raise many types; all mean "unreadable"
        raise AudioError(f"{label}: unreadable audio ({type(e).__name__}: {e})") from None
    if audio.samples.shape[-1] == 0:
        raise AudioError(f"{label}: empty audio (0 samples)")
    if not np.isfinite(audio.samples).all():
        raise AudioError(f"{label}: audio contains NaN or infinite samples")
    return audio


def to_mono(audio: Audio) -> Audio:
    return Audio(audio.samples.mean(axis=0, keepdims=True), audio.sample_rate)


def resample(audio: Audio, sample_rate: int) -> Audio:
    if audio.sample_rate == sample_rate:
        return audio
    out = soxr.resample(audio.samples.T, audio.sample_rate, sample_rate, quality="HQ")  # (samples, channels)
    return Audio(np.ascontiguousarray(out.T, dtype=np.float32), sample_rate)


def conform(audio: Audio, sample_rate: int, channels: int) -> np.ndarray:
    """(channels, s) samples at `sample_rate`: resampled, mono repeated or stereo averaged as needed (a clip as
    a model that wants this rate and channel count hears it)."""
    x = resample(audio, sample_rate).samples
    if x.shape[0] == channels:
        return x
    return np.repeat(x.mean(0, keepdims=True), channels, axis=0)


def restore(samples: np.ndarray, sample_rate: int, like: Audio) -> Audio:
    """A model's output (channels, s) at `sample_rate` back in the form of the clip it came from: its rate,
    its channel count and its exact length."""
    out = conform(Audio(np.ascontiguousarray(samples, dtype=np.float32), sample_rate), like.sample_rate, like.channels)
    return Audio(fit_length(out, like.samples.shape[-1]).astype(np.float32), like.sample_rate)


def fit_length(samples: np.ndarray, length: int, mode: str = "zero") -> np.ndarray:
    """Crop (from the start) or pad the last axis to `length`; mode "zero" pads silence, "repeat" tiles."""
    n = samples.shape[-1]
    if n >= length:
        return samples[..., :length]
    if mode == "repeat":
        reps = -(-length // n)
        return np.tile(samples, (1,) * (samples.ndim - 1) + (reps,))[..., :length]
    if mode != "zero":
        raise ValueError(f"unknown pad mode {mode!r}; valid: 'zero', 'repeat'")
    pad = [(0, 0)] * (samples.ndim - 1) + [(0, length - n)]
    return np.pad(samples, pad)


def load(
    src: str | Path | bytes,
    sample_rate: int | None = None,
    mono: bool = False,
    duration: float | None = None,
    pad_mode: str = "zero",
    name: str | None = None,
) -> Audio:
    """Decode, optionally mix to mono, resample and pad/crop to `duration` seconds."""
    audio = decode(src, name=name)
    if mono:
        audio = to_mono(audio)
    if sample_rate is not None:
        audio = resample(audio, sample_rate)
    if duration is not None:
        audio = Audio(fit_length(audio.samples, round(duration * audio.sample_rate), pad_mode), audio.sample_rate)
    return audio


def encode_flac(audio: Audio, bits: int = 16) -> bytes:
    """FLAC bytes (16- or 24-bit) of (channels, samples) audio."""
    if bits not in (16, 24):
        raise ValueError(f"FLAC bit depth must be 16 or 24, got {bits}")
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio.samples.T, -1.0, 1.0), audio.sample_rate, format="FLAC", subtype=f"PCM_{bits}")
    return buf.getvalue()


# containers soundfile writes as 32-bit float: values past ±1 are kept, nothing is clipped
FLOAT_SUFFIXES = {".wav", ".wave", ".w64", ".rf64", ".caf", ".aiff", ".aif", ".au"}


def holds_float(path: str | Path) -> bool:
    return Path(path).suffix.lower() in FLOAT_SUFFIXES


def write(path: str | Path, audio: Audio) -> float:
    """Write audio to a file whose format follows the suffix, never clipping: wav/aiff/caf/w64 as 32-bit float
    (every value kept); integer formats (flac, ogg, mp3) scaled down to fit when the peak exceeds 1, with a
    warning. Returns the gain applied (1.0 unless scaled)."""
    path, samples = Path(path), audio.samples
    if holds_float(path):
        sf.write(str(path), samples.T, audio.sample_rate, subtype="FLOAT")
        return 1.0
    peak = float(np.abs(samples).max()) if samples.size else 0.0
    gain = 1.0 if peak <= 1.0 else 0.999 / peak
    if gain != 1.0:
        import logging

        logging.getLogger(__name__).warning("%s: peak %.3f exceeds full scale; scaled by %.2f dB to fit (write .wav to "
                                            "keep every value)", path, peak, 20 * np.log10(gain))
    sf.write(str(path), samples.T * gain, audio.sample_rate)
    return gain
