"""Work units into shards, on a Ray cluster or in this process: the machinery every unit job shares
(captioning, edit-data), so each gets the same fault tolerance.

- `init_ray`: join a cluster or start a local Ray; a cluster that cannot be joined is one line, raised before
  the job writes anything.
- the failure policy (actor pools, unit dispatch on Ray, which errors are the machine's) is `faults.py`'s;
- `run_units_in_process`: its retry-then-report policy in this process (no infrastructure to fail).
- `run_unit_job`: a job's frame around them: refuse a resume of another job, run the pending units with a
  progress bar, write their failures as rows, then the manifest.
- `check_done_units`: a rerun refuses shards of another job or of other items.
- `pending_units` / `write_failed_unit`: a unit is done when its stats file exists and it did not fail; a
  failed unit's shard holds one `failed` row per input item (FORMAT.md: one row per input item, failures
  included) and is redone by a rerun.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from pathlib import Path

from tqdm.auto import tqdm

from . import format as fmt
from .config import JobFailed, config_hash, save_config
from .manifest import ConfigMismatch, done_shards, manifest_path, open_shard_set, write_manifest
from .writer import ShardWriter, sweep_stale_tmp

log = logging.getLogger(__name__)


class ClusterUnavailable(JobFailed):
    """The Ray cluster named by --ray-address cannot be joined."""


def init_ray(env_vars: list[str], address: str | None) -> None:
    """Join a cluster (or start a local Ray). Workers get the driver's `env_vars` through the job's runtime_env;
    their own loggers stay at Python's default (warnings), transformers says only errors and tqdm is off, so the
    driver's progress bar is the one progress line. (Ray's `logging_config` is not used: it reconfigures the
    driver's root logger too and silenced the driver's own INFO lines.)"""
    import ray

    if ray.is_initialized():
        return
    env = {k: os.environ[k] for k in env_vars if k in os.environ}
    env |= {"TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
    kwargs = dict(runtime_env={"env_vars": env}, log_to_driver=True)
    if not address:  # embedded local Ray, sized to this machine; "local": never a cluster started by someone else
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, **kwargs)
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if host and port.isdigit():  # Ray itself retries an unreachable head for minutes before it says so
        import socket

        try:
            socket.create_connection((host, int(port)), timeout=10).close()
        except OSError as e:
            raise ClusterUnavailable(f"cannot join the Ray cluster at {address}: {e.strerror or e}. Check the address "
                                     "(the head's `ray start --head` prints it) and that this machine reaches it") from None
    try:
        ray.init(address=address, **kwargs)
    except Exception as e:  # noqa: BLE001  (ConnectionError, auth and version errors: one line either way)
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ClusterUnavailable(
            f"cannot join the Ray cluster at {address}: {reason}. Check the address (the head's `ray start --head` "
            "prints it); a head with token authentication (RAY_AUTH_MODE=token) needs its token here too "
            "(RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH), a head without it RAY_AUTH_MODE=disabled here") from None


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


def worker_count(workers: int | str, cpu_default: int = 2) -> int:
    """Workers for `ray.workers`: "auto" is one per GPU of the cluster (Ray must be initialised), or
    `cpu_default` on a cluster without GPUs; a number is itself."""
    if workers != "auto":
        return max(1, int(workers))
    import ray

    return int(ray.cluster_resources().get("GPU", 0)) or cpu_default


def pending_units(out: Path, prefix: str, count: int) -> list[int]:
    """Units to (re)do: no done marker, or a marker of a unit that failed after its retries (its shard of
    failed rows is removed here, so that the rerun's writer can commit)."""
    todo = []
    for i in range(count):
        name = fmt.shard_name(prefix, i)
        stats = out / (name + fmt.STATS_SUFFIX)
        if stats.exists():
            import json

            if not json.loads(stats.read_text()).get("failed_unit"):
                continue
            for suffix in (fmt.STATS_SUFFIX, fmt.TAR_SUFFIX, fmt.SIDECAR_SUFFIX):  # the done marker first
                (out / (name + suffix)).unlink(missing_ok=True)
        todo.append(i)
    return todo


def write_failed_unit(out: Path, prefix: str, index: int, rows: list[tuple[str, dict]], error: str,
                      extra_stats: dict | None = None) -> dict:
    """Shard `index` as one `failed` row per input item (key, metadata) with the unit's last error."""
    with ShardWriter(out, prefix, index, extra_stats={**(extra_stats or {}), "failed_unit": error}) as writer:
        for key, meta in rows:
            writer.add_failure(key, "failed", f"unit failed after its retries: {error}", meta)
    return writer.stats


def run_units_in_process(worker, units, todo, out, extras, on_done, retries: int, on_failed=None) -> dict[int, str]:
    """Every unit in this process (any worker with process_unit), with the same retry-then-report policy as
    on Ray (shards/faults.py): a unit that failed on its input is written as failed rows; one that failed for
    the machine (out of memory, a full disk) is left pending, with no shard, for the rerun."""
    from .faults import is_infrastructure

    failed = {}
    tries = retries + 1
    for i in todo:
        machine = False
        for attempt in range(1, tries + 1):
            try:
                on_done(worker.process_unit(i, units[i], out, extras[i]))
                failed.pop(i, None)
                break
            except Exception as e:  # noqa: BLE001  (reported with its message, as Ray reports a task error)
                failed[i], machine = f"{type(e).__name__}: {e}", is_infrastructure(e)
                log.warning("unit %d failed (attempt %d of %d): %s", i, attempt, tries, failed[i])
        if i in failed and machine:
            failed[i] = f"left pending (the machine failed, not the unit): {failed[i]}"
            log.error("unit %d: %s", i, failed[i])
        elif i in failed:
            log.error("unit %d failed %d times, giving up: %s", i, tries, failed[i])
            if on_failed is not None:
                on_failed(i, failed[i])
    return failed


def run_unit_job(cfg, ray_address: str | None, identity: dict, partitioning: dict, units: list, hashes: list[str],
                 rows, local_worker, on_ray, *, plan: str, kind: str = "audio", unit: str = "clip",
                 desc: str = "units", progress: bool = True) -> tuple[dict, dict[int, str], dict, float]:
    """Unit job `cfg` (its `output`, `prefix` and `ray` section) into its shard set. A resume must match
    `identity`, and the finished shards must be this job's `units` (their `hashes`). The pending units run in
    this process on `local_worker()` when `ray.workers` is 0 and no cluster is named, else through
    `on_ray(todo, extras, on_done, on_failed)` (which returns the failed units) after joining the cluster,
    before anything is written. `rows(i)` lists unit i's input items as (key, metadata) for its failed rows.
    `plan` says what the units hold, for the log. Returns (manifest, failed units, seconds per stage, seconds)."""
    address = ray_address or cfg.ray.address
    in_process = cfg.ray.workers == 0 and not address
    if not in_process:  # a cluster that cannot be joined is one line, before anything is written
        init_ray(cfg.ray.env_vars, address)
    out = Path(cfg.output)
    job_hash = config_hash(identity)
    if manifest_path(out).exists():
        open_shard_set(out, identity, partitioning=partitioning, kind=kind)  # refuses naming the keys that changed
    check_done_units(out, job_hash, hashes)  # the done markers decide, with or without a manifest
    open_shard_set(out, identity, partitioning=partitioning, kind=kind)
    save_config(cfg, out)
    if swept := sweep_stale_tmp(out):
        log.info("removed %d temporary files of killed writers", swept)
    todo = pending_units(out, cfg.prefix, len(units))
    extras = {i: {"job_hash": job_hash, "unit_hash": hashes[i]} for i in todo}
    log.info("%s in %d units; %d already done, %d to do", plan, len(units), len(units) - len(todo), len(todo))
    bar = tqdm(total=sum(len(units[i]) for i in todo), unit=unit, desc=desc, disable=not progress)
    timings: Counter[str] = Counter()
    start = time.perf_counter()

    def on_done(result: dict) -> None:
        bar.update(result["rows"])
        timings.update(result.get("timings", {}))

    def on_failed(i: int, error: str) -> None:  # every item of a unit that exhausted its retries: a failed row
        on_done(write_failed_unit(out, cfg.prefix, i, rows(i), error, extras[i]))

    if not todo:
        failed = {}
    elif in_process:
        failed = run_units_in_process(local_worker(), units, todo, out, extras, on_done, cfg.ray.max_retries, on_failed)
    else:
        failed = on_ray(todo, extras, on_done, on_failed)
    bar.close()
    return write_manifest(out, partitioning=partitioning), failed, dict(timings), time.perf_counter() - start
