"""The literature's metrics on embeddings, class outputs and waveforms, each as the reference toolkit defines it.

Distribution metrics (float64 throughout):
- Fréchet distance of two Gaussians (FD on PANNs, FAD on VGGish): ‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr (Σ1^½ Σ2 Σ1^½)^½.
  The trace of the matrix square root is taken from the eigenvalues of the symmetric PSD matrix Σ1^½ Σ2 Σ1^½
  (negative round-off clamped to 0): no complex parts to drop, unlike sqrtm(Σ1 Σ2).
- FAD∞ (fadtk): FD of random subsets of growing size N, extrapolated linearly in 1/N to N = ∞.
- KL (audioldm_eval): paired by id; softmax and sigmoid variants of KL(ref ‖ gen), summed over classes and
  averaged over pairs, with audioldm_eval's 1e-6 inside the log.
- IS (audioldm_eval): exp E_x KL(p(y|x) ‖ p(y)) over 10 splits of the softmax of the class outputs.
Waveform metrics (per clip):
- SDR as LASS/DCASE and AudioSep report it: 10 log10(‖s‖² / ‖s − ŝ‖²) (the SNR, not BSS-eval's SDR); SDRi =
  SDR(estimate) − SDR(mixture); SI-SDR with the scale-invariant projection (zero-mean, as torchmetrics).
- LSD: RMS over frequency of the log10 power-spectrum difference, averaged over frames (AudioLDM's definition).
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


def frechet_distance_inf(embeddings: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray, min_n: int = 500,
                         steps: int = 25, seed: int = 0) -> dict:
    """fadtk's FAD∞: FD of random subsets of sizes min_n … n against the reference, fitted as
    FD(N) = intercept + slope / N; the intercept is the score. Returns score, slope, r2 and the points."""
    x = np.asarray(embeddings, dtype=np.float64)
    n = x.shape[0]
    min_n = min(min_n, max(2, n // 4))
    sizes = sorted({int(s) for s in np.linspace(min_n, n, steps)})
    if len(sizes) < 2:
        raise ValueError(f"FAD-inf needs clips for at least two subset sizes; got {n} clips")
    rng = np.random.default_rng(seed)
    points = [(size, frechet_distance(*gaussian_stats(x[rng.choice(n, size, replace=False)]), mu_ref, sigma_ref))
              for size in sizes]
    inv, scores = np.array([1 / p[0] for p in points]), np.array([p[1] for p in points])
    slope, intercept = np.polyfit(inv, scores, 1)
    fitted = intercept + slope * inv
    ss_res, ss_tot = ((scores - fitted) ** 2).sum(), ((scores - scores.mean()) ** 2).sum()
    return {"score": float(intercept), "slope": float(slope), "r2": float(1 - ss_res / ss_tot) if ss_tot else 1.0,
            "points": [[int(s), float(f)] for s, f in points]}


def kl_divergence(generated: np.ndarray, reference: np.ndarray) -> dict:
    """audioldm_eval's paired KL over class outputs (n, k), rows already matched by id."""
    gen = torch.as_tensor(np.asarray(generated), dtype=torch.float64)
    ref = torch.as_tensor(np.asarray(reference), dtype=torch.float64)
    if gen.shape != ref.shape or gen.dim() != 2:
        raise ValueError(f"KL needs paired class outputs of one shape (n, k); got {tuple(gen.shape)} and {tuple(ref.shape)}")
    n = len(gen)
    kl = torch.nn.functional.kl_div
    softmax = kl((gen.softmax(dim=1) + EPS).log(), ref.softmax(dim=1), reduction="sum") / n
    sigmoid = kl((gen.sigmoid() + EPS).log(), ref.sigmoid(), reduction="sum") / n
    return {"kl_softmax": float(softmax), "kl_sigmoid": float(sigmoid)}


def inception_score(outputs: np.ndarray, splits: int = 10, shuffle: bool = False, seed: int = 2020) -> dict:
    """audioldm_eval's IS over class outputs (n, k): mean and std over `splits` splits."""
    x = torch.as_tensor(np.asarray(outputs), dtype=torch.float64)
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
