"""One training loop for every stage (mask | align | sft here; finetune's edit, separation's query and
separator stages through the hooks of `Trainer`), on accelerate: single process, DDP or DeepSpeed.

    capflow pretrain --config C [--resume latest]          one process
    accelerate launch -m pretrain --config C               many (configs/accelerate/*.yaml)

Per optimizer step: `accumulation` micro-batches; each draws a mask (span masking, or a full mask with
probability full_mask_prob), noise and times, and regresses the flow-matching velocity on masked, valid
frames. A non-finite loss or gradient norm skips the step's weight update on every rank (the discriminator's
alike); skips are counted, too many in a row stop the run, and non-finite weights are never saved. With a fused
AdamW the skip is decided on the device, so a step reads nothing back and the GPU never waits for the host; the
numbers are read at each log and checkpoint. The logged loss is the mean over every rank's micro-batches; the
logged LR is the one the step ran at.
Shape legend: b batch, c latent channels, n latent frames, l text tokens.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import torch

from shards.config import config_hash, save_config
from shards.manifest import read_manifest
from shards.outputs import check_output_dir

from .checkpoint import (
    EMA_DIR,
    RAW_DIR,
    checkpoint_dir,
    export_bundle,
    list_checkpoints,
    load_loop_state,
    resolve_resume,
    rotate,
    save_loop_state,
)
from .codec import CodecConfig
from .config import PretrainConfig
from .data import LatentBatches, set_latent_shape
from .dit import EzAudioDiT, preset
from .flow import flow_loss, span_mask
from .objective import FLOW, Objective
from .pipeline import BUNDLE_FORMAT, bundle_objective
from .text import TextEncoder
from .weights import TrainedWeights

log = logging.getLogger("capflow.pretrain")
SETTLE_EVERY = 100  # steps whose numbers may wait on the device for a log (one host read per this many at least)


@dataclass
class TrainState:
    """Counters that resume restores (saved as trainer_state.json beside accelerate's state)."""

    step: int = 0  # optimizer steps taken (a skipped one, which left the weights alone, included)
    micro: int = 0  # micro-batches drawn from the stream (the data position)
    samples: int = 0
    nan_skipped: int = 0
    nan_in_row: int = 0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)


def lr_lambda(cfg: PretrainConfig):
    o = cfg.optim

    def f(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - o.warmup_steps) / max(1, cfg.steps - o.warmup_steps))
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def data_provenance(cfg: PretrainConfig) -> tuple[CodecConfig, dict, list[str]]:
    """Codec config (with normalisation), the latent set's facts (frame_rate, latent_channels, ...) and the
    manifest hashes of the training data."""
    for p in cfg.data.shards:
        if "://" not in p and "{" not in p and not Path(p).exists():
            raise FileNotFoundError(f"data.shards: no such shard set {p} (make it with capflow encode)")
    manifests = [read_manifest(p) for p in cfg.data.shards if Path(p).is_dir()]
    if not manifests or "codec" not in manifests[0].get("extra", {}):
        raise ValueError(f"{cfg.data.shards[0]}: not a latent shard set with codec provenance (make it with capflow encode)")
    extra = manifests[0]["extra"]
    for other in manifests[1:]:
        if other["extra"].get("codec") != extra["codec"]:
            raise ValueError("data.shards were encoded with different codecs or normalisations; encode them alike")
    return CodecConfig(**extra["codec"]), extra, [m["config_hash"] for m in manifests]


def build_model(cfg: PretrainConfig, text_dim: int | None, latent_channels: int) -> EzAudioDiT:
    if cfg.init_from:
        dit = EzAudioDiT.from_pretrained(Path(cfg.init_from) / "dit")
        if cfg.stage != "mask" and not dit.has_text:
            dit.add_text_modules(text_dim)  # mask -> align: zero-initialised cross-attention (EzAudio §2.3)
        dit.config.gradient_checkpointing = cfg.model.gradient_checkpointing
        return dit
    overrides = {k: v for k, v in {"adaln": cfg.model.adaln, "long_skip": cfg.model.long_skip}.items() if v is not None}
    return EzAudioDiT(preset(cfg.model.preset, latent_channels=latent_channels, text_dim=text_dim,
                             gradient_checkpointing=cfg.model.gradient_checkpointing, **overrides))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on weight matrices only. Norms, biases, the mask embedding and the AdaLN
    tables are excluded, as in EzAudio (decaying a learned offset pulls it to zero, not to simplicity)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = p.ndim < 2 or name.endswith(("mask_embed", ".table"))  # norms and biases are 1-d
        (no_decay if exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def compute_loss(model, batch: dict, cfg: PretrainConfig, span: int, text_encoder: TextEncoder | None,
                 device, objective: Objective = FLOW) -> torch.Tensor:
    """The loss of one micro-batch: draw the mask, the times and the noise, predict the objective's target
    (flow velocity, or v for a v-DDPM) from the noisy latent and the visible context, score masked valid frames."""
    x1 = batch["latent"].to(device, non_blocking=True)  # (b, c, n)
    b, _, n = x1.shape
    m = cfg.masking
    mask = span_mask(b, n, span, tuple(m.ratio), m.full_mask_prob, device=device)  # (b, n)
    text = text_mask = None
    if text_encoder is not None:
        text, text_mask = text_encoder(batch["caption"])  # (b, l, e), (b, l)
    x_t, t, target = objective.point(x1, torch.randn_like(x1), cfg.flow.timesteps, cfg.flow.logit_mean,
                                     cfg.flow.logit_std)
    v = model(x_t, t, context=x1, mask=mask, text=text, text_mask=text_mask)
    return flow_loss(v, target, mask & batch["valid"].to(device, non_blocking=True))


class Trainer:
    export_format = BUNDLE_FORMAT  # what OUTPUT/export holds: checked before any work, replaced only if so

    def __init__(self, cfg: PretrainConfig, resume: str | None = None):
        from accelerate import Accelerator
        from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs, set_seed

        from .ema import LerpEMA

        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        check_output_dir(self.out / "export", self.export_format, "export folder")
        self.codec_cfg, latent_info, self.data_hashes = self.provenance()
        self.latent_info = latent_info
        self.objective = bundle_objective(cfg.init_from)  # training continues in its start's objective
        if cfg.mixed_precision == "auto":
            precision = "bf16" if torch.cuda.is_available() else "no"
        else:
            precision = cfg.mixed_precision
        plugin = None
        if cfg.deepspeed:
            ds = json.loads(Path(cfg.deepspeed).read_text())
            ds.setdefault("bf16", {})["enabled"] = precision == "bf16"
            ds.setdefault("fp16", {})["enabled"] = precision == "fp16"
            plugin = DeepSpeedPlugin(hf_ds_config=ds)
        # Several processes without GPUs: DeepSpeed needs a gloo process group (accelerate picks no backend
        # there), and plain DDP needs accelerate's CPU mode. The launcher's environment says how many.
        launched = int(os.environ.get("WORLD_SIZE", os.environ.get("OMPI_COMM_WORLD_SIZE", os.environ.get("PMI_SIZE", 1))))
        cpu_multi = launched > 1 and not torch.cuda.is_available()
        handlers = [InitProcessGroupKwargs(backend="gloo", timeout=timedelta(minutes=30))] if cpu_multi and plugin else []
        self.acc = Accelerator(mixed_precision=precision, deepspeed_plugin=plugin, kwargs_handlers=handlers,
                               project_dir=str(self.out), cpu=cpu_multi and plugin is None,
                               step_scheduler_with_optimizer=False,  # the schedule counts optimizer steps
                               log_with="tensorboard" if cfg.tensorboard else None)
        # fails before any work if the global batch does not divide over the processes
        self.accumulation = cfg.accumulation(self.acc.num_processes)
        self.acc.gradient_accumulation_steps = self.accumulation
        if plugin is not None:  # the training config owns these; the DeepSpeed JSON says "auto" for them
            self.acc.state.deepspeed_plugin.deepspeed_config.update(
                train_micro_batch_size_per_gpu=cfg.data.micro_batch_size, train_batch_size=cfg.batch_size,
                gradient_accumulation_steps=self.accumulation, gradient_clipping=cfg.optim.grad_clip)
        self.is_deepspeed = plugin is not None
        set_seed(cfg.seed + self.acc.process_index)  # a different noise/mask stream per rank
        if self.acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out)
            if cfg.tensorboard:
                self.acc.init_trackers("tensorboard")

        self.text_encoder = self.make_text_encoder()
        model = self.build_model(latent_info)
        self.span = max(1, round(cfg.masking.span_seconds * float(latent_info.get("frame_rate", 1.0))))
        o = cfg.optim
        self.fused = o.implementation != "foreach"
        optimizer = torch.optim.AdamW(param_groups(model, o.weight_decay), lr=o.lr, betas=o.betas, eps=o.eps,
                                      **({"fused": True} if self.fused else {"foreach": True}))
        if cfg.model.compile:
            model.compile()  # in place: parameter names, state dicts and checkpoints stay the module's own
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
        self.model, self.optimizer, self.scheduler = self.acc.prepare(model, optimizer, scheduler)
        self.weights = TrainedWeights(self.unwrapped, self.model.optimizer if plugin is not None else None)
        # an adversarial objective's discriminator and its own optimizer (saved and resumed with the rest)
        self.discriminator = self.opt_d = None
        self.last_d_loss = float("nan")
        if (adversary := self.make_discriminator()) is not None:
            if plugin is not None:
                raise ValueError("a discriminator (adversarial training) runs under DDP or on one device, not DeepSpeed; "
                                 "drop `deepspeed` from the config")
            self.discriminator, self.opt_d = self.acc.prepare(*adversary)
        self.state = TrainState()
        self.ema = self.ema_flats = None
        if cfg.ema.enabled:
            e = cfg.ema
            # DeepSpeed bf16/fp16: the EMA follows this rank's fp32 master partitions, never the rounded module
            self.ema_flats = self.weights.partitions()
            followed = self.ema_flats or self.weights.params()
            self.ema = LerpEMA(followed, decay=e.decay, use_ema_warmup=e.warmup == "power",
                                inv_gamma=e.inv_gamma, power=e.power, update_after_step=e.update_after_step,
                                foreach=True)  # one multi-tensor lerp per step, in place
            self.ema.to(followed[0].device, dtype=torch.float32)
        if not self.is_deepspeed:  # the trained module's weights are RAW_DIR, not accelerate's copy of them
            self.acc.register_save_state_pre_hook(self._skip_module_state)
            self.acc.register_load_state_pre_hook(self._load_module_state)
        if resume:
            # accelerate restores optimizer, scheduler and RNG (and the module under DeepSpeed), the hook the
            # module's weights; the loop's own state (counters, data position) is JSON, the EMA's weights are
            # EMA_DIR, loaded in place so the EMA stays on the model's device.
            path = resolve_resume(self.out, resume)
            self.acc.load_state(str(path))
            ema_values = None
            if self.ema is not None and (path / EMA_DIR).is_dir():
                saved = self.unwrapped.saved_weights(path / EMA_DIR)
                ema_values = [saved[name] for name in self.weights.names()]
                if self.ema_flats is not None:  # this rank's partitions of the saved EMA
                    ema_values = self.weights.ema_partitions(dict(zip(self.weights.names(), ema_values)))
            load_loop_state(path, self.state, self.ema, ema_values)
            log.info("resumed from %s at step %d (micro-batch %d)", path, self.state.step, self.state.micro)
        self.stream = self.make_stream()
        self.batches = iter(self.stream)
        self.validator = None
        self.last_val_clap = None
        self._pending: list[dict] = []  # steps whose numbers are still on the device (see _settle)
        self._window: list[dict] = []  # settled steps since the last log

    # ---- what a stage brings (a subclass overrides these; the loop below is the one loop) --------------
    def provenance(self) -> tuple[CodecConfig | None, dict, list[str]]:
        """(codec config, facts of the training data, the data sets' config hashes)."""
        return data_provenance(self.cfg)

    def make_discriminator(self) -> tuple[torch.nn.Module, torch.optim.Optimizer] | None:
        """An adversarial stage's discriminator and its optimizer (None: no discriminator step)."""
        return None

    def discriminator_loss(self, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def make_text_encoder(self) -> TextEncoder | None:
        """The frozen Flan-T5 of stages align/sft (None for mask)."""
        if self.cfg.stage == "mask":
            return None
        te = self.cfg.text_encoder
        return TextEncoder(te.pretrained, te.max_length, te.dtype).to(self.acc.device)

    def build_model(self, latent_info: dict) -> torch.nn.Module:
        """The trained module (prepared by accelerate)."""
        text_dim = self.text_encoder.dim if self.text_encoder else None
        model = build_model(self.cfg, text_dim, int(latent_info["latent_channels"]))
        if model.has_text and text_dim != model.config.text_dim:
            raise ValueError(f"init_from model expects text width {model.config.text_dim}, the encoder gives {text_dim}")
        return model

    def make_stream(self):
        """The endless, resumable batch stream of this rank (it has `skipped`)."""
        return LatentBatches(self.cfg, self.acc.process_index, start=self.state.micro,
                             latent_shape=set_latent_shape(self.latent_info))

    def loss(self, batch: dict) -> torch.Tensor:
        return compute_loss(self.model, batch, self.cfg, self.span, self.text_encoder, self.acc.device, self.objective)

    def make_validator(self):
        from .validation import Validator

        return Validator(self.cfg, self.codec_cfg, self.text_encoder, self.objective)

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.acc.unwrap_model(self.model)

    def _finite_everywhere(self, *values: torch.Tensor) -> torch.Tensor:
        """A device bool: every value is finite on every rank (an all-reduce on the device, no host read)."""
        dev = self.acc.device
        flag = torch.stack([torch.isfinite(torch.as_tensor(v, device=dev)).all() for v in values]).all()
        return self.acc.reduce(flag.float().reshape(1), "sum")[0] == self.acc.num_processes

    def _all_finite(self, *values: torch.Tensor | float) -> bool:
        """True when every value is finite on every rank (a host read: every rank then takes the same branch)."""
        return bool(self._finite_everywhere(*values))

    def _clip_grad_norm(self) -> torch.Tensor | None:
        """Clip and return the total gradient norm, left on the device (DeepSpeed clips inside its step and
        reports it)."""
        if self.is_deepspeed:
            norm = self.model.get_global_grad_norm()
            return None if norm is None else torch.as_tensor(float(norm), device=self.acc.device)
        return self.acc.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)

    @property
    def sync_free(self) -> bool:
        """Whether the step's skip decision stays on the device: fused AdamW skips its own update when its
        `found_inf` tensor is set, so the host never waits for the GPU between steps. DeepSpeed (it steps
        inside the last backward), fp16 loss scaling (accelerate reads the scale), a discriminator (checked per
        micro-batch) and a foreach AdamW decide on the host."""
        return self.fused and not self.is_deepspeed and self.acc.scaler is None and self.discriminator is None

    def _skip(self, what: str, step: int, keys: list[str]) -> None:
        """Count a skipped micro-batch or optimizer step; too many in a row stop the run."""
        st = self.state
        st.nan_skipped += 1
        st.nan_in_row += 1
        if self.acc.is_main_process:
            log.warning("%s at step %d (keys %s): skipped (%d so far)", what, step, keys[:4], st.nan_skipped)
        if st.nan_in_row >= self.cfg.max_nan_in_row:
            raise RuntimeError(f"{st.nan_in_row} non-finite losses or gradients in a row at step {step}; last keys "
                               f"{keys[:8]}. Lower the learning rate or check the data.")

    def _discriminator_step(self, batch: dict) -> None:
        """The adversarial objective's step on this micro-batch, before the generator's: a non-finite loss is
        not back-propagated and non-finite gradients are not applied (on every rank alike)."""
        with self.acc.autocast():
            d_loss = self.discriminator_loss(batch)
        self.last_d_loss = d_loss.item()
        if not self._all_finite(d_loss):
            self._skip("non-finite discriminator loss", self.state.step + 1, batch["key"])
            return
        self.acc.backward(d_loss)
        if self.acc.sync_gradients:  # the window's end: accelerate steps opt_d only here
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.discriminator.parameters() if p.grad is not None])
            if not self._all_finite(norm):
                self.opt_d.zero_grad(set_to_none=True)
                self._skip("non-finite discriminator gradients", self.state.step + 1, batch["key"])
                return
        self.opt_d.step()
        self.opt_d.zero_grad(set_to_none=True)

    def _skip_module_state(self, models, weights, output_dir) -> None:
        """accelerate's save_state pre-hook: the trained module (the first prepared) is not saved again by
        accelerate: RAW_DIR holds its weights once, without frozen modules (a discriminator still is)."""
        if weights:
            weights.pop(0)

    def _load_module_state(self, models, input_dir) -> None:
        """accelerate's load_state pre-hook: the trained module's weights come from RAW_DIR (every trainable
        parameter must be there; frozen ones keep what the module was built with)."""
        models.pop(0)
        state = self.unwrapped.saved_weights(Path(input_dir) / RAW_DIR)
        missing = [n for n in self.weights.names() if n not in state]
        if missing:
            raise ValueError(f"{input_dir}/{RAW_DIR} lacks {len(missing)} trained tensors ({missing[:3]}); is this "
                             "checkpoint from another model?")
        unexpected = self.unwrapped.load_state_dict(state, strict=False).unexpected_keys
        if unexpected:
            raise ValueError(f"{input_dir}/{RAW_DIR} has tensors this model lacks ({unexpected[:3]})")

    def trainable(self) -> list[torch.nn.Parameter]:
        """The parameters the optimizer and the EMA follow (a frozen base model's are left out)."""
        return self.weights.params()

    def ema_weights(self) -> dict[str, torch.Tensor]:
        """The EMA's float32 values by parameter name (under DeepSpeed a collective: every rank calls it)."""
        return self.weights.ema_values(self.ema.shadow_params, partitioned=self.ema_flats is not None)

    def weights_finite(self) -> bool:
        """Every trained weight (and the EMA) is finite, on every rank."""
        finite = all(torch.isfinite(p).all() for p in self.weights.params())
        if self.ema is not None:
            finite = finite and all(torch.isfinite(p).all() for p in self.ema.shadow_params)
        return self._all_finite(torch.tensor(0.0 if finite else float("nan")))

    @contextlib.contextmanager
    def _micro_batch(self, last: bool):
        """One micro-batch of an accumulation window. accelerate is told whether it is the window's last
        (`sync_gradients`): the DeepSpeed engine then marks the accumulation boundary and steps only there,
        and the optimizer wrapper steps only after it. DDP skips the gradient all-reduce until the last one
        (DeepSpeed ZeRO reduces on its own boundary)."""
        self.acc.sync_gradients = last
        with self.acc.no_sync(self.model) if not last and not self.is_deepspeed else contextlib.nullcontext():
            yield

    # ---- the loop -----------------------------------------------------------------------------------
    def step(self) -> dict:
        """One optimizer step: `accumulation` micro-batches, clipping, AdamW, schedule, EMA. Returns the step's
        numbers, left on the device: `_settle` reads them at the next log or checkpoint.

        A non-finite loss (on any rank, in any micro-batch of the window) or gradient norm skips the weights'
        update on every rank; the step still counts, and the schedule and the EMA (of unchanged weights) go on,
        as under a loss scaler. On the sync-free path (`sync_free`) the step reads nothing back from the
        device, so the GPU never waits for the host; the skip is counted when the step is settled."""
        st = self.state
        # DeepSpeed steps inside its last backward, so each loss is checked before it (a host read) and a
        # non-finite one skips its micro-batch alone.
        check_each = self.is_deepspeed
        done = samples = 0
        loss_sum = torch.zeros((), device=self.acc.device)
        frames = torch.zeros((), dtype=torch.long)  # valid latent frames, if the stage has them (host data)
        keys = []
        while done < self.accumulation:
            batch = next(self.batches)
            st.micro += 1
            with self._micro_batch(last=done == self.accumulation - 1):
                if self.discriminator is not None:  # the discriminator steps first, on this micro-batch
                    self._discriminator_step(batch)
                with self.acc.autocast():
                    loss = self.loss(batch)
                finite = not check_each or self._all_finite(loss)
                if finite:
                    self.acc.backward(loss)
            if not finite:
                self._skip("non-finite loss", st.step + 1, batch["key"])
                continue
            done += 1
            loss_sum += loss.detach().float()
            samples += len(batch["key"])
            if "valid" in batch:  # latent stages: (b, n) valid frames
                frames += batch["valid"].sum()
            keys += batch["key"][:8 - len(keys)]  # named in the warning if the step is skipped
        grad_norm = self._clip_grad_norm()
        ok = self._finite_everywhere(loss_sum, *([] if grad_norm is None else [grad_norm]))
        lr = self.scheduler.get_last_lr()[0]  # the rate this step runs at
        if self.sync_free:
            self.optimizer.optimizer.found_inf = (~ok).float()  # fused AdamW: no update, no moment, no step count
            self.optimizer.step()
            del self.optimizer.optimizer.found_inf  # as torch's GradScaler does: a later step() reads none
        elif self.acc.scaler is not None or bool(ok):  # fp16: the loss scaler skips (and lowers its scale) itself
            self.optimizer.step()  # under DeepSpeed a no-op: the engine stepped (or skipped) in backward
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.ema_flats or self.weights.params())
        st.step += 1
        st.samples += samples * self.acc.num_processes
        return {"step": st.step, "ok": ok, "loss_sum": loss_sum, "grad_norm": grad_norm, "micro_batches": done,
                "samples": samples, "frames": frames, "lr": lr, "keys": keys}

    def _settle(self) -> None:
        """Read the pending steps' numbers back (the loop's host read, once per log or checkpoint): count the
        skipped ones (too many in a row stop the run) and keep the others for the log."""
        if not self._pending:
            return
        dev, nan = self.acc.device, float("nan")
        values = torch.stack([torch.stack([s["ok"].float(), s["loss_sum"],
                                           torch.as_tensor(nan if s["grad_norm"] is None else s["grad_norm"], device=dev)])
                              for s in self._pending]).tolist()
        frames = torch.stack([s["frames"] for s in self._pending]).tolist()
        for s, (ok, loss_sum, norm), n in zip(self._pending, values, frames):
            s.update(loss_sum=loss_sum, grad_norm=None if s["grad_norm"] is None else norm, frames=n)
            if ok:
                self.state.nan_in_row = 0
                self._window.append(s)
            else:
                what = ("non-finite loss" if not math.isfinite(loss_sum) else
                        f"non-finite gradient norm ({norm})" if not math.isfinite(norm) else "non-finite loss on another rank")
                self._skip(what, s["step"], s["keys"])
        self._pending = []

    def _log(self) -> None:
        """The window's numbers since the last log: the loss is the mean over every rank's micro-batches."""
        cfg, st = self.cfg, self.state
        self._settle()
        window, now = self._window, time.time()
        elapsed = now - self._last_log
        dev = self.acc.device
        local = [sum(s["loss_sum"] for s in window), sum(s["micro_batches"] for s in window)]
        total_loss, total_micro = self.acc.reduce(torch.tensor(local, dtype=torch.float32, device=dev), "sum").tolist()
        avg = total_loss / max(total_micro, 1)
        samples = sum(s["samples"] for s in window) * self.acc.num_processes
        frames = sum(s["frames"] for s in window) * self.acc.num_processes
        eta = (cfg.steps - st.step) * (now - self._started[0]) / max(1, st.step - self._started[1])
        metrics = {"loss": avg, "samples_per_s": samples / max(elapsed, 1e-9), "nan_skipped": st.nan_skipped,
                   "bad_samples": self.stream.skipped}
        if frames:
            metrics["frames_per_s"] = frames / max(elapsed, 1e-9)
        grad_norm = window[-1]["grad_norm"] if window else None  # the last step's
        if window:
            metrics["lr"] = window[-1]["lr"]
        if grad_norm is not None:
            metrics["grad_norm"] = grad_norm
        if self.discriminator is not None:
            metrics["d_loss"] = self.last_d_loss
        self.acc.log(metrics, step=st.step)
        if self.acc.is_main_process:
            log.info("step %d/%d | loss %.4f | grad %s | lr %s | %.1f samples/s%s | eta %s%s",
                     st.step, cfg.steps, avg, "n/a" if grad_norm is None else f"{grad_norm:.3f}",
                     f"{metrics['lr']:.2e}" if window else "n/a", metrics["samples_per_s"],
                     f" | {metrics['frames_per_s']:.0f} frames/s" if frames else "", timedelta(seconds=int(eta)),
                     f" | skipped {st.nan_skipped} nan, {self.stream.skipped} bad samples"
                     if st.nan_skipped or self.stream.skipped else "")
        self._window, self._last_log = [], now

    def train(self) -> Path:
        cfg, st = self.cfg, self.state
        self._started, self._last_log = (time.time(), st.step), time.time()
        while st.step < cfg.steps:
            self._pending.append(self.step())
            if st.step % cfg.log_every == 0 or st.step == cfg.steps:
                self._log()
            elif len(self._pending) >= SETTLE_EVERY:  # a long log interval still reads back now and then
                self._settle()
            if cfg.validation.every and st.step % cfg.validation.every == 0:
                self.validate()
            if st.step % cfg.save_every == 0 or st.step == cfg.steps:
                self.save()
        self.acc.wait_for_everyone()
        export = self.export() if self.acc.is_main_process else self.out / "export"
        self.acc.wait_for_everyone()
        self.acc.end_training()
        return export

    # ---- checkpoints, export, validation ------------------------------------------------------------
    def save(self) -> Path:
        self._settle()  # the skip counters go into the checkpoint's loop state
        if not self.weights_finite():  # never a checkpoint that `--resume latest` would pick up poisoned
            raise RuntimeError(f"non-finite weights at step {self.state.step}: not saved. Resume from the last "
                               f"checkpoint under {checkpoint_dir(self.out)} with a lower learning rate.")
        started = time.time()
        final = checkpoint_dir(self.out) / f"step-{self.state.step:06d}"
        tmp = final.with_name(final.name + ".tmp")
        if self.acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        self.acc.wait_for_everyone()
        self.acc.save_state(str(tmp))
        master = self.weights.masters()  # a collective under DeepSpeed: every rank takes part
        ema = self.ema_weights() if self.ema is not None else None  # likewise
        self.acc.wait_for_everyone()  # every rank's shard of the state is on disk before the rename
        if self.acc.is_main_process:
            with self.weights.module_holding(master):  # float32 from the master copy, never the bf16 module's rounding
                self.unwrapped.save_pretrained(tmp / RAW_DIR)
            if ema is not None:
                with self.weights.module_holding(ema):
                    self.unwrapped.save_pretrained(tmp / EMA_DIR)
            save_loop_state(tmp, self.state, self.ema)
            save_config(self.cfg, tmp)
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            rotate(self.out, self.cfg.keep_last)
            size = sum(f.stat().st_size for f in final.rglob("*") if f.is_file())
            log.info("saved %s (%.2f GB in %.1f s)", final, size / 1e9, time.time() - started)
        self.acc.wait_for_everyone()
        return final

    def export(self, use_ema: bool = True) -> Path:
        info = {"data_hashes": self.data_hashes, "config_hash": config_hash(self.cfg)}
        if self.last_val_clap is not None:
            info["validation_clap"] = round(self.last_val_clap, 4)
        out = export_bundle(self.cfg, list_checkpoints(self.out)[-1], self.out / "export", self.codec_cfg, use_ema, info)
        log.info("exported %s", out)
        return out

    def validate(self) -> float | None:
        """Rank 0 generates the validation prompts with CFG (EMA weights), scores them with CLAP, saves
        audio and spectrograms; the other ranks wait."""
        ema = self.ema_weights() if self.ema is not None else {}  # a collective under DeepSpeed
        if self.acc.is_main_process:
            if self.validator is None:
                self.validator = self.make_validator()
            params = dict(self.unwrapped.named_parameters())
            with self.weights.module_holding({n: v.to(params[n].dtype) for n, v in ema.items()}):  # in the module's precision
                score = self.validator.run(self.unwrapped, self.state.step, self.out / "validation")
            if score is not None:
                self.last_val_clap = score
                self.acc.log({"val_clap": score}, step=self.state.step)
        self.acc.wait_for_everyone()
        return self.last_val_clap


def run_pretrain(cfg: PretrainConfig, resume: str | None = None) -> Path:
    return Trainer(cfg, resume=resume).train()
