"""The flow-matching objective, pinned once (RFM-Editing eq. 1–2; DESIGN.md "Flow-matching convention").

t ∈ [0, 1]; t = 0 is noise, t = 1 is data:
    x_t = (1 − (1 − σ_min)·t)·ε + t·x1          target  v = x1 − (1 − σ_min)·ε
Also here: timestep sampling, EzAudio span masking, and the masked-frame loss.
Shape legend: b batch, c latent channels, n latent frames.
"""

from __future__ import annotations

import torch

SIGMA_MIN = 1e-4  # noise scale left at t = 1 (RFM-Editing's σ_min; its value is not given there)


def interpolate(x1: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, sigma_min: float = SIGMA_MIN) -> torch.Tensor:
    """x_t on the straight path from noise (t=0) to data (t=1). t: (b,) or a scalar."""
    t = _expand(t, x1)
    return (1 - (1 - sigma_min) * t) * noise + t * x1


def target_velocity(x1: torch.Tensor, noise: torch.Tensor, sigma_min: float = SIGMA_MIN) -> torch.Tensor:
    """dx_t/dt, the regression target."""
    return x1 - (1 - sigma_min) * noise


def start_point(x_src: torch.Tensor, noise: torch.Tensor, t_start: float, sigma_min: float = SIGMA_MIN) -> torch.Tensor:
    """Editing start (RFM-Editing eq. 4): the source pushed back to t_start on the path."""
    return interpolate(x_src, noise, torch.as_tensor(t_start, dtype=x_src.dtype, device=x_src.device), sigma_min)


def _expand(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.reshape(-1, *([1] * (like.dim() - 1))) if t.dim() else t


def sample_timesteps(batch: int, kind: str = "logit_normal", mean: float = 0.0, std: float = 1.0,
                     generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Training times in (0, 1): logit-normal (SD3's default, more weight mid-path) or uniform."""
    if kind == "logit_normal":
        return torch.sigmoid(mean + std * torch.randn(batch, generator=generator, device=device))
    if kind == "uniform":
        return torch.rand(batch, generator=generator, device=device)
    raise ValueError(f"unknown timestep sampling {kind!r}; valid: 'logit_normal', 'uniform'")


def span_mask(batch: int, frames: int, span: int, ratio: tuple[float, float] = (0.25, 1.0),
              full_mask_prob: float = 0.0, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Masked-audio-modeling mask (b, n), True = frame hidden from the context and generated.

    EzAudio's masking (its MaskDiT.random_masking: fairseq's compute_mask_indices, static spans, overlap
    allowed, at least one span): per sample a ratio r ~ U(ratio) and floor(r·n / span + u) spans, u ~ U[0, 1)
    (rounding up with probability equal to the fraction); their starts are distinct frames drawn uniformly from
    [0, n − span) (from [0, k + 1) for k spans when n − span <= k), each hides `span` frames (0.2 s minimum span,
    EzAudio §2.3) cut at the end; spans may overlap, so the hidden fraction is at most r. With probability
    full_mask_prob every frame is hidden (no audio context at all; EzAudio: 1 − mae_prob). Drawn for the whole
    batch at once, on `device` (the generator's), without reading anything back to the host.
    """
    if span < 1 or not 0 < ratio[0] <= ratio[1] <= 1:
        raise ValueError(f"span must be >= 1 and 0 < ratio[0] <= ratio[1] <= 1, got span={span}, ratio={ratio}")

    def uniform(*shape):
        return torch.rand(*shape, generator=generator, device=device)

    r = ratio[0] + (ratio[1] - ratio[0]) * uniform(batch)
    full = uniform(batch) < full_mask_prob
    count = (r * frames / span + uniform(batch)).floor().clamp_min(1)  # (b,) spans: probabilistic rounding
    starts = torch.where(frames - span <= count, count + 1, torch.full_like(count, frames - span)).clamp_max(frames)
    # `count` distinct starts among the first `starts` frames: the lowest ranks of a uniform draw there
    keys = uniform(batch, frames).masked_fill(torch.arange(frames, device=r.device) >= starts[:, None], 2.0)
    first = keys.argsort(dim=1).argsort(dim=1) < count[:, None]  # (b, n) span starts
    # frame j is hidden when a span starts in (j − span, j]: a windowed count of the starts
    begun = first.cumsum(dim=1)
    hidden = begun - torch.nn.functional.pad(begun, (span, 0))[:, :frames] > 0
    return hidden | full[:, None]


def flow_loss(v_pred: torch.Tensor, v_target: torch.Tensor, mask: torch.Tensor | None = None,
              reduce: bool = True) -> torch.Tensor:
    """MSE on supervised frames (masked and valid), averaged per sample over its supervised frames, then
    over the samples that have any: a sample with few masked frames weighs as much as a fully masked one,
    and a sample whose masked frames all fall in padding is left out of the mean instead of counting as a
    zero loss. All frames when mask is None. If no sample of the batch has a supervised frame the loss is
    an exact zero that keeps the graph (every rank still runs its backward).
    v_pred, v_target: (b, c, n); mask: (b, n) bool. Returns the batch mean, or (b,) with reduce=False
    (0 for samples without supervised frames)."""
    err = (v_pred.float() - v_target.float()).pow(2).mean(dim=1)  # (b, n)
    if mask is None:
        per_sample = err.mean(dim=1)
        return per_sample.mean() if reduce else per_sample
    m = mask.to(err.dtype)
    count = m.sum(dim=1)  # (b,)
    per_sample = (err * m).sum(dim=1) / count.clamp_min(1.0)  # (b,)
    if not reduce:
        return per_sample
    has = count > 0
    return per_sample.sum() / has.sum().clamp_min(1)
