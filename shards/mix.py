"""Mixing sound events into backgrounds at a chosen SNR: loudness over active samples, SNR and onset
sampling, one gain per group. Used by the editing data (finetune/) and the separation mixtures (separation/).

Loudness is measured where the signal is active, so a 1-s bark in 10 s of padding is not 10 dB quieter
than the same bark alone: `rms` gates 50-ms blocks 40 dB below the loudest block and averages the power of
the rest (scale invariant: gating is relative); `lufs` is ITU-R BS.1770-4 integrated loudness through
pyloudnorm (needs at least 0.4 s). Both are in dB, so SNR = L(event) - L(background).
Shape legend: c channels, s samples.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .config import Strict

BLOCK_SECONDS = 0.05
GATE_DB = 40.0


class SnrDistribution(Strict):
    """How the event-to-background SNR is drawn. Default: MMEdit's Scaper recipe."""

    kind: Literal["truncnorm", "uniform"] = "truncnorm"
    mean: float = 10.0
    std: float = 5.0
    low: float = -5.0
    high: float = 25.0

    def sample(self, rng: np.random.Generator) -> float:
        if self.kind == "uniform":
            return float(rng.uniform(self.low, self.high))
        while True:  # rejection sampling: exact truncation, expected < 1.1 draws for the default
            x = rng.normal(self.mean, self.std)
            if self.low <= x <= self.high:
                return float(x)


class MixConfig(Strict):
    loudness: Literal["rms", "lufs"] = "rms"
    snr: SnrDistribution = SnrDistribution()
    peak: float = 0.99  # the group gain keeps every stored audio's peak at or under this
    trim: bool = True  # cut an event clip to its active region (strong labels, else the energy detector)


def seeded_rng(*parts) -> np.random.Generator:
    """A generator seeded by a string identity (a group id), the same on every machine and every run."""
    return np.random.default_rng(zlib.crc32("/".join(map(str, parts)).encode()))


def _block_power(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    block = max(1, round(BLOCK_SECONDS * sample_rate))
    n = samples.shape[-1] // block * block
    if n == 0:
        return np.array([np.mean(samples.astype(np.float64) ** 2)])
    power = (samples[..., :n].astype(np.float64) ** 2).reshape(*samples.shape[:-1], -1, block).mean(-1)
    return power.mean(0) if power.ndim > 1 else power  # (blocks,) averaged over channels


def active_mask(samples: np.ndarray, sample_rate: int, gate_db: float = GATE_DB) -> np.ndarray:
    """Which 50-ms blocks are active (power within gate_db of the loudest)."""
    power = _block_power(samples, sample_rate)
    return power > power.max() * 10 ** (-gate_db / 10) if power.max() > 0 else np.zeros_like(power, dtype=bool)


def loudness_db(samples: np.ndarray, sample_rate: int, method: str = "rms") -> float:
    """Loudness of (c, s) samples in dB over their active part; -inf for digital silence."""
    if method == "lufs":
        import pyloudnorm

        if samples.shape[-1] < 0.4 * sample_rate:
            raise ValueError(f"lufs loudness needs at least 0.4 s of audio, got {samples.shape[-1] / sample_rate:.2f} s;"
                             " use loudness: rms")
        return float(pyloudnorm.Meter(sample_rate).integrated_loudness(samples.T.astype(np.float64)))
    power = _block_power(samples, sample_rate)
    active = active_mask(samples, sample_rate)
    return float(10 * np.log10(power[active].mean())) if active.any() else float("-inf")


def active_span(samples: np.ndarray, sample_rate: int) -> tuple[int, int]:
    """(start, end) samples from the first to the last active block (the energy detector)."""
    active = np.flatnonzero(active_mask(samples, sample_rate))
    if not active.size:
        return 0, samples.shape[-1]
    block = max(1, round(BLOCK_SECONDS * sample_rate))
    return int(active[0] * block), int(min(samples.shape[-1], (active[-1] + 1) * block))


def event_span(samples: np.ndarray, sample_rate: int, margin_db: float = 10.0,
               max_fraction: float = 0.8) -> tuple[int, int] | None:
    """(start, end) samples of the one sound event in a clip, found by activity detection: the blocks louder
    than the clip's floor (its 10th-percentile block) by `margin_db`, first to last. None when the event cannot
    be isolated: nothing stands out of the floor (a stationary sound), or the span covers more than
    `max_fraction` of the clip (a whole-recording weak label)."""
    power = _block_power(samples, sample_rate)
    floor = max(float(np.percentile(power, 10)), 1e-20)
    active = np.flatnonzero(power > floor * 10 ** (margin_db / 10))
    if not active.size:
        return None
    block = max(1, round(BLOCK_SECONDS * sample_rate))
    start, end = int(active[0] * block), int(min(samples.shape[-1], (active[-1] + 1) * block))
    return (start, end) if end - start <= max_fraction * samples.shape[-1] else None


@dataclass
class Placement:
    """One event in a mixture: where it starts and how loud it is against the background."""

    snr_db: float
    onset: int  # samples
    length: int  # samples of the (trimmed) event
    gain: float  # applied to the event before the group gain

    def to_json(self, sample_rate: int) -> dict:
        # microsecond precision: round(onset_s * sample_rate) is the exact sample at any rate up to 500 kHz
        return {"snr_db": round(self.snr_db, 4), "onset_s": round(self.onset / sample_rate, 6),
                "duration_s": round(self.length / sample_rate, 6), "gain": self.gain}


def place(background: np.ndarray, event: np.ndarray, snr_db: float, rng: np.random.Generator, sample_rate: int,
          method: str = "rms") -> tuple[np.ndarray, Placement]:
    """The event scaled to `snr_db` against the background and placed at a random onset inside it, as a
    (c, s) array the background's length (zeros elsewhere). An event longer than the background is cut."""
    n = background.shape[-1]
    event = event[..., :n]
    onset = int(rng.integers(0, n - event.shape[-1] + 1))
    placed = np.zeros_like(background)
    placed[..., onset: onset + event.shape[-1]] = event
    # measured on the placed event (the blocks `snr_db` sees later), so the recorded SNR is the measured one
    bg_db, ev_db = loudness_db(background, sample_rate, method), loudness_db(placed, sample_rate, method)
    if not np.isfinite(bg_db) or not np.isfinite(ev_db):
        raise ValueError("silent " + ("background" if not np.isfinite(bg_db) else "event") + ": no SNR can be set")
    gain = float(10 ** ((snr_db + bg_db - ev_db) / 20))
    placed *= gain
    return placed, Placement(snr_db, onset, event.shape[-1], gain)


def group_gain(*signals: np.ndarray, peak: float = 0.99) -> float:
    """One gain for every audio of a group so that none exceeds `peak` (1.0 when nothing would clip)."""
    top = max(float(np.abs(s).max()) for s in signals)
    return min(1.0, peak / top) if top > 0 else 1.0


def snr_db(mixture: np.ndarray, background: np.ndarray, sample_rate: int, method: str = "rms") -> float:
    """The SNR of the event in `mixture` (mixture - background) against the background, as `place` sets it."""
    return loudness_db(mixture - background, sample_rate, method) - loudness_db(background, sample_rate, method)
