import math

import numpy as np
import pytest
import torch

from pretrain.flow import (
    SIGMA_MIN,
    flow_loss,
    interpolate,
    sample_timesteps,
    span_mask,
    start_point,
    target_velocity,
)
from pretrain.sampler import cfg_combine, integrate


def point_mass_velocity(x1: torch.Tensor, sigma_min: float = SIGMA_MIN):
    """Exact velocity field of the convention when the data is the single point x1."""
    def v(x, t):
        t = t.reshape(-1, *([1] * (x.dim() - 1)))
        noise = (x - t * x1) / (1 - (1 - sigma_min) * t)
        return x1 - (1 - sigma_min) * noise
    return v


def two_point_velocity(a: torch.Tensor, b: torch.Tensor, sigma_min: float = SIGMA_MIN):
    """Exact velocity for data = ½δ_a + ½δ_b: a posterior-weighted mix of the two point-mass fields."""
    va, vb = point_mass_velocity(a, sigma_min), point_mass_velocity(b, sigma_min)

    def v(x, t):
        tt = t.reshape(-1, *([1] * (x.dim() - 1)))
        s = 1 - (1 - sigma_min) * tt
        dims = tuple(range(1, x.dim()))
        la = -((x - tt * a) ** 2).sum(dims) / (2 * s.reshape(-1) ** 2)
        lb = -((x - tt * b) ** 2).sum(dims) / (2 * s.reshape(-1) ** 2)
        w = torch.softmax(torch.stack([la, lb]), dim=0).reshape(2, -1, *([1] * (x.dim() - 1)))
        return w[0] * va(x, t) + w[1] * vb(x, t)
    return v


def test_path_endpoints_and_target():
    x1, eps = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    torch.testing.assert_close(interpolate(x1, eps, torch.zeros(3)), eps)
    torch.testing.assert_close(interpolate(x1, eps, torch.ones(3)), x1 + SIGMA_MIN * eps)
    t, dt = torch.full((3,), 0.3, dtype=torch.float64), 1e-6
    x1, eps = x1.double(), eps.double()
    fd = (interpolate(x1, eps, t + dt) - interpolate(x1, eps, t)) / dt
    torch.testing.assert_close(fd, target_velocity(x1, eps), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_sampler_lands_on_point_mass(method):
    x1 = torch.randn(2, 4, 6, dtype=torch.float64)
    noise = torch.randn(2, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = integrate(point_mass_velocity(x1), noise, steps=50, method=method)
    torch.testing.assert_close(out, x1, atol=1e-3, rtol=0)


def test_flipped_convention_fails():
    """Integrating the same field with time reversed (t = 0 as data) must not reach the data."""
    x1 = torch.randn(2, 4, 6, dtype=torch.float64)
    v = point_mass_velocity(x1)
    flipped = lambda x, t: -v(x, 1 - t)  # noqa: E731  (the "t = 1 is noise" reading of the same model)
    noise = torch.randn(2, 4, 6, dtype=torch.float64)
    out = integrate(flipped, noise, steps=50)
    assert (out - x1).abs().max() > 0.5


def test_sampler_lands_on_two_point_mixture():
    a, b = torch.full((1, 2, 3), 2.0, dtype=torch.float64), torch.full((1, 2, 3), -1.0, dtype=torch.float64)
    noise = torch.randn(64, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = integrate(two_point_velocity(a, b), noise, steps=200)
    dist = torch.stack([(out - a).abs().amax((1, 2)), (out - b).abs().amax((1, 2))]).amin(0)
    assert dist.max() < 1e-2
    hit_a = ((out - a).abs().amax((1, 2)) < 1e-2).float().mean()
    assert 0.2 < hit_a < 0.8  # both modes are reached


def test_edit_start_point():
    src, eps = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    torch.testing.assert_close(start_point(src, eps, 0.01), (1 - (1 - SIGMA_MIN) * 0.01) * eps + 0.01 * src)


def test_cfg_rescale_matches_hand_computation():
    v_pos = torch.tensor([[1.0, 3.0]])
    v_neg = torch.tensor([[0.0, 1.0]])
    w, phi = 3.0, 0.5
    v_cfg = torch.tensor([[3.0, 7.0]])  # v_neg + 3 (v_pos - v_neg)
    std_pos = math.sqrt(2.0)  # unbiased std of [1, 3]
    std_cfg = math.sqrt(8.0)  # unbiased std of [3, 7]
    expected = phi * v_cfg * std_pos / std_cfg + (1 - phi) * v_cfg  # [[2.25, 5.25]]
    torch.testing.assert_close(cfg_combine(v_pos, v_neg, w, phi), expected)
    torch.testing.assert_close(expected, torch.tensor([[2.25, 5.25]]))
    torch.testing.assert_close(cfg_combine(v_pos, v_neg, w, 0.0), v_cfg)
    torch.testing.assert_close(cfg_combine(v_pos, v_neg, 1.0, 0.7), v_pos)


def _ezaudio_mask(ratio: float, frames: int, span: int, rng: np.random.Generator) -> np.ndarray:
    """One row of EzAudio's mask as its random_masking draws it (fairseq's compute_mask_indices with static
    spans, overlap allowed, min_masks 1), written out here as a loop: the reference the vectorised one must meet."""
    count = max(1, int(np.floor(ratio * frames / span + rng.random())))
    room = count + 1 if frames - span <= count else frames - span
    row = np.zeros(frames, bool)
    for start in rng.choice(room, count, replace=False):
        row[start: start + span] = True
    return row


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5, 1.0])
def test_span_mask_has_ezaudios_statistics(ratio):
    g, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
    frames, span, n = 500, 10, 3000  # 10 s at 50 latent frames/s, 0.2 s spans
    ours = span_mask(n, frames, span, ratio=(ratio, ratio), generator=g).numpy()
    ref = np.stack([_ezaudio_mask(ratio, frames, span, rng) for _ in range(n)])
    for stat in (lambda m: m.mean(1), lambda m: m.mean(0)):  # hidden fraction per row; per frame (edges less)
        a, b = stat(ours), stat(ref)
        assert abs(a.mean() - b.mean()) < 0.01 and abs(a.std() - b.std()) < 0.01, (ratio, a.mean(), b.mean())
    assert abs(ours[:, 0].mean() - ref[:, 0].mean()) < 0.03  # the first frame is hidden less often than the middle
    assert (ours.sum(1) >= span).all() or ratio * frames < span  # at least one span
    # overlap: a row may hide fewer than its spans' frames, and spans start anywhere, not on a grid of spans
    starts = np.flatnonzero(np.diff(ours[:64].astype(int), axis=1, prepend=0) == 1)
    assert (starts % frames % span != 0).any()
    if ratio < 1:
        assert ours.mean() < ratio


def test_span_mask_full_masks_and_edges():
    g = torch.Generator().manual_seed(0)
    assert span_mask(200, 500, 10, full_mask_prob=1.0, generator=g).all()
    some = span_mask(400, 500, 10, full_mask_prob=0.75, generator=g).all(1).float().mean()
    assert 0.65 < some < 0.85
    short = span_mask(64, 12, 10, ratio=(1.0, 1.0), generator=g)  # fewer frames than two spans: still a mask
    assert short.any(1).all() and short.shape == (64, 12)


def test_loss_only_on_masked_frames():
    target = torch.zeros(2, 3, 10)
    pred = torch.zeros(2, 3, 10)
    pred[:, :, :5] = 1.0  # errors only in the first half
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, 5:] = True  # sample 0 is scored on the error-free half
    mask[1, :5] = True
    per = flow_loss(pred, target, mask, reduce=False)
    torch.testing.assert_close(per, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(flow_loss(pred, target, None), torch.tensor(0.5))


def test_timestep_sampling():
    g = torch.Generator().manual_seed(0)
    t = sample_timesteps(10000, "logit_normal", generator=g)
    assert 0 < t.min() and t.max() < 1 and abs(t.median() - 0.5) < 0.02
    u = sample_timesteps(10000, "uniform", generator=g)
    assert abs(u.mean() - 0.5) < 0.02
    with pytest.raises(ValueError, match="logit_normal"):
        sample_timesteps(2, "cosine")


def test_loss_mean_leaves_out_samples_without_supervised_frames():
    """A sample whose masked frames all fall in padding has nothing to learn: it is not a zero in the mean."""
    target = torch.zeros(3, 2, 6)
    pred = torch.ones(3, 2, 6, requires_grad=True)
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[0, :2] = True
    mask[2, 3:] = True  # sample 1 has no supervised frame
    loss = flow_loss(pred, target, mask)
    torch.testing.assert_close(loss, torch.tensor(1.0))  # mean over samples 0 and 2, not (1 + 0 + 1) / 3
    empty = flow_loss(pred, target, torch.zeros(3, 6, dtype=torch.bool))
    assert empty.item() == 0.0 and empty.requires_grad  # every rank still runs a backward


def test_v_ddpm_img2img_starts_where_diffusers_does():
    """diffusers' img2img runs int(steps · strength) steps (get_timesteps): 10 steps at strength 0.75 run 7,
    where round() ran 8."""
    from diffusers import DDIMScheduler

    from pretrain.ezaudio import EZAUDIO_SCHEDULER
    from pretrain.objective import Objective

    seen = []
    objective = Objective("v-ddpm", EZAUDIO_SCHEDULER)
    x = torch.randn(1, 4, 6)
    objective.sample(lambda x, t: seen.append(round(float(t) * 1000)) or torch.zeros_like(x), x, 10, source=x,
                     t_start=0.25)
    scheduler = DDIMScheduler(**EZAUDIO_SCHEDULER)
    scheduler.set_timesteps(10)
    assert seen == scheduler.timesteps[10 - int(10 * 0.75):].tolist() and len(seen) == 7
