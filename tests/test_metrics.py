"""Each metric against an independent computation (scipy, torchmetrics, closed forms), never against itself."""

import numpy as np
import pytest
import scipy.linalg
import torch

from evaluation import metrics


def _scipy_fd(mu1, s1, mu2, s2):
    """The textbook formula with scipy's sqrtm of the product (pytorch-fid / audioldm_eval style)."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_distance_equals_scipy_and_is_zero_for_one_set():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((400, 16)) @ rng.standard_normal((16, 16))
    b = 0.5 + rng.standard_normal((300, 16)) @ rng.standard_normal((16, 16))
    sa, sb = metrics.gaussian_stats(a), metrics.gaussian_stats(b)
    assert metrics.frechet_distance(*sa, *sb) == pytest.approx(_scipy_fd(*sa, *sb), rel=1e-6, abs=1e-6)
    assert abs(metrics.frechet_distance(*sa, *sa)) < 1e-6
    with pytest.raises(ValueError, match="n >= 2"):
        metrics.gaussian_stats(a[:1])


def test_fad_inf_extrapolates_towards_the_population_distance():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((4000, 8))
    gen = rng.standard_normal((2000, 8)) + 0.3  # population FD = 8 × 0.3² = 0.72
    result = metrics.frechet_distance_inf(gen, *metrics.gaussian_stats(ref), min_n=200, steps=10)
    finite = metrics.frechet_distance(*metrics.gaussian_stats(gen[:200]), *metrics.gaussian_stats(ref))
    assert abs(result["score"] - 0.72) < abs(finite - 0.72) and abs(result["score"] - 0.72) < 0.1
    assert result["slope"] > 0 and len(result["points"]) == 10


def test_kl_matches_a_hand_computation_and_vanishes_on_identical_outputs():
    rng = np.random.default_rng(2)
    gen, ref = rng.standard_normal((5, 7)), rng.standard_normal((5, 7))

    def softmax(x):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    p, q = softmax(ref), softmax(gen)
    hand = (p * (np.log(p) - np.log(q + 1e-6))).sum() / 5
    sig_p, sig_q = 1 / (1 + np.exp(-ref)), 1 / (1 + np.exp(-gen))
    hand_sigmoid = (sig_p * (np.log(sig_p) - np.log(sig_q + 1e-6))).sum() / 5
    result = metrics.kl_divergence(gen, ref)
    assert result["kl_softmax"] == pytest.approx(hand, rel=1e-9)
    assert result["kl_sigmoid"] == pytest.approx(hand_sigmoid, rel=1e-9)
    assert abs(metrics.kl_divergence(ref, ref)["kl_softmax"]) < 1e-4


def test_inception_score_closed_forms():
    assert metrics.inception_score(np.zeros((100, 10)))["is_mean"] == pytest.approx(1.0)  # no information
    confident = np.full((100, 10), -1e4)
    confident[np.arange(100), np.arange(100) % 10] = 0  # every class equally often, each clip sure of one
    assert metrics.inception_score(confident)["is_mean"] == pytest.approx(10.0, rel=1e-6)


def test_sdr_at_a_known_snr_and_si_sdr_equals_torchmetrics():
    from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio

    rng = np.random.default_rng(3)
    signal = rng.standard_normal(16000)
    noise = rng.standard_normal(16000)
    noise *= np.linalg.norm(signal) / np.linalg.norm(noise) / 10 ** (12.0 / 20)  # exactly 12 dB below
    assert metrics.sdr(signal, signal + noise) == pytest.approx(12.0, abs=1e-9)
    mixture = signal + 4 * noise
    assert metrics.sdr_improvement(signal, signal + noise, mixture) == pytest.approx(20 * np.log10(4), abs=1e-9)
    est = 0.5 * signal + noise + 0.01
    ours = metrics.si_sdr(signal, est)
    theirs = float(scale_invariant_signal_distortion_ratio(torch.tensor(est), torch.tensor(signal), zero_mean=True))
    assert ours == pytest.approx(theirs, abs=1e-6)


def test_lsd_and_mel_distance_closed_forms():
    rng = np.random.default_rng(4)
    wave = rng.standard_normal(24000)
    assert metrics.log_spectral_distance(wave, wave) == 0.0 and metrics.mel_distance(wave, wave, 24000) == 0.0
    # a gain g scales every power by g²: the log10 difference is 2·log10(g) in every bin
    assert metrics.log_spectral_distance(wave, 0.1 * wave) == pytest.approx(2.0, abs=1e-6)
    assert metrics.mel_distance(wave, 2 * wave, 24000) > 0
