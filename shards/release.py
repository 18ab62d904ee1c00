"""`shards release DIR OUT`: export a shard set as a Hugging Face dataset (parquet + dataset card).

Captions and metadata only by default; `with_audio=True` adds the FLAC bytes as a `datasets.Audio` column.
The export loads with `datasets.load_dataset(OUT)`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from tqdm.auto import tqdm

from . import format as fmt
from .manifest import read_manifest
from .reader import iter_tar_samples
from .stats import write_stats

CANDIDATE = {"text": datasets.Value("string"), "clap": datasets.Value("float64"), "kind": datasets.Value("string"),
             "engine": datasets.Value("string"), "prompt": datasets.Value("string"), "seed": datasets.Value("int64")}


def release_features(with_audio: bool) -> datasets.Features:
    features = {
        "key": datasets.Value("string"),
        "source": datasets.Value("string"),
        "id": datasets.Value("string"),
        "duration": datasets.Value("float64"),
        "sample_rate": datasets.Value("int64"),
        "labels": datasets.Sequence(datasets.Value("string")),
        "captions": datasets.Sequence(datasets.Value("string")),
        "candidates": [CANDIDATE],
    }
    if with_audio:
        features["audio"] = datasets.Audio()
    return datasets.Features(features)


def _row(key: str, sample: dict, with_audio: bool) -> dict:
    meta = json.loads(sample[fmt.META])
    row = {
        "key": key, "source": meta.get("source"), "id": meta.get("id"), "duration": meta.get("duration"),
        "sample_rate": meta.get("sample_rate"), "labels": meta.get("labels") or [], "captions": meta.get("captions") or [],
        "candidates": [{name: c.get(name) for name in CANDIDATE} for c in meta.get("candidates") or []],
    }
    if with_audio:
        row["audio"] = {"bytes": sample.get(fmt.AUDIO), "path": f"{key}.{fmt.AUDIO}"}
    return row


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def release(directory: str | Path, out: str | Path, with_audio: bool = False, license: str = "other",
            name: str | None = None) -> Path:
    """Write `out/data/train-*.parquet`, `out/README.md` (dataset card) and `out/plots/`. Returns out."""
    directory, out = Path(directory), Path(out)
    manifest = read_manifest(directory)
    shards = manifest["shards"]
    if not shards:
        raise ValueError(f"{directory}: no finished shards to release")
    (out / "data").mkdir(parents=True, exist_ok=True)
    schema = release_features(with_audio).arrow_schema  # carries the HF feature metadata
    files = []  # one parquet file per shard, streamed: a release never holds more than one shard in memory
    for i, entry in enumerate(tqdm(shards, desc="releasing", unit="shard")):
        table = pa.Table.from_pylist([_row(k, s, with_audio) for k, s in iter_tar_samples(directory / entry["tar"])],
                                     schema=schema)
        if not table.num_rows:  # a shard of only failure rows has nothing to release
            continue
        path = out / "data" / f"train-{i:05d}-of-{len(shards):05d}.parquet"
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table, tmp)
        tmp.replace(path)
        files.append(path)
    if not files:
        raise ValueError(f"{directory}: no samples to release (every item failed)")

    stats = write_stats(directory, out / "plots")
    (out / "plots" / "stats.json").replace(out / "stats.json")
    card = _card(name or directory.name, license, manifest, stats, files, out, with_audio)
    (out / "README.md").write_text(card)
    shutil.copy(directory / fmt.MANIFEST_NAME, out / "source_manifest.json")
    return out


def _card(name: str, license: str, manifest: dict, stats: dict, files: list[Path], out: Path, with_audio: bool) -> str:
    header = {
        "pretty_name": name,
        "license": license,
        "task_categories": ["text-to-audio", "audio-to-audio"],
        "tags": ["audio", "captions", "capflow"],
        "size_categories": ["n<1K" if stats["samples"] < 1000 else "1K<n<10K" if stats["samples"] < 10_000 else "10K<n<100K"
                            if stats["samples"] < 100_000 else "100K<n<1M" if stats["samples"] < 1_000_000 else "1M<n<10M"],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}],
    }
    clap = stats["kept_clap"]
    lines = [
        "---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "",
        f"# {name}", "",
        "Audio clips with synthetic captions written by audio-language models and an LLM, each scored by CLAP "
        "against its clip; the kept captions passed the CLAP threshold. Every candidate is included with its score, "
        "so users can re-filter with another threshold.", "",
        "## Load", "", "```python", "import datasets", f'ds = datasets.load_dataset("path/to/{out.name}")  # or the Hub repo id', "```", "",
        "## Statistics", "",
        "| | |", "|---|---|",
        f"| clips | {stats['samples']} |",
        f"| hours of audio | {stats['hours']:.3f} |",
        f"| items that failed | {stats['items'] - stats['samples']} "
        f"({', '.join(f'{k}: {v}' for k, v in stats['status'].items() if k != fmt.STATUS_OK) or 'none'}) |",
        f"| captions kept | {stats['captions_kept']} |",
        f"| clips with a kept caption | {stats['clips_with_captions']} |",
        f"| caption candidates | {stats['candidates']} |",
        f"| kept-caption CLAP mean | {clap.get('mean', float('nan')):.3f} |",
        f"| audio included | {'yes (FLAC)' if with_audio else 'no (captions and metadata only)'} |", "",
        *[f"![{p}](plots/{p})" for p in stats["plots"]], "",
        "## Provenance", "",
        f"- shard schema version {manifest['schema_version']}, {manifest['num_shards']} shards",
        f"- config hash `{manifest['config_hash']}` (the full config is in `source_manifest.json`)", "",
        "## Checksums (sha256)", "",
        *[f"- `{p.relative_to(out)}` {_sha256(p)}" for p in files], "",
    ]
    return "\n".join(lines)
