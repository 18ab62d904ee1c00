"""`shards release DIR OUT`: export a shard set as a Hugging Face dataset (parquet per split + dataset card).

Captions and metadata by default (the audio bytes are never read: tar members are skipped by seeking);
`with_audio=True` adds the FLAC bytes as a `datasets.Audio` column. Splits follow the source (AudioSet
eval / balanced_train / unbalanced_train, a manifest's `split` column; `train` otherwise).

Resumable like every job: each shard is checked (size, readable to the end, safe member names, complete
samples), converted into `OUT/.release/parts/{split}/{shard}.parquet` in row groups of bounded size and
marked done (`.release/{shard}.done`); only when every shard is done are the parts moved to `OUT/data/` and
the card written, so a failed run never leaves a loadable half dataset. `OUT/.release/release.json` records
what the release is of; a folder holding another release (or anything else) is refused, never mixed.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from . import format as fmt
from .manifest import read_manifest
from .validate import sha256_file
from .writer import write_json_atomic

STATE = ".release"
ROW_GROUP_BYTES = 64 << 20  # the Hub's parquet writers keep row groups near 100 MB; smaller reads faster
ROW_GROUP_ROWS = 10_000
CANDIDATE = {"text": datasets.Value("string"), "clap": datasets.Value("float64"), "kind": datasets.Value("string"),
             "engine": datasets.Value("string"), "prompt": datasets.Value("string"), "seed": datasets.Value("int64")}
EVENT = {"label": datasets.Value("string"), "start": datasets.Value("float64"), "end": datasets.Value("float64")}


class ReleaseError(ValueError):
    """The input cannot be released as it is; the message names the shard, the sample and the fix."""


def release_features(with_audio: bool) -> datasets.Features:
    features = {
        "key": datasets.Value("string"), "source": datasets.Value("string"), "id": datasets.Value("string"),
        "split": datasets.Value("string"),
        # join keys back to the audio for a captions-only release (AudioSet: YouTube id and segment)
        "ytid": datasets.Value("string"), "start": datasets.Value("float64"), "end": datasets.Value("float64"),
        "segment_id": datasets.Value("string"),
        "duration": datasets.Value("float64"), "sample_rate": datasets.Value("int64"),
        "labels": datasets.Sequence(datasets.Value("string")), "strong_labels": [EVENT],
        "captions": datasets.Sequence(datasets.Value("string")), "candidates": [CANDIDATE],
    }
    if with_audio:
        features["audio"] = datasets.Audio()
    return datasets.Features(features)


def release_row(key: str, meta: dict, flac: bytes | None) -> dict:
    row = {name: meta.get(name) for name in ("source", "id", "ytid", "start", "end", "segment_id", "duration",
                                             "sample_rate")}
    row |= {"key": key, "split": meta.get("split") or "train", "labels": meta.get("labels") or [],
            "strong_labels": [{k: e.get(k) for k in EVENT} for e in meta.get("strong_labels") or []],
            "captions": meta.get("captions") or [],
            "candidates": [{name: c.get(name) for name in CANDIDATE} for c in meta.get("candidates") or []]}
    if flac is not None:
        row["audio"] = {"bytes": flac, "path": f"{key}.{fmt.AUDIO}"}
    return row


def iter_shard(path: Path, shard: str, with_audio: bool, members: list[str]):
    """(key, meta, flac or None) per sample, reading only json (and flac when asked): other members are
    skipped by seeking. Raises ReleaseError on a truncated tar, an unsafe member name or an incomplete sample."""
    wanted = {fmt.META} | ({fmt.AUDIO} if with_audio else set())
    try:
        with tarfile.open(path, "r:") as tar:
            def read(info: tarfile.TarInfo) -> bytes | None:
                return tar.extractfile(info).read() if info.name.partition(".")[2] in wanted else None

            for key, found in fmt.tar_samples(tar, read, size=path.stat().st_size):
                missing = [m for m in members if m not in found]
                if missing:
                    raise ReleaseError(f"{shard}: sample {key} lacks member(s) {missing}; run `capflow shards validate` "
                                       "and rewrite the shard (rerun the job that made it)")
                yield key, json.loads(found[fmt.META]), found.get(fmt.AUDIO)
    except fmt.UnsafeMember as e:
        raise ReleaseError(f"{shard}: {e}; refusing to release it") from None
    except (tarfile.TarError, EOFError) as e:
        raise ReleaseError(f"{shard}: tar is truncated or corrupt ({type(e).__name__}: {e}); run `capflow shards "
                           "validate` and rerun the job that made it") from None


class _SplitWriter:
    """Parquet files per split for one shard, flushed in row groups of bounded bytes and rows."""

    def __init__(self, directory: Path, shard: str, schema: pa.Schema):
        self.directory, self.shard, self.schema = directory, shard, schema
        self.writers: dict[str, pq.ParquetWriter] = {}
        self.pending: dict[str, list] = {}
        self.bytes: dict[str, int] = {}
        self.rows: dict[str, int] = {}

    def add(self, row: dict) -> None:
        split = row["split"]
        self.pending.setdefault(split, []).append(row)
        self.bytes[split] = self.bytes.get(split, 0) + len(row.get("audio", {}).get("bytes") or b"") + 512
        if self.bytes[split] >= ROW_GROUP_BYTES or len(self.pending[split]) >= ROW_GROUP_ROWS:
            self._flush(split)

    def _flush(self, split: str) -> None:
        rows = self.pending.pop(split, [])
        self.bytes[split] = 0
        if not rows:
            return
        if split not in self.writers:
            path = self.directory / split / f"{self.shard}.parquet.tmp"
            path.parent.mkdir(parents=True, exist_ok=True)
            self.writers[split] = pq.ParquetWriter(path, self.schema)
        self.writers[split].write_table(pa.Table.from_pylist(rows, schema=self.schema))  # one row group
        self.rows[split] = self.rows.get(split, 0) + len(rows)

    def close(self) -> dict[str, int]:
        for split in list(self.pending):
            self._flush(split)
        for split, writer in self.writers.items():
            writer.close()
            tmp = self.directory / split / f"{self.shard}.parquet.tmp"
            os.replace(tmp, tmp.with_suffix(""))
        return self.rows


def _identity(manifest: dict, with_audio: bool) -> dict:
    return {"source_config_hash": manifest.get("config_hash"), "shards": [s["sha256"] for s in manifest["shards"]],
            "with_audio": with_audio, "schema_version": manifest.get("schema_version")}


def _open_out(out: Path, identity: dict, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ReleaseError(f"{out} is a file; give a directory for the release")
    state = out / STATE / "release.json"
    if state.is_file():
        if json.loads(state.read_text()) == identity:
            return  # the same release: resume
        if not overwrite:
            raise ReleaseError(f"{out} holds a release of other shards or options; use a new folder, or --overwrite "
                               "to replace it")
        for part in ("data", STATE, "plots", "README.md", "stats.json"):
            path = out / part
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    elif out.exists() and any(out.iterdir()):
        raise ReleaseError(f"{out} is not empty and holds no capflow release; choose a new or empty folder (a release "
                           "never mixes with other files: `data/*.parquet` of another dataset would load with it)")
    (out / STATE).mkdir(parents=True, exist_ok=True)
    write_json_atomic(state, identity)


def release(directory: str | Path, out: str | Path, with_audio: bool = False, license: str = "unknown",
            name: str | None = None, license_name: str | None = None, license_link: str | None = None,
            overwrite: bool = False, progress: bool = True) -> Path:
    """Release the shard set at `directory` into `out` (resumable); returns out."""
    from .card import check_license, dataset_card

    directory, out = Path(directory), Path(out)
    check_license(license, license_name, license_link)
    manifest = read_manifest(directory)
    shards = manifest["shards"]
    if not shards:
        raise ReleaseError(f"{directory}: no finished shards to release")
    from .validate import check_partitioning

    if lost := check_partitioning(manifest):  # a release must not count a set with lost or failed units as whole
        raise ReleaseError(f"{directory}: {lost[0]}" + (f" (and {len(lost) - 1} more; `capflow shards validate`)"
                                                        if len(lost) > 1 else ""))
    _open_out(out, _identity(manifest, with_audio), overwrite)
    parts = out / STATE / "parts"
    schema = release_features(with_audio).arrow_schema  # carries the HF feature metadata
    members = [fmt.META] + ([fmt.AUDIO] if with_audio else [])
    for entry in tqdm(shards, desc="releasing", unit="shard", disable=not progress):
        done = out / STATE / f"{entry['shard']}.done"
        if done.is_file():
            continue
        tar = directory / entry["tar"]
        if not tar.is_file() or tar.stat().st_size != entry["bytes"]:
            raise ReleaseError(f"{entry['shard']}: {tar} is missing or not the {entry['bytes']} bytes the manifest "
                               "records; run `capflow shards validate`")
        writer = _SplitWriter(parts, entry["shard"], schema)
        for key, meta, flac in iter_shard(tar, entry["shard"], with_audio, members):
            writer.add(release_row(key, meta, flac))
        write_json_atomic(done, {"rows": writer.close()})

    rows: dict[str, int] = {}
    for path in (out / STATE).glob("*.done"):
        for split, n in json.loads(path.read_text())["rows"].items():
            rows[split] = rows.get(split, 0) + n
    if not rows:
        raise ReleaseError(f"{directory}: no samples to release (every item failed)")
    shutil.rmtree(out / "data", ignore_errors=True)
    shutil.copytree(parts, out / "data")  # complete: now (and only now) the data is where loaders look
    from .stats import write_stats

    stats = write_stats(directory, out / "plots")
    (out / "plots" / "stats.json").replace(out / "stats.json")
    files = sorted((out / "data").rglob("*.parquet"))
    card = dataset_card(name or directory.name, license, manifest, stats, rows, files, out, with_audio,
                        license_name, license_link)
    (out / "README.md").write_text(card)
    write_json_atomic(out / "checksums.json", {str(p.relative_to(out)): sha256_file(p) for p in files})
    return out
