"""The separation training config: pretrain's config with stage `query` (Hybrid-Sep stage 1) or `separator`
(stage 2, ACT), and a `separation` section."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from pretrain.config import PretrainConfig, ValidationConfig
from shards.config import Strict


class ACTConfig(Strict):
    """Adversarial consistent training (Algorithm 1). The consistency term's noise level and weight follow
    EMA-style schedules over the step k: σ(k) = σ_min + (σ_max − σ_min)·decay^k, λ(k) = λ_max·(1 − decay^k)."""

    l1: float = 1.0  # λ_L1 (paper: 1)
    adversarial: float = 1.0  # 0: no discriminator (an ablation, and fast CPU tests)
    consistency: float = 1.0  # λ_max
    sigma_max: float = 0.5
    sigma_min: float = 0.02
    decay: float = 0.999
    disc_ffts: list[int] = [128, 256, 512]  # multi-scale STFT discriminator (44.1 kHz: [512, 1024, 2048])
    disc_channels: int = 16
    disc_lr: float = 1e-4
    denoiser: bool = True  # False: the "w/o CD" ablation


class SeparationSection(Strict):
    separator: str = "tiny"  # preset: tiny | paper
    query_model: str = "tiny"
    # Hybrid-Sep §2.1 reads "the audio embedding ... and the frame-wise acoustic features are achieved through a
    # T-CLAP audio encoder and a feature extractor": the mixture's CLAP audio embedding is a query-model input
    # beside its frames and the text (our reading; false: the ablation without it)
    query_mixture_embedding: bool = True
    sample_rate: int = 16000  # paper: 44.1 kHz (comparisons at 16 kHz)
    chunk: float = 4.0  # seconds per training example (paper: 10)
    clap_model: str = "laion/larger_clap_general"
    ssl: str = "none"  # a transformers audio encoder (hub id or directory), or none
    one_stage: bool = False  # condition the separator on the CLAP text embedding (the paper's "1 stage" row)
    query_from: str | None = None  # stage separator: the stage-query export the bundle uses for text queries
    caption_prob: float = 0.5  # share of caption mixtures (the rest: keyword mixtures)
    # AudioSet's ontology.json: no source of a mixture has a label related to the target's (Music vs Guitar);
    # None: labels are compared as strings
    ontology: str | None = None
    crop: Literal["random", "start"] = "random"  # where a training chunk is cut from a longer clip
    sources: tuple[int, int] = (2, 4)  # sources per keyword mixture (caption mixtures: 2)
    ratio_db: tuple[float, float] = (-20.0, 20.0)  # target vs rest energy ratio, uniform
    pool: int = 4  # decoded chunks drawn per mixture of a batch
    act: ACTConfig = ACTConfig()


class SeparationConfig(PretrainConfig):
    stage: Literal["query", "separator"] = "separator"
    separation: SeparationSection = SeparationSection()
    # the loop's validation generates text-to-audio prompts; a separator is validated on held-out mixtures with
    # `capflow separate --test-set` and `capflow evaluate` (SDRi), so the key is off and refused when set
    validation: ValidationConfig = ValidationConfig(every=0)

    @model_validator(mode="after")
    def _check_separation(self) -> SeparationConfig:
        if self.validation.every:
            raise ValueError(f"validation.every: {self.validation.every} would be ignored: separation stages are "
                             "validated with `capflow separate --test-set` + `capflow evaluate`; set validation.every: 0")
        s = self.separation
        if not 2 <= s.sources[0] <= s.sources[1]:
            raise ValueError(f"separation.sources {s.sources}: need 2 <= min <= max")
        return self
