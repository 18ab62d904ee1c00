"""The pretraining config: one typed config for every stage (`stage` is a value, not a script)."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from shards.config import Strict

from .pipeline import SamplerDefaults


class ModelConfig(Strict):
    preset: str = "tiny"  # tiny | small | dit-l | dit-xl (ignored with init_from)
    adaln: Literal["sola", "full", "single"] | None = None  # None: the preset's
    long_skip: bool | None = None
    gradient_checkpointing: bool = False
    # torch.compile the trained module (1.54x the eager dit-l step on an H100, issue #22); the first steps
    # then compile (minutes at dit-l). Off by default: CPUs gain little and pay the compile time.
    compile: bool = False


class TextEncoderSpec(Strict):
    pretrained: str = "google/flan-t5-large"
    max_length: int = 100  # EzAudio: Flan-T5 padded to 100 tokens
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class DataConfig(Strict):
    shards: list[str] = []  # latent shard-set directories (or URLs / brace patterns)
    micro_batch_size: int = 4  # per device per forward
    num_workers: int = 2
    shuffle: int = 1000
    min_clap: float | None = None  # read-time caption filter (None: the captions the captioner kept)
    top_k: int | None = None
    caption_dropout: float = 0.1  # EzAudio: 10 % empty captions (classifier-free guidance)
    segment_steps: int = 1000  # the stream is re-seeded every this many batches; resume skips < this many
    strict: bool = False  # raise on a bad sample instead of counting and skipping it
    holdout_split: str | None = None  # samples of this split (metadata `split`, e.g. eval) are never trained on


class MaskingConfig(Strict):
    span_seconds: float = 0.2  # EzAudio §2.3: minimum masked span
    ratio: tuple[float, float] = (0.25, 1.0)  # masked fraction, drawn per sample
    full_mask_prob: float = 0.0  # stage align/sft: 0.75 (EzAudio §2.3)


class FlowConfig(Strict):
    timesteps: Literal["logit_normal", "uniform"] = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0


class OptimConfig(Strict):
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0  # on weight matrices only: not norms, biases, mask_embed, AdaLN tables (EzAudio)
    eps: float = 1e-8
    warmup_steps: int = 1000
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    # AdamW's implementation: "fused" (one kernel per step, GPUs and CPUs; it skips a non-finite step on the device,
    # so the loop never waits for the GPU), "foreach" (multi-tensor; each step's skip is decided on the host), or
    # "auto" (fused)
    implementation: Literal["auto", "fused", "foreach"] = "auto"


class EMAConfig(Strict):
    """diffusers' EMAModel. `decay` is a cap: the decay used at optimizer step s is min(decay, w(s)) with the
    warmup w: "ratio" (1 + s) / (10 + s), which reaches 0.999 after ~9 k steps and 0.9999 after ~90 k;
    "power" 1 − (1 + s / inv_gamma)^−power (power 2/3 reaches 0.999 after ~31 k steps, 3/4 suits runs
    under 100 k steps). update_after_step: steps before the EMA starts following the weights."""

    enabled: bool = True
    decay: float = 0.999
    warmup: Literal["ratio", "power"] = "ratio"
    inv_gamma: float = 1.0
    power: float = 2 / 3
    update_after_step: int = 0


class ValidationConfig(Strict):
    every: int = 1000  # steps; 0 turns validation off
    prompts: list[str] = ["A dog barks twice in a quiet room.", "Rain falls while thunder rumbles in the distance."]
    clap_model: str | None = "laion/larger_clap_general"  # None: no CLAP scoring
    sampler: SamplerDefaults = SamplerDefaults(steps=25)
    seed: int = 0


class PretrainConfig(Strict):
    stage: Literal["mask", "align", "sft"] = "mask"
    output_dir: str = "runs/pretrain"
    init_from: str | None = None  # an exported bundle of the previous stage
    model: ModelConfig = ModelConfig()
    text_encoder: TextEncoderSpec = TextEncoderSpec()
    data: DataConfig = DataConfig()
    masking: MaskingConfig = MaskingConfig()
    flow: FlowConfig = FlowConfig()
    optim: OptimConfig = OptimConfig()
    ema: EMAConfig = EMAConfig()
    validation: ValidationConfig = ValidationConfig()
    steps: int = 100_000
    batch_size: int = 128  # global: micro_batch_size × processes × gradient accumulation
    seed: int = 0
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # auto: bf16 on GPUs, fp32 on CPU
    deepspeed: str | None = None  # a DeepSpeed JSON (batch/optimizer fields "auto": this config owns them)
    log_every: int = 10
    save_every: int = 1000
    keep_last: int = 3
    max_nan_in_row: int = 10  # skipped steps (non-finite loss or gradient) in a row that stop the run; seen at logs
    tensorboard: bool = True
    # model card (Hub metadata) of the export
    license: str = "apache-2.0"  # a Hub license id
    datasets: list[str] = []  # Hub ids of the training data, when it is published

    @model_validator(mode="after")
    def _check(self) -> PretrainConfig:
        from shards.card import LICENSES

        if self.license not in LICENSES:
            raise ValueError(f"license {self.license!r} is not a Hub license id; use one of {', '.join(LICENSES)}")
        if self.stage == "mask" and self.masking.full_mask_prob:
            raise ValueError("masking.full_mask_prob is for stages align/sft (a fully masked sample without text "
                             "has nothing to learn from); set it to 0 for stage mask")
        if self.stage in ("align", "sft") and not self.init_from:
            raise ValueError(f"stage {self.stage!r} starts from the previous stage: set init_from to its export")
        if not self.data.shards:
            raise ValueError("data.shards is empty: give the latent shard set(s) made by `capflow encode`")
        if self.batch_size % self.data.micro_batch_size:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of data.micro_batch_size "
                             f"{self.data.micro_batch_size}")
        return self

    def accumulation(self, processes: int) -> int:
        """Gradient accumulation steps for `processes`; fails before any work if the batch does not divide."""
        per_step = self.data.micro_batch_size * processes
        if self.batch_size % per_step:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by micro_batch_size × processes = "
                             f"{self.data.micro_batch_size} × {processes}; change one of them")
        return self.batch_size // per_step
