"""Audio I/O: decode any container to float32 (channels, samples), mix, resample, pad/crop, encode FLAC, write.

soundfile (libsndfile) reads wav/flac/ogg/mp3; everything else AudioSet downloads come as (m4a, opus,
webm, mp4) goes through PyAV. Resampling is soxr (high quality, fast on CPU).

Long files stay out of memory: a `Reader` decodes a block at a time, `through` passes blocks through a model at
its rate and channel count and back (soxr's streaming resampler, equal to its one-shot `resample` to the bit),
and a `Writer` writes blocks through a temporary file renamed into place.
"""

from __future__ import annotations

import functools
import io
import itertools
import logging
import os
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
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


@functools.cache
def steady_heap(threshold: int = 1 << 20) -> bool:
    """Serve buffers of `threshold` bytes and more straight from mmap, returned to the system when freed, for
    the rest of the process (glibc; elsewhere a no-op, False). glibc's default raises its mmap threshold to the
    largest buffer freed so far, after which a long stream's window batches come from a heap that only grows:
    an edit's peak memory was 1.33x at 10 minutes against 2 (benchmarks/long_file_memory.py), 1.04x with this."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, threshold))  # M_MMAP_THRESHOLD (malloc.h); also fixes it (no dynamic raise)
    except (OSError, AttributeError):
        return False


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


BLOCK_SECONDS = 10.0  # what a Reader decodes at a time


class Reader:
    """An audio file (a path, or encoded bytes) decoded a block at a time: `sample_rate`, `channels` and
    `seconds` (the header's length, None when it does not say) are known on opening; iterating yields
    (channels, s) float32 blocks of about `seconds` each (BLOCK_SECONDS by default), checked finite; a file
    without samples raises. `span` (start, end) in seconds reads that stretch only. Errors are AudioError
    naming the file. Use it as a context manager."""

    def __init__(self, src: str | Path | bytes, name: str | None = None, seconds: float | None = None,
                 span: tuple[float, float] | None = None):
        self.label = name or (str(src) if not isinstance(src, bytes) else "<bytes>")
        suffix = Path(name or (src if not isinstance(src, bytes) else "")).suffix.lower()
        if isinstance(src, (str, Path)) and not Path(src).is_file():
            raise AudioError(f"{self.label}: no such file")
        self._handle = io.BytesIO(src) if isinstance(src, bytes) else str(src)
        self._file = self._container = None
        try:
            if suffix in SOUNDFILE_SUFFIXES or (isinstance(src, bytes) and not suffix):
                try:
                    self._file = sf.SoundFile(self._handle)
                except sf.LibsndfileError:
                    if isinstance(self._handle, io.BytesIO):
                        self._handle.seek(0)
            if self._file is not None:
                self.sample_rate, self.channels = int(self._file.samplerate), int(self._file.channels)
                self.seconds = self._file.frames / self.sample_rate if self._file.frames > 0 else None
            else:
                import av

                self._container = av.open(self._handle)
                if not self._container.streams.audio:
                    raise AudioError("the container has no audio stream")
                stream = self._container.streams.audio[0]
                self.sample_rate, self.channels = int(stream.rate), len(stream.layout.channels)
                self.seconds = self._container.duration / 1e6 if self._container.duration else None
        except AudioError as e:
            self.close()
            raise AudioError(f"{self.label}: {e}") from None
        except Exception as e:  # decoder libraries raise many types; all mean "unreadable"
            self.close()
            raise AudioError(f"{self.label}: unreadable audio ({type(e).__name__}: {e})") from None
        self.block = max(1, round((seconds or BLOCK_SECONDS) * self.sample_rate))
        # [first, last) sample of a span; soundfile seeks to it, PyAV decodes from the start and drops the rest
        self.first = round(span[0] * self.sample_rate) if span else 0
        self.last = round(span[1] * self.sample_rate) if span else None
        if span and self.seconds is not None:
            self.seconds = max(0.0, min(span[1], self.seconds) - span[0])

    def __iter__(self) -> Iterator[np.ndarray]:
        total = 0
        try:
            for block in self._soundfile_blocks() if self._file is not None else self._pyav_blocks():
                if not np.isfinite(block).all():
                    raise AudioError("audio contains NaN or infinite samples")
                total += block.shape[-1]
                yield block
        except AudioError as e:
            raise AudioError(f"{self.label}: {e}") from None
        except Exception as e:  # noqa: BLE001
            raise AudioError(f"{self.label}: unreadable audio ({type(e).__name__}: {e})") from None
        if total == 0:
            raise AudioError(f"{self.label}: empty audio (0 samples)")

    def progress(self, desc: str, enabled: bool = True) -> Iterator[np.ndarray]:
        """The blocks, with a progress bar in seconds of audio read (on stderr; off when not `enabled`)."""
        from tqdm.auto import tqdm

        with tqdm(total=self.seconds, desc=desc, unit="s", disable=not enabled,
                  bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]"
                  if self.seconds else None) as bar:
            for block in self:
                yield block
                bar.update(block.shape[-1] / self.sample_rate)

    def _soundfile_blocks(self) -> Iterator[np.ndarray]:
        if self.first:
            self._file.seek(min(self.first, self._file.frames))
        frames = -1 if self.last is None else max(0, self.last - self.first)
        for block in self._file.blocks(self.block, frames=frames, dtype="float32", always_2d=True):  # (samples, ch)
            yield np.ascontiguousarray(block.T)

    def _pyav_blocks(self) -> Iterator[np.ndarray]:
        import av

        stream = self._container.streams.audio[0]
        # resampled to planar float so that every codec yields the same layout
        resampler = av.AudioResampler(format="fltp", layout=stream.layout.name, rate=stream.rate)
        chunks, held, at = [], 0, 0  # `at`: samples decoded so far
        for frame in itertools.chain(self._container.decode(stream), [None]):  # None flushes the resampler
            for out in resampler.resample(frame):
                x = out.to_ndarray().astype(np.float32, copy=False)
                a = max(self.first - at, 0)
                b = x.shape[-1] if self.last is None else min(x.shape[-1], self.last - at)
                at += x.shape[-1]
                if a < b:
                    chunks.append(x[:, a:b])
                    held += b - a
            if chunks and (held >= self.block or frame is None):
                yield np.concatenate(chunks, axis=1)
                chunks, held = [], 0
            if self.last is not None and at >= self.last:
                if chunks:
                    yield np.concatenate(chunks, axis=1)
                return

    def close(self) -> None:
        for resource in (self._file, self._container):
            if resource is not None:
                resource.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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


def decode(src: str | Path | bytes, name: str | None = None, span: tuple[float, float] | None = None) -> Audio:
    """Decode a file path or encoded bytes whole, or its `span` (start, end) in seconds. Raises AudioError naming
    the file for unreadable/empty audio."""
    with Reader(src, name, span=span) as reader:
        return Audio(np.concatenate(list(reader), axis=1), reader.sample_rate)


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
    return _channels(resample(audio, sample_rate).samples, channels)


def restore(samples: np.ndarray, sample_rate: int, like: Audio) -> Audio:
    """A model's output (channels, s) at `sample_rate` back in the form of the clip it came from: its rate,
    its channel count and its exact length."""
    out = conform(Audio(np.ascontiguousarray(samples, dtype=np.float32), sample_rate), like.sample_rate, like.channels)
    return Audio(fit_length(out, like.samples.shape[-1]).astype(np.float32), like.sample_rate)


def _channels(x: np.ndarray, channels: int) -> np.ndarray:
    """(channels, s): as is when the count matches, else the mean repeated (mono to stereo, stereo to mono)."""
    return x if x.shape[0] == channels else np.repeat(x.mean(0, keepdims=True), channels, axis=0)


class _Resampler:
    """soxr's streaming resampler on (channels, s) blocks (the identity when the rates agree)."""

    def __init__(self, rate_in: int, rate_out: int, channels: int):
        self.stream = soxr.ResampleStream(rate_in, rate_out, channels, dtype="float32", quality="HQ") \
            if rate_in != rate_out else None
        self.channels = channels

    def __call__(self, x: np.ndarray | None, last: bool = False) -> np.ndarray:
        if x is None:
            x = np.zeros((self.channels, 0), np.float32)
        if self.stream is None:
            return x
        return np.ascontiguousarray(self.stream.resample_chunk(np.ascontiguousarray(x.T), last=last).T)


def through(blocks: Iterable[np.ndarray], sample_rate: int, channels: int, model_rate: int, model_channels: int,
            model: Callable[[Iterator[np.ndarray]], Iterable]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream a signal, given as (channels, s) blocks at `sample_rate`, through `model` and back.

    `model` maps an iterator of (model_channels, s) blocks at `model_rate` (the signal as `conform` makes it) to
    an iterable of blocks of the same form, in order and as long in total. Their result comes back as `restore`
    makes it: yields (input, output) pairs of equal length at the signal's rate and channel count, together
    exactly as long as the input. Memory is the model's lag, whatever the signal's length."""
    held: deque[np.ndarray] = deque()  # input not yet paired with output
    read, ended = 0, False

    def conformed() -> Iterator[np.ndarray]:
        nonlocal read, ended
        to_model = _Resampler(sample_rate, model_rate, channels)
        for block in blocks:
            held.append(block)
            read += block.shape[-1]
            yield _channels(to_model(block), model_channels)
        ended = True
        yield _channels(to_model(None, last=True), model_channels)

    def paired(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pieces, need = [], y.shape[-1]
        while need:
            if not held:
                raise RuntimeError("the model returned more than it was given")
            block = held.popleft()
            if block.shape[-1] > need:
                block, rest = block[..., :need], block[..., need:]
                held.appendleft(rest)
            pieces.append(block)
            need -= block.shape[-1]
        return np.concatenate(pieces, axis=-1), y

    back, written = _Resampler(model_rate, sample_rate, model_channels), 0
    for last, out in itertools.chain(((False, o) for o in model(conformed())), [(True, None)]):
        y = _channels(back(None if out is None else np.asarray(out, dtype=np.float32), last=last), channels)
        if ended:  # the input's length is known: the output is cut, or padded at the very end, to it
            y = fit_length(y, read - written) if last else y[..., :read - written]
        if y.shape[-1]:
            written += y.shape[-1]
            yield paired(y)


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
log = logging.getLogger(__name__)


def holds_float(path: str | Path) -> bool:
    return Path(path).suffix.lower() in FLOAT_SUFFIXES


class Writer:
    """Writes (channels, s) blocks to `path` (its folder made if needed; its suffix gives the format) under a
    temporary name that `finish` renames into place: a failed job leaves no partial file, and nothing is
    written without `finish`. Float formats (wav, aiff, caf, w64) keep every value. The others (flac, ogg, mp3)
    hold [-1, 1]: given the `gain` up front (a clip in memory, whose peak is known) they are written directly
    at it; otherwise their blocks go to a temporary float file and `finish` writes them at one gain, scaled
    down when the peak exceeds full scale, never clipped."""

    def __init__(self, path: str | Path, sample_rate: int, channels: int, gain: float | None = None):
        self.path, self.sample_rate, self.channels = Path(path), sample_rate, channels
        self.float, self.peak, self.gain = holds_float(path), 0.0, gain
        self.direct = self.float or gain is not None  # written in its own format as the blocks come
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self._temporary(self.path.suffix if self.direct else ".wav")
        self._file = sf.SoundFile(str(self._tmp), "w", sample_rate, channels,
                                  subtype="FLOAT" if self.float or not self.direct else None)

    def _temporary(self, suffix: str) -> Path:
        return self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")

    def write(self, block: np.ndarray) -> None:
        if block.size:
            self.peak = max(self.peak, float(np.abs(block).max()))
        data = np.ascontiguousarray(block.T)
        if self.gain not in (None, 1.0) and not self.float:
            data = data * self.gain
        self._file.write(data)

    def _finish(self, gain: float) -> None:
        self._file.close()
        if not self.direct:
            final = self._temporary(self.path.suffix)
            try:
                with sf.SoundFile(str(self._tmp)) as src, \
                        sf.SoundFile(str(final), "w", self.sample_rate, self.channels) as dst:
                    for block in src.blocks(1 << 18, dtype="float32", always_2d=True):
                        dst.write(block * gain)
            except BaseException:
                final.unlink(missing_ok=True)
                raise
            self._tmp.unlink()
            self._tmp = final
        os.replace(self._tmp, self.path)

    def discard(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc) -> None:
        if self._tmp.exists():  # not finished: nothing is written
            self.discard()


def fit_gain(peak: float, label: str | Path) -> float:
    """The gain that brings `peak` within full scale (1.0 when it is), with a warning when below 1."""
    gain = 0.999 / peak if peak > 1.0 else 1.0
    if gain != 1.0:
        log.warning("%s: peak %.3f exceeds full scale; scaled by %.2f dB to fit (write .wav to keep every value)",
                    label, peak, 20 * np.log10(gain))
    return gain


def finish(writers: list[Writer], label: str | Path) -> float:
    """Put every writer's file in place, integer formats written after the fact at one gain (outputs that add
    up, e.g. a separated target and its residual, still add up after writing). Returns it."""
    gain = fit_gain(max((w.peak for w in writers if not w.direct), default=0.0), label)
    for w in writers:
        w._finish(gain)
    return gain


def write(path: str | Path, audio: Audio) -> float:
    """Write a clip to a file whose format follows the suffix, never clipping (see `Writer`), in one pass:
    returns the gain applied (1.0 unless an integer format needed scaling)."""
    peak = float(np.abs(audio.samples).max()) if audio.samples.size and not holds_float(path) else 0.0
    gain = fit_gain(peak, path)
    with Writer(path, audio.sample_rate, audio.channels, gain=gain) as writer:
        writer.write(audio.samples)
        finish([writer], path)
    return gain
