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


def fadtk_frechet(mu1, cov1, mu2, cov2):
    """fadtk's calc_frechet_distance: the trace of sqrt(cov1·cov2) by the eigenvalue method (scipy.linalg.eig)."""
    from numpy.lib.scimath import sqrt as scisqrt

    values, vectors = scipy.linalg.eig(cov1.dot(cov2))
    covmean = ((vectors * scisqrt(values)) @ scipy.linalg.inv(vectors)).real
    diff = mu1 - mu2
    return diff.dot(diff) + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean)


def fadtk_score_inf(embeds, mu_base, cov_base, steps=25, min_n=500):
    """fadtk's FrechetAudioDistance.score_inf, drawing from numpy's global generator as it does."""
    ns = [int(n) for n in np.linspace(min_n, len(embeds), steps)]
    results = []
    for n in ns:
        sub = embeds[np.random.choice(embeds.shape[0], size=n, replace=True)]
        results.append([n, fadtk_frechet(mu_base, cov_base, np.mean(sub, axis=0), np.cov(sub, rowvar=False))])
    ys, xs = np.array(results), 1 / np.array(ns)
    slope, intercept = np.polyfit(xs, ys[:, 1], 1)
    return intercept, slope


def test_fad_inf_is_fadtks_estimator():
    """1,000 frames of 128-d data: fadtk's draws with replacement and min_n = 500 (the audit's 3.72 vs 1.12)."""
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((3000, 128))
    gen = rng.standard_normal((1000, 128)) @ (np.eye(128) + 0.05 * rng.standard_normal((128, 128))) + 0.05
    mu, cov = metrics.gaussian_stats(ref)
    np.random.seed(7)
    expected, slope = fadtk_score_inf(gen, mu, cov)
    result = metrics.fad_inf(gen, mu, cov, seed=7)
    assert result["score"] == pytest.approx(expected, rel=1e-4) and result["slope"] == pytest.approx(slope, rel=1e-4)
    assert [p[0] for p in result["points"]] == [int(n) for n in np.linspace(500, 1000, 25)]


def test_frechet_distance_with_fewer_clips_than_dimensions_equals_scipy_sqrtm():
    """220 clips of 512-d CNN14-like embeddings (n < d, as AudioCaps' 882 clips of CNN14's 2,048: both
    covariances singular), against audioldm_eval's calculate_fid formula (scipy.linalg.sqrtm of the product;
    at 2,048-d it alone takes 20 s here)."""
    rng = np.random.default_rng(5)
    basis = rng.standard_normal((64, 512)) / 8
    a = np.maximum(rng.standard_normal((220, 64)) @ basis, 0)  # ReLU features, as CNN14's fc1
    b = np.maximum(rng.standard_normal((220, 64)) @ basis + 0.05, 0)
    sa, sb = metrics.gaussian_stats(a), metrics.gaussian_stats(b)
    assert metrics.frechet_distance(*sa, *sb) == pytest.approx(_scipy_fd(*sa, *sb), rel=1e-4)


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


def test_inception_score_is_audioldm_evals_with_its_seed_2020_shuffle():
    logits = np.random.default_rng(8).standard_normal((882, 527)) * 3
    x = torch.as_tensor(logits)[np.random.RandomState(2020).permutation(882)].double()  # samples_shuffle=True
    p, log_p = x.softmax(dim=1), x.log_softmax(dim=1)
    scores = []
    for i in range(10):
        chunk, log_chunk = p[i * 882 // 10:(i + 1) * 882 // 10], log_p[i * 882 // 10:(i + 1) * 882 // 10]
        scores.append((chunk * (log_chunk - chunk.mean(dim=0, keepdim=True).log())).sum(dim=1).mean().exp().item())
    result = metrics.inception_score(logits)
    assert result["is_mean"] == pytest.approx(np.mean(scores), rel=1e-9)
    assert result["is_std"] == pytest.approx(np.std(scores), rel=1e-9)
    assert metrics.inception_score(logits, shuffle=False)["is_mean"] != pytest.approx(np.mean(scores), rel=1e-6)


def test_inception_score_closed_forms():
    assert metrics.inception_score(np.zeros((100, 10)))["is_mean"] == pytest.approx(1.0)  # no information
    confident = np.full((100, 10), -1e4)
    confident[np.arange(100), np.arange(100) % 10] = 0  # every class equally often, each clip sure of one
    # unshuffled, every split holds every class (shuffled, audioldm_eval's own formula gives nan here: log 0)
    assert metrics.inception_score(confident, shuffle=False)["is_mean"] == pytest.approx(10.0, rel=1e-6)


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
