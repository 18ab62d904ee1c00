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
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
from tqdm.auto import tqdm

from shards import format as fmt
from shards.config import JobFailed, config_hash, save_config
from shards.manifest import manifest_path, open_shard_set, write_manifest
from shards.units import (
    check_done_units,
    dispatch_units,
    init_ray,
    pending_units,
    run_units_in_process,
    worker_count,
    write_failed_unit,
)
from shards.writer import sweep_stale_tmp, write_json_atomic

from .config import CaptionConfig, unit_deadline
from .pools import UnitWriter, plan_pools, start_pools
from .sources import load_items, partition
from .worker import CaptionWorker

log = logging.getLogger(__name__)
SUMMARY_NAME = "caption_summary.json"


def unit_hash(items) -> str:
    """The identity of a work unit: a hash of its ordered keys."""
    return hashlib.sha256("\n".join(it.key for it in items).encode()).hexdigest()[:16]


def _run_on_ray(cfg: CaptionConfig, units, todo, out, extras, on_done, on_failed) -> dict[int, str]:
    import ray

    cfg_dict = cfg.model_dump(mode="json")
    deadline = unit_deadline(cfg.ray, cfg.unit_size, cfg.batch_clips)
    if cfg.ray.layout == "combined":
        Worker = ray.remote(num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus)(CaptionWorker)
        count = worker_count(cfg.ray.workers)
        return dispatch_units(lambda k: Worker.remote(cfg_dict), count, units, todo, out, extras, on_done,
                              cfg.ray.max_retries, on_failed, deadline)
    plan = plan_pools(cfg, ray.cluster_resources().get("GPU", 0.0))
    log.info("pools: %d ALM, %d LLM, %d CLAP actors (%g GPUs), %d unit writers", plan.alm, plan.llm, plan.clap,
             plan.gpus(), plan.writers)
    pools = start_pools(cfg, plan)
    Writer = ray.remote(num_cpus=plan.writer_cpus)(UnitWriter)
    try:
        return dispatch_units(lambda k: Writer.remote(cfg_dict, *pools, k), plan.writers, units, todo, out, extras,
                              on_done, cfg.ray.max_retries, on_failed, deadline)
    finally:
        for handle in (h for pool in pools for h in pool):
            ray.kill(handle)


def run_caption_job(cfg: CaptionConfig, ray_address: str | None = None, progress: bool = True) -> dict:
    """Caption the corpus into `cfg.output`; returns the summary (also written as caption_summary.json).
    Every path is resolved here, on the driver, before anything is shipped to a worker."""
    cfg = cfg.resolved()
    items = load_items(cfg.source)
    units = partition(items, cfg.unit_size)
    hashes = [unit_hash(u) for u in units]
    out = Path(cfg.output)
    address = ray_address or cfg.ray.address
    in_process = cfg.ray.workers == 0 and not address
    if not in_process:  # a cluster that cannot be joined is one line, before anything is written
        init_ray(cfg.ray.env_vars, address)
    identity = cfg.identity()
    job_hash = config_hash(identity)
    partitioning = {"items": len(items), "unit_size": cfg.unit_size, "units": len(units), "order": "sorted by key",
                    "unit_hashes": hashes}
    if manifest_path(out).exists():
        open_shard_set(out, identity, partitioning=partitioning)  # refuses naming the config keys that changed
    check_done_units(out, job_hash, hashes)  # the done markers decide, with or without a manifest
    open_shard_set(out, identity, partitioning=partitioning)
    save_config(cfg, out)
    if swept := sweep_stale_tmp(out):
        log.info("removed %d temporary files of killed writers", swept)
    todo = pending_units(out, cfg.prefix, len(units))
    extras = {i: {"job_hash": job_hash, "unit_hash": hashes[i]} for i in todo}
    log.info("%d clips in %d units; %d already done, %d to do", len(items), len(units), len(units) - len(todo), len(todo))
    bar = tqdm(total=sum(len(units[i]) for i in todo), unit="clip", desc="captioning", disable=not progress)
    timings: Counter[str] = Counter()
    start = time.perf_counter()

    def on_done(result: dict) -> None:
        bar.update(result["rows"])
        timings.update(result.get("timings", {}))

    def on_failed(i: int, error: str) -> None:  # every clip of a unit that exhausted its retries: a failed row
        on_done(write_failed_unit(out, cfg.prefix, i, [(it.key, it.meta()) for it in units[i]], error, extras[i]))

    if todo:
        if in_process:
            failed = run_units_in_process(CaptionWorker(cfg), units, todo, out, extras, on_done, cfg.ray.max_retries,
                                          on_failed)
        else:
            failed = _run_on_ray(cfg, units, todo, out, extras, on_done, on_failed)
    else:
        failed = {}
    bar.close()
    manifest = write_manifest(out, partitioning=partitioning)
    summary = summarize(out, manifest, failed, time.perf_counter() - start, dict(timings))
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
