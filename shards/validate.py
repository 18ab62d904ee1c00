"""`shards validate DIR`: check a shard set against its manifest, one problem per line.

Checks: every manifest shard has its tar, sidecar and stats; size and sha256 match; the tar reads to the
end with safe member names; every sample has the members the shard declares and parseable json; sample
and row counts agree with the sidecar; no key appears in two shards; no audio of an edit group (by its
identity: AudioSet segment or decoded-audio hash) is in groups of two splits; tars on disk that the manifest
does not list are reported.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
from tqdm.auto import tqdm

from . import format as fmt
from .manifest import read_manifest


@dataclass
class Problem:
    shard: str
    message: str
    sample: str | None = None

    def __str__(self) -> str:
        where = f"{self.shard}: sample {self.sample}" if self.sample else self.shard
        return f"{where}: {self.message}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_tar(path: Path, name: str, members: list[str], clip_splits: dict[str, tuple[str, str]]):
    """Walk the tar's headers (seeking over member data; only json members are read and parsed), so memory
    stays flat whatever the shard's size. Edit groups (json `clips`) record their clips' split in
    `clip_splits` and a clip met in two splits is a problem."""
    problems, samples = [], {}

    def unsafe(info: tarfile.TarInfo) -> None:
        problems.append(Problem(name, f"unsafe or unexpected tar member {info.name!r}"))

    try:
        with tarfile.open(path, "r:") as tar:
            def read_json(info: tarfile.TarInfo) -> bytes | None:
                return tar.extractfile(info).read() if info.name.endswith("." + fmt.META) else None

            for key, found in fmt.tar_samples(tar, read_json, size=path.stat().st_size, unsafe=unsafe):
                samples.setdefault(key, set()).update(found)
                if fmt.META not in found:
                    continue
                try:
                    meta = json.loads(found[fmt.META])
                except json.JSONDecodeError as e:
                    problems.append(Problem(name, f"json member does not parse ({e})", sample=key))
                    continue
                # by the audio's identity (AudioSet segment or decoded-audio hash) where recorded, else by key
                for clip in (meta.get("identities") or meta.get("clips") or {}).values():
                    split, group = clip_splits.setdefault(clip, (meta.get("split"), key))
                    if split != meta.get("split"):
                        problems.append(Problem(name, f"audio {clip} is in this {meta.get('split')} group and in "
                                                      f"{split} group {group}: splits leak", sample=key))
    except (tarfile.TarError, EOFError, OSError) as e:
        problems.append(Problem(name, f"tar is truncated or corrupt ({type(e).__name__}: {e})"))
    for key, found in samples.items():
        for ext in members:
            if ext not in found:
                problems.append(Problem(name, f"missing member {ext!r}", sample=key))
    return list(samples), problems


def check_partitioning(manifest: dict) -> list[Problem]:
    """Every planned work unit is a finished shard and every planned input item a sidecar row: a unit that wrote
    nothing (lost to a dead worker, deleted by hand) is a problem, not a smaller data set. A unit whose retries
    were exhausted is a shard of `failed` rows (stats `failed_unit`): recorded failures, as a failed clip is."""
    part, shards = manifest.get("partitioning") or {}, manifest.get("shards", [])
    planned = part.get("units", part.get("shards"))
    if planned is None:
        return []
    problems = []
    indices = {e.get("index") for e in shards}
    missing = [i for i in range(int(planned)) if i not in indices]
    if missing:
        problems.append(Problem(fmt.MANIFEST_NAME, f"{len(missing)} of {planned} planned units have no shard (units "
                                f"{missing[:10]}{' ...' if len(missing) > 10 else ''}): their items are lost; "
                                "rerun the job that made this set to finish them"))
    hashes = part.get("unit_hashes")
    for e in shards:
        if hashes and e.get("index") is not None and e["index"] < len(hashes) and e.get("unit_hash") not in (None, hashes[e["index"]]):
            problems.append(Problem(e["shard"], "its clips are not the planned unit's (unit hash differs)"))
    items = part.get("items", part.get("groups"))
    rows = sum(e.get("rows", 0) for e in shards)
    if items is not None and not missing and rows != items:
        problems.append(Problem(fmt.MANIFEST_NAME, f"the shards hold {rows} rows for {items} planned items"))
    return problems


def validate(directory: str | Path, check_hashes: bool = True, progress: bool = False) -> list[Problem]:
    """All problems found in the shard set at `directory` (empty when it is valid)."""
    directory = Path(directory)
    try:
        manifest = read_manifest(directory)
    except (FileNotFoundError, ValueError) as e:
        return [Problem(fmt.MANIFEST_NAME, str(e))]
    problems: list[Problem] = []
    if manifest.get("schema_version") != fmt.SCHEMA_VERSION:
        problems.append(Problem(fmt.MANIFEST_NAME, f"schema_version {manifest.get('schema_version')} is not "
                                                   f"{fmt.SCHEMA_VERSION} (written by another capflow version)"))
    problems += check_partitioning(manifest)
    listed, seen, clip_splits = set(), {}, {}
    for entry in tqdm(manifest.get("shards", []), desc="validating", unit="shard", disable=not progress):
        name = entry["shard"]
        tar = directory / entry["tar"]
        listed.add(tar.name)
        sidecar = directory / (name + fmt.SIDECAR_SUFFIX)
        stats_path = directory / (name + fmt.STATS_SUFFIX)
        missing = [p.name for p in (tar, sidecar, stats_path) if not p.is_file()]
        if missing:
            problems.append(Problem(name, f"missing file(s): {', '.join(missing)}"))
            if tar.name in missing:
                continue
        size = tar.stat().st_size
        if size != entry["bytes"]:
            problems.append(Problem(name, f"tar is {size} bytes, manifest says {entry['bytes']} (truncated or rewritten)"))
        if check_hashes and sha256_file(tar) != entry["sha256"]:
            problems.append(Problem(name, "sha256 mismatch: the tar differs from the one the manifest records"))
        keys, tar_problems = _check_tar(tar, name, entry.get("members") or [fmt.META], clip_splits)
        problems += tar_problems
        if len(keys) != entry["samples"]:
            problems.append(Problem(name, f"tar holds {len(keys)} samples, manifest says {entry['samples']}"))
        for key in keys:
            if key in seen:
                problems.append(Problem(name, f"duplicate key: also in {seen[key]} (an input item was written "
                                              "twice: was the input list changed between runs?)", sample=key))
            else:
                seen[key] = name
        if sidecar.is_file():
            try:
                table = pq.read_table(sidecar, columns=["status"])
                ok = sum(1 for s in table.column("status").to_pylist() if s == fmt.STATUS_OK)
                if table.num_rows != entry["rows"]:
                    problems.append(Problem(name, f"sidecar has {table.num_rows} rows, manifest says {entry['rows']}"))
                if ok != entry["samples"]:
                    problems.append(Problem(name, f"sidecar has {ok} ok rows for {entry['samples']} samples"))
            except Exception as e:  # pyarrow raises several types for a damaged file
                problems.append(Problem(name, f"sidecar unreadable ({type(e).__name__}: {e})"))
    for tar in sorted(directory.glob("*" + fmt.TAR_SUFFIX)):
        if tar.name not in listed:
            problems.append(Problem(tar.stem, "tar on disk is not in the manifest (an unfinished shard? rerun the job)"))
    return problems
