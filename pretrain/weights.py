"""The trained weights as they really are, whatever holds them, and their EMA.

Under DeepSpeed bf16/fp16 the module holds a rounded copy; the float32 master weights live in the optimizer's
partitions, one flat tensor per parameter group and rank (ZeRO 1/2: `single_partition_of_fp32_groups`;
stage 0 bf16: `fp32_groups_flat_partition`). The EMA then follows this rank's partitions (an average of masters,
never of bf16 snapshots, which stop moving once a step is below one bf16 ulp) and is gathered by name when it
is saved or validated. Elsewhere (one device, DDP, autocast mixed precision) the module is float32 and both
are plain: the masters are the parameters, the EMA follows them.
"""

from __future__ import annotations

import contextlib

import torch


class TrainedWeights:
    """`module`: the unwrapped trained module; `engine_optimizer`: DeepSpeed's optimizer (None without DeepSpeed)."""

    def __init__(self, module: torch.nn.Module, engine_optimizer=None):
        self.module, self.engine_optimizer = module, engine_optimizer

    def names(self) -> list[str]:
        return [n for n, p in self.module.named_parameters() if p.requires_grad]

    def params(self) -> list[torch.nn.Parameter]:
        """The parameters the optimizer and the EMA follow (a frozen base model's are left out)."""
        return [p for p in self.module.parameters() if p.requires_grad]

    def masters(self) -> dict[str, torch.Tensor]:
        """float32 values of the trainable parameters the module holds in lower precision, gathered from
        DeepSpeed's partitions (a collective: every rank calls it); empty when the module is float32."""
        if self.engine_optimizer is None:
            return {}
        from deepspeed.utils import safe_get_full_fp32_param

        out = {}
        for name, p in self.module.named_parameters():
            if p.requires_grad and p.dtype != torch.float32:
                full = safe_get_full_fp32_param(p)
                if full is not None:
                    out[name] = full.detach()
        return out

    def partitions(self) -> list[torch.Tensor] | None:
        """This rank's fp32 master partitions when DeepSpeed trains the module in bf16/fp16; None otherwise."""
        if self.engine_optimizer is None or all(p.dtype == torch.float32 for p in self.params()):
            return None
        for attr in ("single_partition_of_fp32_groups", "fp32_groups_flat_partition"):
            if flats := getattr(self.engine_optimizer, attr, None):
                return list(flats)
        raise ValueError(f"ema.enabled with DeepSpeed's {type(self.engine_optimizer).__name__} (ZeRO stage 3?): the "
                         "EMA follows the fp32 master partitions of ZeRO stages 0-2; use stage 2 or ema.enabled false")

    @contextlib.contextmanager
    def partitions_holding(self, values: list[torch.Tensor]):
        """The master partitions temporarily hold `values` (the EMA's): DeepSpeed's gather and scatter of full
        parameters then read and write those."""
        flats = self.partitions()
        saved = [f.detach().clone() for f in flats]
        try:
            with torch.no_grad():
                for f, v in zip(flats, values):
                    f.copy_(v)
            yield flats
        finally:
            with torch.no_grad():
                for f, s in zip(flats, saved):
                    f.copy_(s)

    def ema_values(self, shadow: list[torch.Tensor], partitioned: bool) -> dict[str, torch.Tensor]:
        """The EMA's float32 values by name (partitioned: gathered, a collective)."""
        if not partitioned:
            return dict(zip(self.names(), shadow))
        with self.partitions_holding(shadow):
            return self.masters()

    def ema_partitions(self, values: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Full fp32 values by name -> this rank's partitions of them (the inverse of `ema_values`)."""
        from deepspeed.utils import safe_set_full_fp32_param

        params = dict(self.module.named_parameters())
        with self.partitions_holding(self.partitions()) as flats:
            for name, value in values.items():
                safe_set_full_fp32_param(params[name], value.to(params[name].device, torch.float32))
            return [f.detach().clone() for f in flats]

    @contextlib.contextmanager
    def module_holding(self, values: dict[str, torch.Tensor]):
        """The module's parameters temporarily set to `values` (by name, any dtype), so that its own
        save_pretrained writes them as they are."""
        params = dict(self.module.named_parameters())
        originals = {n: params[n].data for n in values}
        try:
            for n, v in values.items():
                params[n].data = v
            yield
        finally:
            for n, d in originals.items():
                params[n].data = d
