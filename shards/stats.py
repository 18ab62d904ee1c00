"""`shards stats DIR`: dataset statistics from the parquet sidecars (no tar is read), as JSON and PNG plots."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import format as fmt
from .manifest import read_manifest
from .writer import write_json_atomic

STATS_DIR = "stats"


def read_sidecars(directory: str | Path) -> pa.Table:
    directory = Path(directory)
    manifest = read_manifest(directory)
    paths = [directory / (s["shard"] + fmt.SIDECAR_SUFFIX) for s in manifest["shards"]]
    if not paths:
        return fmt.SIDECAR_SCHEMA.empty_table()
    return pa.concat_tables([pq.read_table(p) for p in paths])


def _summary(values) -> dict:
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return {"count": 0}
    q = np.percentile(arr, [5, 25, 50, 75, 95])
    return {"count": int(arr.size), "mean": float(arr.mean()), "min": float(arr.min()), "max": float(arr.max()),
            "p5": q[0], "p25": q[1], "p50": q[2], "p75": q[3], "p95": q[4]}


def compute_stats(directory: str | Path) -> dict:
    rows = read_sidecars(directory).to_pylist()
    ok = [r for r in rows if r["status"] == fmt.STATUS_OK]
    captions = [c for r in ok for c in r["captions"]]
    labels = Counter(label for r in ok for label in r["labels"])
    return {
        "items": len(rows),
        "samples": len(ok),
        "status": dict(Counter(r["status"] for r in rows)),
        "hours": sum(r["duration"] or 0.0 for r in ok) / 3600.0,
        "duration_s": _summary([r["duration"] for r in ok if r["duration"] is not None]),
        "captions_kept": len(captions),
        "clips_with_captions": sum(1 for r in ok if r["captions"]),
        "kept_per_clip": dict(sorted(Counter(len(r["captions"]) for r in ok).items())),
        "caption_words": _summary([len(c.split()) for c in captions]),
        "candidates": sum(r["num_candidates"] for r in ok),
        "candidate_clap": _summary([s for r in ok for s in r["candidate_scores"]]),
        "kept_clap": _summary([s for r in ok for s in r["caption_scores"]]),
        "top_labels": dict(labels.most_common(20)),
    }


def _plots(directory: Path, rows: list[dict]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == fmt.STATUS_OK]
    panels = {
        "clap_scores.png": ("CLAP score", [[s for r in ok for s in r["candidate_scores"]],
                                           [s for r in ok for s in r["caption_scores"]]], ["candidates", "kept"]),
        "caption_words.png": ("caption length (words)", [[len(c.split()) for r in ok for c in r["captions"]]], ["kept"]),
        "kept_per_clip.png": ("captions kept per clip", [[len(r["captions"]) for r in ok]], ["clips"]),
        "duration.png": ("clip duration (s)", [[r["duration"] for r in ok if r["duration"] is not None]], ["clips"]),
    }
    paths = []
    for name, (xlabel, series, names) in panels.items():
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
        for values, label in zip(series, names):
            if values:
                ax.hist(values, bins=30, alpha=0.6, label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("count")
        if any(series):
            ax.legend()
        fig.tight_layout()
        path = directory / name
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def write_stats(directory: str | Path, out: str | Path | None = None) -> dict:
    """Compute the stats of a shard set and write `stats.json` plus PNG plots into `out` (default DIR/stats)."""
    directory = Path(directory)
    out = Path(out) if out else directory / STATS_DIR
    out.mkdir(parents=True, exist_ok=True)
    stats = compute_stats(directory)
    plots = _plots(out, read_sidecars(directory).to_pylist())
    stats["plots"] = [p.name for p in plots]
    write_json_atomic(out / "stats.json", stats)
    return stats
