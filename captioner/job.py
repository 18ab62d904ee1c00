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
import os
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
from tqdm.auto import tqdm

from shards import format as fmt
from shards.config import JobFailed, config_hash, save_config
from shards.manifest import ConfigMismatch, done_shards, manifest_path, open_shard_set, write_manifest
from shards.writer import sweep_stale_tmp, write_json_atomic

from .config import CaptionConfig, RayConfig
from .pools import UnitWriter, plan_pools, start_pools
from .sources import load_items, partition
from .worker import CaptionWorker

log = logging.getLogger(__name__)
SUMMARY_NAME = "caption_summary.json"


def _pending_units(out: Path, prefix: str, count: int) -> list[int]:
    return [i for i in range(count) if not (out / (fmt.shard_name(prefix, i) + fmt.STATS_SUFFIX)).exists()]


def unit_hash(items) -> str:
    """The identity of a work unit: a hash of its ordered keys."""
    return hashlib.sha256("\n".join(it.key for it in items).encode()).hexdigest()[:16]


def check_done_units(out: Path, job_hash: str, unit_hashes: list[str]) -> None:
    """Refuse to resume when a finished shard was written by another config or for other clips. Checked
    against each shard's own done marker, so it holds even if manifest.json was deleted."""
    problems = []
    for name, stats in done_shards(out).items():
        i = stats["index"]
        if stats.get("job_hash") != job_hash:
            problems.append(f"{name}: written with config {str(stats.get('job_hash'))[:12]}, this job is {job_hash[:12]}")
        elif i >= len(unit_hashes) or stats.get("unit_hash") != unit_hashes[i]:
            problems.append(f"{name}: its clips are not unit {i} of the corpus now (the source list changed: "
                            f"{len(unit_hashes)} units now)")
        if len(problems) >= 5:
            break
    if problems:
        raise ConfigMismatch(f"{out} holds shards of another job; refusing to resume:\n  " + "\n  ".join(problems)
                             + "\nUse a new output directory, or restore the original config and source.")


def dispatch_units(make_worker, count: int, units, todo, out: Path, extras, on_done, retries: int) -> dict[int, str]:
    """Units over resident Ray actors (any class with process_unit), one unit in flight per actor; a unit
    that fails is retried on a fresh actor if its actor died, then reported."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    workers = [make_worker(k) for k in range(min(count, len(todo)))]
    queue, attempts, failed, running = list(todo), Counter(), {}, {}

    def submit(worker):
        if queue:
            i = queue.pop(0)
            running[worker.process_unit.remote(i, units[i], str(out), extras[i])] = (i, worker)

    for w in workers:
        submit(w)
    while running:
        ready, _ = ray.wait(list(running), num_returns=1)
        i, worker = running.pop(ready[0])
        try:
            on_done(ray.get(ready[0]))
        except (RayTaskError, RayActorError) as e:
            attempts[i] += 1
            if isinstance(e, RayActorError):  # the actor died (OOM, node loss): replace it
                worker = make_worker(len(workers))
            if attempts[i] <= retries:
                log.warning("unit %d failed (attempt %d of %d), retrying: %s", i, attempts[i], retries + 1,
                            str(e).strip().splitlines()[-1])
                queue.append(i)
            else:
                failed[i] = str(e).strip().splitlines()[-1]
                log.error("unit %d failed %d times, giving up: %s", i, attempts[i], failed[i])
        submit(worker)
    return failed


def run_units_in_process(worker, units, todo, out, extras, on_done, retries: int) -> dict[int, str]:
    """Every unit in this process (any worker with process_unit), with the same retry-then-report policy as
    on Ray."""
    failed = {}
    tries = retries + 1
    for i in todo:
        for attempt in range(1, tries + 1):
            try:
                on_done(worker.process_unit(i, units[i], out, extras[i]))
                failed.pop(i, None)
                break
            except Exception as e:  # noqa: BLE001  (reported with its message, as Ray reports a task error)
                failed[i] = f"{type(e).__name__}: {e}"
                log.warning("unit %d failed (attempt %d of %d): %s", i, attempt, tries, failed[i])
        if i in failed:
            log.error("unit %d failed %d times, giving up: %s", i, tries, failed[i])
    return failed


def init_ray(ray_cfg: RayConfig, address: str | None) -> None:
    """Join a cluster (or start a local Ray). Workers get the driver's relevant environment through a
    runtime_env; their own loggers stay at Python's default (warnings), transformers is told to say only errors
    and tqdm is off, so the driver's progress bar is the one progress line. (Ray's `logging_config` is not used:
    it reconfigures the driver's root logger too and silenced the driver's own INFO lines.)"""
    import ray

    if ray.is_initialized():
        return
    env = {k: os.environ[k] for k in ray_cfg.env_vars if k in os.environ}
    env |= {"TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
    kwargs = dict(runtime_env={"env_vars": env}, log_to_driver=True)
    if address:
        ray.init(address=address, **kwargs)
    else:  # embedded local Ray, sized to this machine
        # address="local": always a new embedded instance, never a cluster someone started on this machine
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, **kwargs)


def _run_on_ray(cfg: CaptionConfig, units, todo, out, extras, on_done, address: str | None) -> dict[int, str]:
    import ray

    init_ray(cfg.ray, address)
    cfg_dict = cfg.model_dump(mode="json")
    if cfg.ray.layout == "combined":
        Worker = ray.remote(num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus)(CaptionWorker)
        count = 2 if cfg.ray.workers == "auto" else int(cfg.ray.workers)
        return dispatch_units(lambda k: Worker.remote(cfg_dict), count, units, todo, out, extras, on_done,
                         cfg.ray.max_retries)
    plan = plan_pools(cfg, ray.cluster_resources().get("GPU", 0.0))
    log.info("pools: %d ALM, %d LLM, %d CLAP actors (%g GPUs), %d unit writers", plan.alm, plan.llm, plan.clap,
             plan.gpus(), plan.writers)
    pools = start_pools(cfg, plan)
    Writer = ray.remote(num_cpus=plan.writer_cpus)(UnitWriter)
    try:
        return dispatch_units(lambda k: Writer.remote(cfg_dict, *pools, k), plan.writers, units, todo, out, extras,
                         on_done, cfg.ray.max_retries)
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
    todo = _pending_units(out, cfg.prefix, len(units))
    extras = {i: {"job_hash": job_hash, "unit_hash": hashes[i]} for i in todo}
    log.info("%d clips in %d units; %d already done, %d to do", len(items), len(units), len(units) - len(todo), len(todo))
    bar = tqdm(total=sum(len(units[i]) for i in todo), unit="clip", desc="captioning", disable=not progress)
    timings: Counter[str] = Counter()
    start = time.perf_counter()

    def on_done(result: dict) -> None:
        bar.update(result["rows"])
        timings.update(result.get("timings", {}))

    if todo:
        address = ray_address or cfg.ray.address
        if cfg.ray.workers == 0 and not address:
            failed = run_units_in_process(CaptionWorker(cfg), units, todo, out, extras, on_done, cfg.ray.max_retries)
        else:
            failed = _run_on_ray(cfg, units, todo, out, extras, on_done, address)
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
