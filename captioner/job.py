"""The captioning job: corpus -> deterministic work units -> shards, on a Ray cluster or a laptop.

Each unit i becomes shard i. Layout `pools` (captioner/pools.py): ALM, label-LLM and CLAP actor pools on
GPUs, fed by CPU unit writers; layout `combined`: each actor holds every model; `ray.workers: 0`: in this
process. Actors load their models once and stay resident; they ask for GPUs on a cluster and for fractional
CPUs locally (whole CPUs on a 2-core machine would starve Ray's own tasks). A unit that fails is retried,
then reported; a rerun skips units whose shard is done; a rerun whose identity (config, or the clips of a
unit) differs refuses to start and names what changed.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from shards import format as fmt
from shards.config import JobFailed
from shards.faults import dispatch_units
from shards.units import run_unit_job, worker_count
from shards.writer import write_json_atomic

from .config import CaptionConfig, unit_deadline
from .pools import UnitWriter, plan_pools, start_pools
from .sources import load_items, partition
from .worker import CaptionWorker

log = logging.getLogger(__name__)
SUMMARY_NAME = "caption_summary.json"


def unit_hash(items) -> str:
    """The identity of a work unit: a hash of its ordered keys."""
    return hashlib.sha256("\n".join(it.key for it in items).encode()).hexdigest()[:16]


def _run_on_ray(cfg: CaptionConfig, units, out, report, todo, extras, on_done, on_failed) -> dict[int, str]:
    import ray

    cfg_dict = cfg.model_dump(mode="json")
    deadline = unit_deadline(cfg.ray, cfg.unit_size, cfg.batch_clips)
    if cfg.ray.layout == "combined":
        Worker = ray.remote(num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus)(CaptionWorker)
        count = worker_count(cfg.ray.workers)
        return dispatch_units(lambda k: Worker.remote(cfg_dict), count, units, todo, out, extras, on_done,
                              cfg.ray.max_retries, on_failed, deadline, report=report)
    plan = plan_pools(cfg, ray.cluster_resources().get("GPU", 0.0))
    log.info("pools: %d ALM, %d LLM, %d CLAP actors (%g GPUs), %d unit writers", plan.alm, plan.llm, plan.clap,
             plan.gpus(), plan.writers)
    pools = start_pools(cfg, plan)
    Writer = ray.remote(num_cpus=plan.writer_cpus)(UnitWriter)
    try:
        return dispatch_units(lambda k: Writer.remote(cfg_dict, *pools, k), plan.writers, units, todo, out, extras,
                              on_done, cfg.ray.max_retries, on_failed, deadline, report=report)
    finally:
        for handle in (h for pool in pools for h in pool):
            ray.kill(handle)


def plan_units(cfg: CaptionConfig) -> tuple[list, list[list], list[str], dict]:
    """(items, units, unit hashes, partitioning): the source's items in key order, or in a permutation seeded
    by `shuffle_seed` (deterministic; the seed is part of the job's identity), cut into units of `unit_size`."""
    items = load_items(cfg.source)
    order = "sorted by key"
    if cfg.shuffle_seed is not None:
        random.Random(cfg.shuffle_seed).shuffle(items)
        order = f"keys sorted, then permuted with seed {cfg.shuffle_seed}"
    units = partition(items, cfg.unit_size)
    hashes = [unit_hash(u) for u in units]
    return items, units, hashes, {"items": len(items), "unit_size": cfg.unit_size, "units": len(units),
                                  "order": order, "unit_hashes": hashes}


def run_caption_job(cfg: CaptionConfig, ray_address: str | None = None, progress: bool = True) -> dict:
    """Caption the corpus into `cfg.output`; returns the summary (also written as caption_summary.json).
    Every path is resolved here, on the driver, before anything is shipped to a worker."""
    cfg = cfg.resolved()
    items, units, hashes, partitioning = plan_units(cfg)
    out, report = Path(cfg.output), Counter()
    manifest, failed, timings, seconds = run_unit_job(
        cfg, ray_address, cfg.identity(), partitioning, units, hashes,
        rows=lambda i: [(it.key, it.meta()) for it in units[i]], local_worker=lambda: CaptionWorker(cfg),
        on_ray=lambda *run: _run_on_ray(cfg, units, out, report, *run), plan=f"{len(items)} clips",
        desc="captioning", progress=progress)
    summary = summarize(out, manifest, failed, seconds, timings) | {"faults": dict(report)}
    write_json_atomic(out / SUMMARY_NAME, summary)
    if summary["ok"] == 0:
        raise NoClipsCaptioned(f"no clip was captioned into {out}: statuses {summary['failures'] or '{}'}, failed "
                               f"units {len(failed)}; see {out / SUMMARY_NAME} and the parquet sidecars' errors")
    return summary


class NoClipsCaptioned(JobFailed):
    """A job ended without a single ok clip (the exit status says so; the summary says why)."""


def summarize(out: Path, manifest: dict, failed_units: dict[int, str], seconds: float, timings: dict) -> dict:
    status: Counter[str] = Counter()
    kept = candidates = 0
    for shard in manifest["shards"]:
        table = pq.read_table(out / (shard["shard"] + fmt.SIDECAR_SUFFIX), columns=["status", "captions", "num_candidates"])
        status.update(table.column("status").to_pylist())
        kept += sum(len(c) for c in table.column("captions").to_pylist())
        candidates += sum(table.column("num_candidates").to_pylist())
    return {"clips": sum(status.values()), "ok": status.get(fmt.STATUS_OK, 0), "captions_kept": kept,
            "candidates": candidates, "failures": {k: v for k, v in status.items() if k != fmt.STATUS_OK},
            "failed_units": {str(k): v for k, v in failed_units.items()}, "shards": manifest["num_shards"],
            "seconds": round(seconds, 2), "stage_seconds": {k: round(v, 3) for k, v in timings.items()}}
