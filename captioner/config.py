"""The captioning job's config (`capflow caption --config configs/caption/NAME.yaml`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from shards.config import Strict

from .clap import ClapConfig
from .engines import EngineConfig
from .labels import LabelsConfig
from .sources import SourceConfig

# vLLM engine arguments that change how fast or in how much memory a model runs, not what it writes.
VLLM_SCHEDULING = {"gpu_memory_utilization", "tensor_parallel_size", "pipeline_parallel_size", "max_num_seqs",
                   "max_num_batched_tokens", "enforce_eager", "swap_space", "cpu_offload_gb", "block_size",
                   "enable_prefix_caching", "enable_chunked_prefill", "disable_log_stats", "distributed_executor_backend"}


class PoolConfig(Strict):
    """One actor pool of the `pools` layout."""

    actors: int | Literal["auto"] = "auto"
    num_gpus: float = 0.0  # per actor; 0 on a GPU cluster: the engine's tensor_parallel_size (CLAP: 0.25)
    num_cpus: float = 0.25


class RayConfig(Strict):
    address: str | None = None  # None: an embedded local Ray; "auto" or "ray://host:port" joins a cluster
    # pools: separate ALM / label-LLM / CLAP actor pools fed by CPU unit writers (clusters, vLLM);
    # combined: each actor holds every model and writes whole units (one machine, transformers engines)
    layout: Literal["pools", "combined"] = "pools"
    workers: int | Literal["auto"] = "auto"  # unit writers (pools) or combined actors; auto: the GPU count
    # (2 on a CPU machine); 0 runs everything in this process without Ray
    num_cpus: float = 0.5  # per unit writer / combined actor; fractional so local reading tasks are never starved
    num_gpus: float = 0.0  # per combined actor
    alm: PoolConfig = PoolConfig()
    llm: PoolConfig = PoolConfig()
    clap: PoolConfig = PoolConfig()
    max_retries: int = 2  # a failed unit is retried this often, then written as failed rows and reported
    max_restarts: int = 2  # Ray restarts a crashed engine/CLAP actor this often (where the cluster has room)
    # seconds an engine or CLAP call may take before its actor counts as dead (and is restarted); None: sized
    # from batch_clips (`call_deadline`). A unit's deadline is derived from it.
    call_timeout: float | None = None
    start_timeout: float = 1800.0  # seconds an actor may take to load its model (its first call)
    # environment variables handed to every worker (runtime_env), when set on the driver
    env_vars: list[str] = ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "HF_TOKEN",
                           "HF_ENDPOINT", "TOKENIZERS_PARALLELISM", "VLLM_USE_V1"]


def call_deadline(ray: RayConfig, batch_clips: int) -> float:
    """Seconds one engine/CLAP call on `batch_clips` clips may take: 2 min + 30 s per clip unless set (a 7B ALM
    writing 20 samples decodes about a clip per second on one GPU, so this leaves an order of magnitude)."""
    return ray.call_timeout if ray.call_timeout is not None else 120.0 + 30.0 * batch_clips


def unit_deadline(ray: RayConfig, unit_size: int, batch_clips: int) -> float:
    """Seconds a whole unit may take: model loading, then three calls (ALM, LLM, CLAP) per chunk."""
    chunks = -(-unit_size // max(1, batch_clips))
    return ray.start_timeout + 3 * chunks * call_deadline(ray, batch_clips)


class CaptionConfig(Strict):
    source: SourceConfig = SourceConfig()
    output: str = "shards/audio"
    prefix: str = "audio"
    unit_size: int = 64  # clips per work unit = per shard
    # units hold a seeded permutation of the keys (shuffle before sharding, as WebDataset advises: a folder laid
    # out by class would otherwise give shards of one class each); null keeps the keys' sorted order
    shuffle_seed: int | None = 0
    batch_clips: int = 64  # clips handed to the engines at once (vLLM batches their n samples together)
    seed: int = 0
    max_seconds: float = 30.0  # audio the ALM hears (Qwen2-Audio's encoder takes up to 30 s)
    alm: EngineConfig | None = EngineConfig()
    labels: LabelsConfig = LabelsConfig()
    clap: ClapConfig = ClapConfig()
    ray: RayConfig = RayConfig()

    def identity(self) -> dict:
        """What defines the output (models, prompts, sampling, seeds, thresholds, the source): a resume must
        match it. How the job runs (Ray layout, batch sizes, devices, vLLM memory and parallelism) is left
        out, so an operator can retune a job that ran out of memory and resume it."""
        data = self.model_dump(mode="json", exclude={"ray": True, "batch_clips": True,
                                                     "clap": {"text_batch", "device"}})
        for engine in (data.get("alm"), data["labels"]["engine"]):
            if engine:
                engine.pop("device")
                # which requests share a decode changes which random draws a sample gets, not its distribution:
                # an operator may lower it after running out of memory and resume
                engine.pop("clips_per_decode")
                engine.pop("decode")  # the KV cache's kind: the same samples (tests/test_captioner.py)
                engine["vllm"] = {k: v for k, v in engine["vllm"].items() if k not in VLLM_SCHEDULING}
        return data

    def resolved(self, base: Path | None = None) -> CaptionConfig:
        """This config with every local path made absolute against `base` (the driver's working directory),
        so Ray workers, whose working directory is the head's, read and write the same files. Model
        references that name an existing local directory become absolute too; hub ids stay as they are."""
        base = Path(base or Path.cwd())

        def absolute(p: str) -> str:
            return p if not p or "://" in p or Path(p).is_absolute() else str((base / p).resolve())

        def model_ref(ref: str) -> str:
            return str((base / ref).resolve()) if ref and (base / ref).exists() else ref

        src = self.source
        source = src.model_copy(update={
            "audio_dir": absolute(src.audio_dir), "segments": [absolute(p) for p in src.segments],
            "strong": [absolute(p) for p in src.strong],
            **{k: absolute(getattr(src, k)) for k in ("class_labels", "ontology", "manifest") if getattr(src, k)}})
        alm = self.alm.model_copy(update={"model": model_ref(self.alm.model)}) if self.alm else None
        engine = self.labels.engine
        labels = self.labels.model_copy(update={"engine": engine.model_copy(update={"model": model_ref(engine.model)})})
        clap = self.clap.model_copy(update={"model": model_ref(self.clap.model)})
        return self.model_copy(update={"source": source, "output": absolute(self.output), "alm": alm,
                                       "labels": labels, "clap": clap})
