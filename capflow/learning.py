"""Did the demo's models learn? Analytic audio features (spectral centroid, flatness, dominant frequency, envelope)
and a nearest-class-mean classifier fitted on real held-out clips of one sound class; generated clips are
classified by their prompt's class. Shape legend: s samples, f bins, t frames.
"""

from __future__ import annotations

import numpy as np

N_FFT, HOP = 1024, 256


def features(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """One clip (s,) or (a, s) -> [log centroid, flatness, log dominant frequency, log bandwidth, envelope
    peakiness, active share, log RMS]."""
    x = np.asarray(wave, np.float64)
    x = x.mean(axis=0) if x.ndim == 2 else x
    if len(x) < N_FFT:
        x = np.pad(x, (0, N_FFT - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP] * np.hanning(N_FFT)  # (t, n)
    power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2 + 1e-12  # (t, f)
    freqs = np.fft.rfftfreq(N_FFT, 1 / sample_rate)
    energy = power.sum(axis=-1)
    loud = energy >= 0.1 * energy.max()  # frames of the event, not the background
    spec = power[loud].mean(axis=0)
    centroid = (freqs * spec).sum() / spec.sum()
    bandwidth = np.sqrt(((freqs - centroid) ** 2 * spec).sum() / spec.sum())
    flatness = np.exp(np.log(power[loud]).mean(axis=-1)) / power[loud].mean(axis=-1)
    rms = np.sqrt(energy / N_FFT)
    return np.array([np.log(centroid + 1), flatness.mean(), np.log(freqs[spec.argmax()] + 20), np.log(bandwidth + 1),
                     rms.max() / (np.median(rms[loud]) + 1e-9), loud.mean(), np.log(rms[loud].mean() + 1e-9)])


class NearestClassMean:
    """Standardised features, each clip assigned to the class whose mean is nearest."""

    def fit(self, x: np.ndarray, labels: list[str]) -> NearestClassMean:
        self.mu, self.sd = x.mean(axis=0), x.std(axis=0) + 1e-9
        z = (x - self.mu) / self.sd
        self.classes = sorted(set(labels))
        self.means = np.stack([z[[lab == c for lab in labels]].mean(axis=0) for c in self.classes])
        return self

    def predict(self, x: np.ndarray) -> list[str]:
        z = (np.atleast_2d(x) - self.mu) / self.sd
        return [self.classes[i] for i in ((z[:, None] - self.means[None]) ** 2).sum(-1).argmin(axis=1)]


def accuracy(clf: NearestClassMean, x: np.ndarray, labels: list[str]) -> float:
    return float(np.mean([p == lab for p, lab in zip(clf.predict(x), labels)]))


def cross_validated(x: np.ndarray, labels: list[str]) -> float:
    """Leave-one-out accuracy of the classifier on the real clips (each clip scored by a classifier fitted
    without it): the bar generated clips are held to."""
    hits = [NearestClassMean().fit(np.delete(x, i, axis=0), labels[:i] + labels[i + 1:]).predict(x[i])[0] == labels[i]
            for i in range(len(labels))]
    return float(np.mean(hits))
