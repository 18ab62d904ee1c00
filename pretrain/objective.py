"""A DiT's objective: what it is trained to predict and how it is sampled. Two exist:

- `flow`: capflow's rectified flow (flow.py; t = 0 noise -> 1 data, velocity target, Euler/Heun sampling);
- `v-ddpm`: a v-prediction DDPM, EzAudio's (its public weights import as such, pretrain/ezaudio.py). Training
  points and sampling use diffusers' schedulers on the bundle's scheduler config: `add_noise`/`get_velocity` on
  uniform integer timesteps, as EzAudio's train.py, and DDIM, as its inference.py. The DiT embeds t·1000, so its
  time input is timestep / num_train_timesteps.

A bundle records its objective (capflow.json `objective`, with `scheduler` for v-ddpm). Training that starts
from a bundle (`init_from`: align, sft, the instruction editor, Imagic's tuning) continues in that bundle's
objective: a v-prediction network trained toward flow velocities at flow times would start from outputs that
mean something else for every input, and would spend its first thousands of steps relearning what the import
was meant to give.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .flow import interpolate, sample_timesteps, start_point, target_velocity
from .sampler import integrate

OBJECTIVES = ("flow", "v-ddpm")
SAMPLERS = {"flow": ("euler", "heun"), "v-ddpm": ("ddim",)}  # the solvers each objective samples with
Prediction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@functools.cache
def _ddim_class():
    """diffusers' DDIMScheduler with σ_t² kept at most 1 − ᾱ_prev after rounding. With zero-terminal-SNR betas
    (ᾱ = 0 at the first step) and eta 1, σ_t² equals 1 − ᾱ_prev exactly, and DDIM's direction term
    sqrt(1 − ᾱ_prev − σ_t²) is the square root of a rounding error: NaN whenever it falls below zero, in float32
    and in float64 alike (EzAudio's config at 50 DDIM steps, diffusers 0.42). The term is 0, as the formula says."""
    from diffusers import DDIMScheduler

    class DDIM(DDIMScheduler):
        def _get_variance(self, timestep, prev_timestep):
            variance = super()._get_variance(timestep, prev_timestep)
            prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
            room, zero = 1 - prev, torch.zeros_like(variance)
            variance = torch.minimum(variance, room)
            while (variance ** 0.5) ** 2 > room:  # step() squares the square root: one ulp down at a time
                variance = torch.nextafter(variance, zero)
            return variance

    return DDIM


@dataclass(frozen=True)
class Objective:
    name: str = "flow"
    scheduler: dict | None = None  # v-ddpm: diffusers DDIMScheduler config (EzAudio's: ezaudio.EZAUDIO_SCHEDULER)

    def __post_init__(self):
        if self.name not in OBJECTIVES or (self.name == "v-ddpm") != (self.scheduler is not None):
            raise ValueError(f"objective must be one of {OBJECTIVES} (v-ddpm with its scheduler config), got {self.name!r}")

    @classmethod
    def from_index(cls, index: dict) -> Objective:
        """The objective a bundle's capflow.json records; flow for bundles written before it was recorded."""
        return cls(index.get("objective", "flow"), index.get("scheduler"))

    def check_sampler(self, method: str | None) -> None:
        """Refuse a solver this objective does not sample with (None: the bundle's default)."""
        if method is not None and method not in SAMPLERS[self.name]:
            raise ValueError(f"--sampler {method}: a {self.name} bundle samples with {' or '.join(SAMPLERS[self.name])}"
                             + (" (DDIM, as EzAudio)" if self.name == "v-ddpm" else ""))

    def to_dict(self) -> dict:
        return {"objective": self.name, **({"scheduler": self.scheduler} if self.scheduler else {})}

    def _ddim(self):
        scheduler = _ddim_class()(**self.scheduler)
        scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()  # the schedule in float64, as exact as it gets
        scheduler.final_alpha_cumprod = scheduler.final_alpha_cumprod.double()
        return scheduler

    # ---- training ----------------------------------------------------------------------------------------
    def point(self, x1: torch.Tensor, noise: torch.Tensor, timesteps: str = "logit_normal", mean: float = 0.0,
              std: float = 1.0, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t, t, target) for clean latents x1 (b, c, n): the noisy latent, the DiT's time input (b,) and the
        regression target. timesteps/mean/std: the flow's time sampling (config `flow`); v-ddpm draws integer
        timesteps uniformly, as EzAudio. A (CPU) generator makes the draw reproducible."""
        b, device = x1.shape[0], None if generator is not None else x1.device
        if self.name == "flow":
            t = sample_timesteps(b, timesteps, mean, std, generator=generator, device=device).to(x1.device)
            return interpolate(x1, noise, t), t, target_velocity(x1, noise)
        scheduler = self._ddim()
        total = scheduler.config.num_train_timesteps
        steps = torch.randint(0, total, (b,), generator=generator, device=device).to(x1.device)
        return (scheduler.add_noise(x1, noise, steps), steps.to(x1.dtype) / total,
                scheduler.get_velocity(x1, noise, steps))

    # ---- sampling ----------------------------------------------------------------------------------------
    def sample(self, prediction: Prediction, noise: torch.Tensor, steps: int, *, source: torch.Tensor | None = None,
               t_start: float = 0.0, method: str | None = None, eta: float = 1.0, generator: torch.Generator | None = None,
               progress: bool = False) -> torch.Tensor:
        """Latents from noise, or from `source` pushed back to t_start (editing: flow start_point; v-ddpm: the
        source noised to the schedule's timestep at strength 1 - t_start, as diffusers' img2img).
        `prediction(x, t)` is the (guided) model output. `generator` draws DDIM's noise when eta > 0."""
        method = method or SAMPLERS[self.name][0]
        self.check_sampler(method)
        if source is not None and t_start <= 0:
            raise ValueError("sampling from a source needs t_start > 0 (e.g. 0.01): at t_start = 0 the start "
                             "point is pure noise and the source would be discarded")
        if self.name == "flow":
            x = noise if source is None else start_point(source, noise, t_start)
            return integrate(prediction, x, t_start=t_start, steps=steps, method=method, progress=progress)
        scheduler = self._ddim()
        scheduler.set_timesteps(steps)
        timesteps, x = scheduler.timesteps, noise
        if source is not None:
            # diffusers' img2img: int(steps · strength) steps from the end (at least one), strength 1 − t_start
            timesteps = timesteps[len(timesteps) - max(1, int(len(timesteps) * (1 - t_start))):]
            x = scheduler.add_noise(source.double(), noise.double(), timesteps[:1]).to(noise.dtype)
        total, b = scheduler.config.num_train_timesteps, x.shape[0]
        for t in tqdm(timesteps, desc="sampling", disable=not progress, leave=False):
            out = prediction(scheduler.scale_model_input(x, t), x.new_full((b,), float(t) / total))
            x = scheduler.step(out, t, x, eta=eta, generator=generator).prev_sample
        return x


FLOW = Objective()  # capflow's own objective, the default of every model trained from scratch
