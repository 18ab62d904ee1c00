"""The captioning job's config (`capflow caption --config configs/caption/NAME.yaml`)."""

from __future__ import annotations

from shards.config import Strict

from .clap import ClapConfig
from .engines import EngineConfig
from .labels import LabelsConfig
from .sources import SourceConfig


class RayConfig(Strict):
    address: str | None = None  # None: an embedded local Ray; "auto" or "ray://host:port" joins a cluster
    workers: int = 1  # resident model actors; 0 runs everything in this process without Ray
    num_cpus: float = 0.5  # per actor; fractional so local reading tasks are never starved
    num_gpus: float = 0.0  # per actor on a cluster (fractions allowed when models share a GPU)
    max_retries: int = 2  # a failed unit is retried this often, then reported


class CaptionConfig(Strict):
    source: SourceConfig = SourceConfig()
    output: str = "shards/audio"
    prefix: str = "audio"
    unit_size: int = 64  # clips per work unit = per shard
    batch_clips: int = 64  # clips handed to the engines at once (vLLM batches their n samples together)
    seed: int = 0
    max_seconds: float = 30.0  # audio the ALM hears (Qwen2-Audio's encoder takes up to 30 s)
    alm: EngineConfig | None = EngineConfig()
    labels: LabelsConfig = LabelsConfig()
    clap: ClapConfig = ClapConfig()
    ray: RayConfig = RayConfig()

    def identity(self) -> dict:
        """The part of the config that defines the output; how it is scheduled (ray) may change on resume."""
        return self.model_dump(mode="json", exclude={"ray"})
