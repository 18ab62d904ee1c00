"""The literature's metrics on embeddings, class outputs and waveforms, each as the reference toolkit defines it.

Distribution metrics (float64 throughout):
- Fréchet distance of two Gaussians (FD on PANNs, FAD on VGGish): ‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr (Σ1^½ Σ2 Σ1^½)^½.
  The trace of the matrix square root is taken from the eigenvalues of the symmetric PSD matrix Σ1^½ Σ2 Σ1^½
  (negative round-off clamped to 0): no complex parts to drop, unlike sqrtm(Σ1 Σ2).
- FAD∞ (fadtk's `score_inf`): FD of N embeddings drawn with replacement, N from 500 to n in 25 steps,
  extrapolated linearly in 1/N to N = ∞.
- KL (audioldm_eval): paired by id, on the classifier's logits; "KL" applies softmax, "KL_Sigmoid" the
  sigmoid; KL(ref ‖ gen) summed over classes and averaged over pairs, with audioldm_eval's 1e-6 in the log.
- IS (audioldm_eval): exp E_x KL(p(y|x) ‖ p(y)) of the softmax of the logits, over 10 splits after a
  seed-2020 permutation.
Waveform metrics (per clip):
- SDR as LASS/DCASE and AudioSep report it: 10 log10(‖s‖² / ‖s − ŝ‖²) (the SNR, not BSS-eval's SDR); SDRi =
  SDR(estimate) − SDR(mixture); SI-SDR with the scale-invariant projection (zero-mean, as torchmetrics).
- LSD: RMS over frequency of the log10 power-spectrum difference (Hann STFT 2048/512), averaged over frames.
  Not audioldm_eval's LSD: that path shifts the generated clip by 7 HiFi-GAN frames, removes DC, peak-normalises
  both and calls ssr_eval; capflow compares the files as they are.
- mel distance: mean |log mel(a) − log mel(b)|.
Shape legend: n clips, d embedding width, k classes, t samples.
"""

from __future__ import annotations

import numpy as np
import torch

EPS = 1e-6  # audioldm_eval's floor inside the KL log


def gaussian_stats(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean (d,), covariance (d, d)) in float64 of embeddings (n, d); covariance with n − 1 (np.cov)."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need embeddings of shape (n >= 2, d), got {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def online_stats(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """fadtk's `calculate_embd_statistics_online`: per-file mean (in the file's dtype: float16 for fadtk's stored
    embeddings) and scatter, merged in float64 (Chan et al.'s pairwise update). A one-row file adds no scatter of
    its own (fadtk's np.cov makes it NaN and the set's FAD NaN; 0 is what the formula means)."""
    d = arrays[0].shape[1]
    mu, scatter, n = np.zeros(d), np.zeros((d, d)), 0
    for e in arrays:
        m, k = np.mean(e, axis=0), len(e)
        own = np.cov(e, rowvar=False) * (k - 1) if k > 1 else 0.0
        delta = m - mu
        mu = mu + k / (n + k) * delta
        scatter = scatter + own + np.outer(delta, delta) * n * k / (n + k)
        n += k
    if n < 2:
        raise ValueError(f"need at least two embeddings, got {n}")
    return mu, scatter / (n - 1)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    root1 = _psd_sqrt(sigma1)
    inner = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    trace_sqrt = np.sqrt(np.clip(inner, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def fad_inf(embeddings: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray, min_n: int = 500, steps: int = 25,
            seed: int | None = 0) -> dict:
    """fadtk's FAD∞ (`FrechetAudioDistance.score_inf`): for each of `steps` sizes N = int(linspace(min_n, n))
    the FD of N embeddings drawn *with replacement* against the reference, fitted as FD(N) = intercept +
    slope / N; the intercept is the score. fadtk draws from numpy's global generator unseeded; the draws here
    are `np.random.RandomState(seed)`'s, i.e. fadtk's after `np.random.seed(seed)` (None: unseeded, as fadtk)."""
    x = np.asarray(embeddings)  # in its own dtype: fadtk's means of float16 embeddings are float16
    if len(x) < 2:
        raise ValueError(f"FAD-inf needs at least two embeddings; got {len(x)}")
    rng = np.random.RandomState(seed)
    sizes = [int(s) for s in np.linspace(min_n, len(x), steps)]
    points = []
    for size in sizes:
        sub = x[rng.choice(len(x), size=size, replace=True)]
        points.append([size, frechet_distance(mu_ref, sigma_ref, np.mean(sub, axis=0), np.cov(sub, rowvar=False))])
    inv, scores = 1 / np.array(sizes, dtype=np.float64), np.array([p[1] for p in points])
    slope, intercept = np.polyfit(inv, scores, 1)
    ss_res, ss_tot = ((scores - (slope * inv + intercept)) ** 2).sum(), ((scores - scores.mean()) ** 2).sum()
    return {"score": float(intercept), "slope": float(slope), "r2": float(1 - ss_res / ss_tot) if ss_tot else 1.0,
            "points": [[int(s), float(f)] for s, f in points], "min_n": min_n, "steps": steps, "seed": seed}


def kl_divergence(generated: np.ndarray, reference: np.ndarray) -> dict:
    """audioldm_eval's paired KL(ref ‖ gen) over classifier *logits* (n, k) (CNN14's fc_audioset before its
    sigmoid), rows already matched by id: "KL" is the softmax one, "KL_Sigmoid" the per-class sigmoid one."""
    # in the logits' own dtype (float32 from CNN14), as audioldm_eval sums them: near-identical sets give KL
    # near 0, where float32 and float64 sums differ in the leading digits
    gen, ref = torch.as_tensor(np.asarray(generated)), torch.as_tensor(np.asarray(reference))
    if gen.shape != ref.shape or gen.dim() != 2:
        raise ValueError(f"KL needs paired class outputs of one shape (n, k); got {tuple(gen.shape)} and {tuple(ref.shape)}")
    n = len(gen)
    kl = torch.nn.functional.kl_div
    softmax = kl((gen.softmax(dim=1) + EPS).log(), ref.softmax(dim=1), reduction="sum") / n
    sigmoid = kl((gen.sigmoid() + EPS).log(), ref.sigmoid(), reduction="sum") / n
    return {"kl_softmax": float(softmax), "kl_sigmoid": float(sigmoid)}


def inception_score(logits: np.ndarray, splits: int = 10, shuffle: bool = True, seed: int = 2020) -> dict:
    """audioldm_eval's IS over classifier logits (n, k): rows permuted by `np.random.RandomState(2020)`
    (`samples_shuffle=True`), then mean and std over `splits` splits of exp E KL(p(y|x) ‖ p(y))."""
    x = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    n = len(x)
    if shuffle:
        x = x[np.random.RandomState(seed).permutation(n)]
    p, log_p = x.softmax(dim=1), x.log_softmax(dim=1)
    scores = []
    for i in range(splits):
        chunk, log_chunk = p[i * n // splits:(i + 1) * n // splits], log_p[i * n // splits:(i + 1) * n // splits]
        if not len(chunk):
            continue
        q = chunk.mean(dim=0, keepdim=True)
        scores.append(float((chunk * (log_chunk - q.log())).sum(dim=1).mean().exp()))
    return {"is_mean": float(np.mean(scores)), "is_std": float(np.std(scores))}


def sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """The LASS "SDR" (an SNR) in dB of an estimate (…, t) of a reference (…, t), over all samples."""
    ref, est = np.asarray(reference, np.float64), np.asarray(estimate, np.float64)
    return float(10 * np.log10((ref ** 2).sum() / max(((ref - est) ** 2).sum(), 1e-20) + 1e-20))


def sdr_improvement(reference: np.ndarray, estimate: np.ndarray, mixture: np.ndarray) -> float:
    return sdr(reference, estimate) - sdr(reference, mixture)


def si_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Scale-invariant SDR in dB (zero-mean signals; the estimate projected on the reference)."""
    ref = np.asarray(reference, np.float64).ravel()
    est = np.asarray(estimate, np.float64).ravel()
    ref, est = ref - ref.mean(), est - est.mean()
    target = (est @ ref) / max(ref @ ref, 1e-20) * ref
    return float(10 * np.log10(max(target @ target, 1e-20) / max(((est - target) ** 2).sum(), 1e-20)))


def _power_spectrum(wave: np.ndarray, n_fft: int, hop: int) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(wave, np.float64)).reshape(-1, np.shape(wave)[-1])
    spec = torch.stft(x, n_fft, hop, window=torch.hann_window(n_fft, dtype=torch.float64), center=True,
                      return_complex=True)
    return spec.abs().pow(2)  # (channels, freq, frames)


def log_spectral_distance(reference: np.ndarray, estimate: np.ndarray, n_fft: int = 2048, hop: int = 512) -> float:
    """LSD: sqrt(mean over frequency of (log10 P_ref − log10 P_est)²), averaged over frames and channels."""
    length = min(np.shape(reference)[-1], np.shape(estimate)[-1])
    a = _power_spectrum(np.asarray(reference)[..., :length], n_fft, hop)
    b = _power_spectrum(np.asarray(estimate)[..., :length], n_fft, hop)
    diff = torch.log10(a + 1e-10) - torch.log10(b + 1e-10)
    return float(diff.pow(2).mean(dim=1).sqrt().mean())


def mel_distance(reference: np.ndarray, estimate: np.ndarray, sample_rate: int, n_fft: int = 1024, hop: int = 256,
                 n_mels: int = 80) -> float:
    """Mean absolute difference of log mel spectrograms (Slaney mel filters from transformers' audio utils)."""
    from transformers.audio_utils import mel_filter_bank

    filters = torch.as_tensor(mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=n_mels,
                                              min_frequency=0.0, max_frequency=sample_rate / 2,
                                              sampling_rate=sample_rate, norm="slaney", mel_scale="slaney"))
    length = min(np.shape(reference)[-1], np.shape(estimate)[-1])
    a = filters.T @ _power_spectrum(np.asarray(reference)[..., :length], n_fft, hop)
    b = filters.T @ _power_spectrum(np.asarray(estimate)[..., :length], n_fft, hop)
    return float((torch.log10(a + 1e-5) - torch.log10(b + 1e-5)).abs().mean())
