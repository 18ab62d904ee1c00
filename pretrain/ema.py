"""The EMA of the trained weights: diffusers' EMAModel (decay schedule, state dict, store/restore), its update
one in-place multi-tensor lerp.

diffusers' foreach update, s -= (1 - d)·(s - p), first materialises s - p for every tensor: a full-model fp32
temporary each step (2 GB at dit-l, 3.5 GB at dit-xl) and five passes over model-sized memory. The lerp,
s += (1 - d)·(p - s), is the same value in three passes and no temporary (4-5x faster on a CPU).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from diffusers.training_utils import EMAModel


class LerpEMA(EMAModel):
    @torch.no_grad()
    def step(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        parameters = list(parameters)
        if not self.foreach or any(not p.requires_grad or p.dtype != s.dtype
                                   for p, s in zip(parameters, self.shadow_params)):
            return super().step(parameters)  # frozen parameters (copied) or a lower-precision module
        self.optimization_step += 1
        self.cur_decay_value = decay = self.get_decay(self.optimization_step)
        torch._foreach_lerp_(self.shadow_params, [p.detach() for p in parameters], 1 - decay)
