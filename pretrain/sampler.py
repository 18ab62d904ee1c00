"""Sampling: integrate dx/dt = v from t_start to 1 (Euler or Heun), with classifier-free guidance and
CFG rescaling (EzAudio eq. 1–3). The conditional and unconditional branches run as one batched forward.
The guidance is the same for v-prediction DDPM bundles (EzAudio's), which objective.py samples with DDIM.
Shape legend: b batch, c latent channels, n latent frames, l text tokens, e text width.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x (b, c, n), t (b,)) -> v (b, c, n)


def cfg_combine(v_pos: torch.Tensor, v_neg: torch.Tensor, scale: float, rescale: float) -> torch.Tensor:
    """v_cfg = v_neg + w·(v_pos − v_neg); v_re = v_cfg·std(v_pos)/std(v_cfg); v = φ·v_re + (1 − φ)·v_cfg.
    std is per sample over all non-batch dimensions."""
    return rescale_cfg(v_neg + scale * (v_pos - v_neg), v_pos, rescale)


def rescale_cfg(v_cfg: torch.Tensor, v_pos: torch.Tensor, rescale: float) -> torch.Tensor:
    """CFG rescaling (EzAudio eq. 3): the guided velocity's per-sample std brought back toward v_pos's."""
    if rescale == 0:
        return v_cfg
    dims = tuple(range(1, v_pos.dim()))
    v_re = v_cfg * (v_pos.std(dim=dims, keepdim=True) / v_cfg.std(dim=dims, keepdim=True).clamp_min(1e-8))
    return rescale * v_re + (1 - rescale) * v_cfg


def guided_velocity(model: torch.nn.Module, *, text: torch.Tensor | None = None, text_mask: torch.Tensor | None = None,
                    neg_text: torch.Tensor | None = None, neg_mask: torch.Tensor | None = None,
                    context: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                    scale: float = 1.0, rescale: float = 0.0) -> Velocity:
    """The model's velocity with CFG. neg_text is the negative prompt's encoding (the encoded empty
    string for plain unconditional guidance). A model without text modules ignores guidance.
    The velocity is returned in float32 whatever the model's precision (guidance and integration in fp32)."""
    if text is None or scale == 1.0:
        return lambda x, t: model(x, t, context=context, mask=mask, text=text, text_mask=text_mask).float()

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        # pad the two prompt sets to one length so they batch; padded positions are masked out
        length = max(text.shape[1], neg_text.shape[1])
        both = torch.cat([_pad(text, length), _pad(neg_text, length)])  # (2b, l, e)
        both_mask = torch.cat([_pad(text_mask, length), _pad(neg_mask, length)])  # (2b, l)
        v = model(torch.cat([x, x]), torch.cat([t, t]),
                  context=None if context is None else torch.cat([context, context]),
                  mask=None if mask is None else torch.cat([mask, mask]), text=both, text_mask=both_mask).float()
        return cfg_combine(v[:b], v[b:], scale, rescale)

    return velocity


def _pad(x: torch.Tensor, length: int) -> torch.Tensor:
    if x.shape[1] == length:
        return x
    pad = x.new_zeros(x.shape[0], length - x.shape[1], *x.shape[2:])
    return torch.cat([x, pad], dim=1)


@torch.no_grad()
def integrate(velocity: Velocity, x: torch.Tensor, t_start: float = 0.0, steps: int = 50, method: str = "euler",
              progress: bool = False) -> torch.Tensor:
    """Integrate from t_start to 1 on a uniform grid with Euler (1 evaluation/step) or Heun (2)."""
    if method not in ("euler", "heun"):
        raise ValueError(f"unknown sampler {method!r}; valid: 'euler', 'heun'")
    if steps < 1 or not 0.0 <= t_start < 1.0:
        raise ValueError(f"need steps >= 1 and 0 <= t_start < 1, got steps={steps}, t_start={t_start}")
    grid = torch.linspace(t_start, 1.0, steps + 1, dtype=torch.float64).tolist()
    b = x.shape[0]
    for t0, t1 in tqdm(list(zip(grid[:-1], grid[1:])), desc="sampling", disable=not progress, leave=False):
        dt = t1 - t0
        v0 = velocity(x, x.new_full((b,), t0))
        if method == "euler":
            x = x + dt * v0
        else:
            x_pred = x + dt * v0
            x = x + 0.5 * dt * (v0 + velocity(x_pred, x.new_full((b,), t1)))
    return x
