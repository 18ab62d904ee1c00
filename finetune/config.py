"""Configs of finetune/: the editing-data job (`capflow edit-data`) and the edit stage (`capflow finetune`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import model_validator

from captioner.clap import ClapConfig
from captioner.config import VLLM_SCHEDULING, RayConfig
from captioner.engines import EngineConfig, SamplingConfig
from pretrain.config import PretrainConfig
from shards.config import Strict
from shards.mix import MixConfig

from .editor import EditSampler


class SplitConfig(Strict):
    """Clips are assigned to one split each; a group takes all its clips from one split, so no clip of a
    test group is ever heard in training. A clip's source split decides where it names one (AudioSet
    `eval` -> test); the rest are split by a hash of the key."""

    valid: float = 0.05
    test: float = 0.05
    test_sources: list[str] = ["eval", "test", "evaluation"]
    valid_sources: list[str] = ["valid", "validation", "val"]


class InstructionConfig(Strict):
    variants: int = 3  # instruction wordings stored per triplet
    paraphrase: int = 0  # extra wordings per triplet written by the LLM (0: templates only)
    target_captions: Literal["template", "llm"] = "template"  # how a mixture's caption is written


class EditDataConfig(Strict):
    inputs: list[str]  # captioned audio shard sets (e.g. AudioSet ALM captions, then AudioCaps human captions)
    output: str = "shards/edit"
    prefix: str = "edit"
    seed: int = 0
    unit_size: int = 64  # groups per work unit = per shard
    groups_per_background: int = 1
    max_groups: int | None = None  # cap on groups (a sample of backgrounds, the same in every run)
    duration: float = 10.0  # backgrounds are cut to this many seconds
    sample_rate: int | None = None  # every group at this rate; None: at its background's rate
    channels: int | None = None  # 1: mono, 2: stereo; None: the background's channels
    background_max_events: int = 3  # RFM-Editing: backgrounds with at most three sound events
    min_background_seconds: float = 5.0  # shorter backgrounds are not used ("in the middle" of 0.5 s means nothing)
    min_event_seconds: float = 0.3  # shorter events (strong-label or detected span) are not used as A or B
    # AudioSet's ontology.json: a label's ancestors and descendants are the same sound (a background with
    # speech gets no "Add male speech"; Music + Guitar is one event). None: labels are compared as strings.
    ontology: str | None = None
    # activity detection of weak-labelled events: blocks this many dB over the clip's floor are the event; a
    # clip whose event spans more than max_event_fraction of it cannot be isolated and is never an A or B
    event_margin_db: float = 10.0
    max_event_fraction: float = 0.8
    batch_groups: int = 16  # groups mixed, CLAP-scored and encoded together: a unit's memory is one batch
    flac_bits: Literal[16, 24] = 24
    splits: SplitConfig = SplitConfig()
    mix: MixConfig = MixConfig()
    instructions: InstructionConfig = InstructionConfig()
    # the label LLM: counts events of clips without labels, paraphrases instructions, writes LLM captions;
    # None: clips without labels are not used and everything is written from templates
    llm: EngineConfig | None = EngineConfig(model="Qwen/Qwen2.5-7B-Instruct", prompts=[],
                                            sampling=SamplingConfig(n=1, temperature=0.7, max_new_tokens=96))
    clap: ClapConfig = ClapConfig()
    ray: RayConfig = RayConfig(workers=0)  # 0: in this process; >0 or ray.address: Ray actors, one CLAP each

    @model_validator(mode="after")
    def _durations_measurable(self) -> EditDataConfig:
        if self.mix.loudness == "lufs" and min(self.min_event_seconds, self.min_background_seconds) < 0.4:
            raise ValueError("mix.loudness lufs measures at least 0.4 s of audio: set min_event_seconds and "
                             "min_background_seconds to 0.4 or more (or use loudness: rms)")
        if self.min_background_seconds > self.duration:
            raise ValueError(f"min_background_seconds {self.min_background_seconds} exceeds duration {self.duration}")
        return self

    def identity(self) -> dict:
        """What defines the output; how it runs (Ray, batch sizes, devices, vLLM scheduling) is left out."""
        data = self.model_dump(mode="json", exclude={"ray": True, "batch_groups": True, "clap": {"text_batch", "device"}})
        if data.get("llm"):
            data["llm"].pop("device")
            data["llm"]["vllm"] = {k: v for k, v in data["llm"]["vllm"].items() if k not in VLLM_SCHEDULING}
        return data

    def resolved(self, base: Path | None = None) -> EditDataConfig:
        """Local paths made absolute (Ray workers do not share the driver's working directory)."""
        base = Path(base or Path.cwd())

        def absolute(p: str) -> str:
            return p if not p or "://" in p or Path(p).is_absolute() else str((base / p).resolve())

        def model_ref(ref: str) -> str:
            return str((base / ref).resolve()) if ref and (base / ref).exists() else ref

        llm = self.llm.model_copy(update={"model": model_ref(self.llm.model)}) if self.llm else None
        return self.model_copy(update={"inputs": [absolute(p) for p in self.inputs], "output": absolute(self.output),
                                       "ontology": absolute(self.ontology) if self.ontology else None,
                                       "llm": llm, "clap": self.clap.model_copy(update={"model": model_ref(self.clap.model)})})


class LoraSpec(Strict):
    """LoRA adapters on the Flan-T5 instruction encoder (RFM-Editing; rank and targets are ours: the paper
    gives none)."""

    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.05
    targets: list[str] = ["q", "k", "v", "o"]  # T5 attention projections


class EditStage(Strict):
    instruction_dropout: float = 0.05  # InstructPix2Pix: 5 % no instruction, 5 % no source (independent draws)
    source_dropout: float = 0.05
    min_clap: float | None = 0.35  # RFM-Editing's read-time filter on both audios of a triplet
    operations: list[Literal["add", "remove", "replace"]] = ["add", "remove", "replace"]
    train_splits: list[str] = ["train"]
    lora: LoraSpec = LoraSpec()
    validation_groups: int = 4  # groups of validation_split edited and CLAP-scored at every validation
    validation_split: str = "valid"  # never the test split, which `capflow edit-eval` reports on
    # RFM-Editing keeps the checkpoint with the best validation CLAP: "best" exports it (the last weights when
    # no validation ran), "last" the final weights
    export: Literal["best", "last"] = "best"
    sampler: EditSampler = EditSampler(steps=25)

    @model_validator(mode="after")
    def _validation_is_held_out(self) -> EditStage:
        if self.validation_split == "test" or self.validation_split in self.train_splits:
            raise ValueError(f"edit.validation_split {self.validation_split!r}: validate on a split that is neither "
                             "trained on nor the test split (`valid`)")
        return self


class FinetuneConfig(PretrainConfig):
    """`capflow finetune --config C`: pretrain's config with stage `edit` (data.shards: edit groups encoded
    with `normalization_from` the T2A bundle; init_from: that bundle, or an editor to continue)."""

    stage: Literal["edit"] = "edit"
    edit: EditStage = EditStage()

    @model_validator(mode="after")
    def _needs_init(self) -> FinetuneConfig:
        if not self.init_from:
            raise ValueError("stage 'edit' starts from a text-to-audio bundle: set init_from to its export")
        return self
