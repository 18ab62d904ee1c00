"""The captioning job: corpus -> deterministic work units -> shards, on a Ray cluster or a laptop.

Each unit i becomes shard i. Workers are Ray actors that load the models once and stay resident; they
ask for GPUs on a cluster and for fractional CPUs locally (whole CPUs on a 2-core machine would starve
Ray's own tasks). A unit that fails is retried, then reported; a rerun skips units whose shard is done;
a rerun with another config refuses to start and names the keys that changed.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
from tqdm.auto import tqdm

from shards import format as fmt
from shards.config import save_config
from shards.manifest import open_shard_set, write_manifest
from shards.writer import write_json_atomic

from .config import CaptionConfig
from .sources import load_items, partition
from .worker import CaptionWorker

log = logging.getLogger(__name__)
SUMMARY_NAME = "caption_summary.json"


def _pending_units(out: Path, prefix: str, count: int) -> list[int]:
    return [i for i in range(count) if not (out / (fmt.shard_name(prefix, i) + fmt.STATS_SUFFIX)).exists()]


def _run_in_process(cfg: CaptionConfig, units, todo, out, on_done) -> dict[int, str]:
    """Every unit in this process, with the same retry-then-report policy as on Ray."""
    worker, failed = CaptionWorker(cfg), {}
    tries = cfg.ray.max_retries + 1
    for i in todo:
        for attempt in range(1, tries + 1):
            try:
                on_done(worker.process_unit(i, units[i], out))
                failed.pop(i, None)
                break
            except Exception as e:  # noqa: BLE001  (reported with its message, as Ray reports a task error)
                failed[i] = f"{type(e).__name__}: {e}"
                log.warning("unit %d failed (attempt %d of %d): %s", i, attempt, tries, failed[i])
        if i in failed:
            log.error("unit %d failed %d times, giving up: %s", i, tries, failed[i])
    return failed


def _run_on_ray(cfg: CaptionConfig, units, todo, out, on_done, address: str | None) -> dict[int, str]:
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=True)
        else:  # embedded local Ray, sized to this machine
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    Worker = ray.remote(num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus)(CaptionWorker)
    cfg_dict = cfg.model_dump(mode="json")
    workers = [Worker.remote(cfg_dict) for _ in range(min(cfg.ray.workers, len(todo)))]
    queue, attempts, failed, running = list(todo), Counter(), {}, {}

    def submit(worker):
        if queue:
            i = queue.pop(0)
            running[worker.process_unit.remote(i, units[i], str(out))] = (i, worker)

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
                worker = Worker.remote(cfg_dict)
            if attempts[i] <= cfg.ray.max_retries:
                log.warning("unit %d failed (attempt %d of %d), retrying: %s", i, attempts[i], cfg.ray.max_retries + 1,
                            str(e).splitlines()[0])
                queue.append(i)
            else:
                failed[i] = str(e).strip().splitlines()[-1]
                log.error("unit %d failed %d times, giving up: %s", i, attempts[i], failed[i])
        submit(worker)
    return failed


def run_caption_job(cfg: CaptionConfig, ray_address: str | None = None, progress: bool = True) -> dict:
    """Caption the corpus into `cfg.output`; returns the summary (also written as caption_summary.json)."""
    items = load_items(cfg.source)
    units = partition(items, cfg.unit_size)
    out = Path(cfg.output)
    open_shard_set(out, cfg.identity(), partitioning={"items": len(items), "unit_size": cfg.unit_size,
                                                      "units": len(units), "order": "sorted by key"})
    save_config(cfg, out)
    todo = _pending_units(out, cfg.prefix, len(units))
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
            failed = _run_in_process(cfg, units, todo, out, on_done)
        else:
            failed = _run_on_ray(cfg, units, todo, out, on_done, address)
    else:
        failed = {}
    bar.close()
    manifest = write_manifest(out)
    summary = summarize(out, manifest, failed, time.perf_counter() - start, dict(timings))
    write_json_atomic(out / SUMMARY_NAME, summary)
    return summary


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
