"""manifest.json: the index of a shard set (schema version, config and hash, partitioning, per-shard facts).

The manifest is derived from the per-shard `_stats.json` done markers, so it can always be rebuilt; a
resumed job compares its config hash with the stored one and refuses to mix two configs in one set.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import format as fmt
from .config import config_hash, diff_configs
from .writer import write_json_atomic


class ConfigMismatch(RuntimeError):
    """A job was resumed into a shard set written with another config."""


def manifest_path(directory: str | Path) -> Path:
    return Path(directory) / fmt.MANIFEST_NAME


def read_manifest(directory: str | Path) -> dict:
    path = manifest_path(directory)
    if not path.is_file():
        raise FileNotFoundError(f"no {fmt.MANIFEST_NAME} in {directory} (is this a shard set directory?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def done_shards(directory: str | Path) -> dict[str, dict]:
    """Stats of every finished shard (those with a `_stats.json`), by shard name, in order."""
    out = {}
    for path in sorted(Path(directory).glob("*" + fmt.STATS_SUFFIX)):
        stats = json.loads(path.read_text())
        out[stats["shard"]] = stats
    return out


def open_shard_set(directory: str | Path, config: dict, partitioning: dict | None = None,
                   kind: str = "audio") -> dict:
    """Start or resume a shard set. A resume with a different config raises ConfigMismatch naming the keys."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    digest = config_hash(config)
    if manifest_path(directory).exists():
        manifest = read_manifest(directory)
        if manifest.get("config_hash") != digest:
            changed = diff_configs(manifest.get("config", {}), config)
            raise ConfigMismatch(
                f"{directory} was written with another config; refusing to resume. Changed keys:\n  "
                + "\n  ".join(changed or ["(hash differs)"])
                + "\nUse a new output directory, or restore the original values."
            )
        return manifest
    return write_manifest(directory, config=config, partitioning=partitioning, kind=kind)


def write_manifest(directory: str | Path, config: dict | None = None, partitioning: dict | None = None,
                   kind: str | None = None, extra: dict | None = None) -> dict:
    """(Re)write manifest.json from the done markers; keeps config/partitioning already recorded."""
    directory = Path(directory)
    previous = read_manifest(directory) if manifest_path(directory).exists() else {}
    config = config if config is not None else previous.get("config", {})
    shards = [
        {k: s[k] for k in ("shard", "index", "samples", "rows", "bytes", "sha256", "duration_s", "members")}
        | {k: s[k] for k in ("unit_hash", "failed_unit") if s.get(k)} | {"tar": s["shard"] + fmt.TAR_SUFFIX}
        for s in done_shards(directory).values()
    ]
    manifest = {
        "schema_version": fmt.SCHEMA_VERSION,
        "kind": kind or previous.get("kind", "audio"),
        "config": config,
        "config_hash": config_hash(config),
        "partitioning": partitioning if partitioning is not None else previous.get("partitioning", {}),
        "extra": extra if extra is not None else previous.get("extra", {}),
        "num_shards": len(shards),
        "num_samples": sum(s["samples"] for s in shards),
        "shards": shards,
    }
    write_json_atomic(manifest_path(directory), manifest)
    return manifest
