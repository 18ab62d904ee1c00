"""`shards stats DIR`: dataset statistics from the parquet sidecars (no tar is read), as JSON and PNG plots.

Streaming: sidecars are read one record batch at a time (only the columns needed) into counters and
fixed-bin histograms, so memory stays flat from a hundred clips to AudioSet's 2 M. Quantiles come from the
histograms (exact to the bin width, which the JSON states).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import format as fmt
from .manifest import read_manifest
from .writer import write_json_atomic

STATS_DIR = "stats"
COLUMNS = ("status", "duration", "labels", "num_candidates", "candidate_scores", "captions", "caption_scores",
           "candidate_kinds", "split", "edit_snr_db", "edit_onset_s", "edit_clap", "edit_span_methods")
EDIT_MIN_CLAP = 0.35  # RFM-Editing keeps a triplet when both its audios score at least this against their captions
# the six triplets of an edit group as (source, target) indices into edit_clap = [x, xa, xb], per operation
EDIT_TRIPLETS = {"add": ((0, 1), (0, 2)), "remove": ((1, 0), (2, 0)), "replace": ((1, 2), (2, 1))}


class Histogram:
    """Counts of values in fixed bins [lo, hi) of width `width` (values outside land in the end bins)."""

    def __init__(self, lo: float, hi: float, width: float):
        self.lo, self.width = lo, width
        self.edges = np.arange(lo, hi + width / 2, width)
        self.counts = np.zeros(len(self.edges) - 1, dtype=np.int64)
        self.total = self.n = 0.0
        self.min, self.max = np.inf, -np.inf

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        values = values[np.isfinite(values)]
        if not values.size:
            return
        idx = np.clip(((values - self.lo) / self.width).astype(np.int64), 0, len(self.counts) - 1)
        self.counts += np.bincount(idx, minlength=len(self.counts))
        self.total += values.sum()
        self.n += values.size
        self.min, self.max = min(self.min, values.min()), max(self.max, values.max())

    def summary(self) -> dict:
        if not self.n:
            return {"count": 0}
        cdf = np.cumsum(self.counts) / self.n
        q = {f"p{p}": float(self.edges[min(int(np.searchsorted(cdf, p / 100)), len(self.counts) - 1)] + self.width / 2)
             for p in (5, 25, 50, 75, 95)}
        return {"count": int(self.n), "mean": self.total / self.n, "min": float(self.min), "max": float(self.max),
                **q, "bin_width": self.width}


class Accumulator:
    def __init__(self):
        self.status, self.labels, self.kept_per_clip, self.kinds, self.splits = (Counter() for _ in range(5))
        self.duration = Histogram(0, 60, 0.5)
        self.words = Histogram(0, 80, 1)
        self.candidate_clap = Histogram(-1, 1, 0.02)
        self.kept_clap = Histogram(-1, 1, 0.02)
        self.items = self.samples = self.captions = self.with_captions = self.candidates = 0
        self.seconds = 0.0
        self.snr, self.onset = Histogram(-10, 30, 0.5), Histogram(0, 30, 0.25)
        self.role_clap = {r: Histogram(-1, 1, 0.02) for r in fmt.EDIT_ROLES}
        self.triplets, self.kept_triplets, self.span_methods = Counter(), Counter(), Counter()

    def add_edit(self, ok, min_clap: float) -> None:
        """Edit groups: SNR and onset of both events, CLAP per role, triplets per operation (all, and kept by
        the read-time filter)."""
        self.snr.add(pc.list_flatten(ok.column("edit_snr_db")).to_numpy(zero_copy_only=False))
        self.onset.add(pc.list_flatten(ok.column("edit_onset_s")).to_numpy(zero_copy_only=False))
        if "edit_span_methods" in ok.schema.names:
            self.span_methods.update(pc.list_flatten(ok.column("edit_span_methods")).to_pylist())
        for scores in ok.column("edit_clap").to_pylist():
            if len(scores) != len(fmt.EDIT_ROLES):
                continue
            for role, value in zip(fmt.EDIT_ROLES, scores):
                self.role_clap[role].add([value])
            for op, pairs in EDIT_TRIPLETS.items():
                self.triplets[op] += len(pairs)
                self.kept_triplets[op] += sum(scores[i] >= min_clap and scores[j] >= min_clap for i, j in pairs)

    def add(self, batch, min_clap: float = EDIT_MIN_CLAP) -> None:
        status = batch.column("status")
        self.items += batch.num_rows
        self.status.update(status.to_pylist())
        ok = batch.filter(pc.equal(status, fmt.STATUS_OK))
        self.samples += ok.num_rows
        if not ok.num_rows:
            return
        duration = ok.column("duration").to_numpy(zero_copy_only=False).astype(np.float64)
        self.duration.add(duration)
        self.seconds += float(np.nansum(duration))
        captions = ok.column("captions")
        lengths = pc.list_value_length(captions).to_numpy(zero_copy_only=False)
        self.captions += int(lengths.sum())
        self.with_captions += int((lengths > 0).sum())
        self.kept_per_clip.update(lengths.tolist())
        flat = pc.list_flatten(captions)
        if len(flat):
            self.words.add(pc.list_value_length(pc.split_pattern(pc.utf8_trim_whitespace(flat), " ")).to_numpy())
        self.candidates += int(pc.sum(ok.column("num_candidates")).as_py() or 0)
        self.candidate_clap.add(pc.list_flatten(ok.column("candidate_scores")).to_numpy(zero_copy_only=False))
        self.kept_clap.add(pc.list_flatten(ok.column("caption_scores")).to_numpy(zero_copy_only=False))
        self.labels.update(pc.list_flatten(ok.column("labels")).to_pylist())
        if "candidate_kinds" in ok.schema.names:
            self.kinds.update(pc.list_flatten(ok.column("candidate_kinds")).to_pylist())
        if "split" in ok.schema.names:
            self.splits.update(ok.column("split").to_pylist())
        if "edit_clap" in ok.schema.names:
            self.add_edit(ok, min_clap)

    def edit_result(self, min_clap: float) -> dict:
        return {"groups": self.samples, "triplets": dict(self.triplets), "min_clap": min_clap,
                "kept_triplets": dict(self.kept_triplets), "snr_db": self.snr.summary(), "onset_s": self.onset.summary(),
                "clap": {r: h.summary() for r, h in self.role_clap.items()},
                "event_spans": dict(self.span_methods)}  # how A's and B's spans were found: strong | activity

    def result(self, threshold: float | None) -> dict:
        return {
            "items": self.items, "samples": self.samples, "status": dict(self.status), "hours": self.seconds / 3600,
            "duration_s": self.duration.summary(), "captions_kept": self.captions,
            "clips_with_captions": self.with_captions, "kept_per_clip": dict(sorted(self.kept_per_clip.items())),
            "caption_words": self.words.summary(), "candidates": self.candidates,
            "candidates_by_kind": dict(self.kinds), "splits": dict(self.splits),
            "candidate_clap": self.candidate_clap.summary(), "kept_clap": self.kept_clap.summary(),
            "clap_threshold": threshold, "top_labels": dict(self.labels.most_common(50)),
        }


def sidecar_paths(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    return [directory / (s["shard"] + fmt.SIDECAR_SUFFIX) for s in read_manifest(directory)["shards"]]


def _accumulate(directory: Path, min_clap: float = EDIT_MIN_CLAP) -> Accumulator:
    acc = Accumulator()
    for path in sidecar_paths(directory):
        parquet = pq.ParquetFile(path)
        columns = [c for c in COLUMNS if c in parquet.schema_arrow.names]
        for batch in parquet.iter_batches(batch_size=16_384, columns=columns):
            acc.add(batch, min_clap)
    return acc


def _result(directory: Path, acc: Accumulator, min_clap: float) -> tuple[dict, float | None, bool]:
    manifest = read_manifest(directory)
    edit = str(manifest.get("kind", "")).startswith("edit")
    threshold = None if edit else manifest.get("config", {}).get("clap", {}).get("threshold")
    stats = acc.result(threshold)
    if edit:
        stats["edit"] = acc.edit_result(min_clap)
    return stats, threshold, edit


def compute_stats(directory: str | Path, min_clap: float = EDIT_MIN_CLAP) -> dict:
    """The set's statistics; an edit-group set adds an `edit` section (`min_clap`: the read-time triplet
    filter whose kept counts it reports)."""
    directory = Path(directory)
    return _result(directory, _accumulate(directory, min_clap), min_clap)[0]


def _bar(ax, counts: dict, title: str, xlabel: str, horizontal: bool = False) -> None:
    names, values = list(map(str, counts)), list(counts.values())
    if horizontal:
        ax.barh(names[::-1], values[::-1])
        ax.set_xlabel("count")
    else:
        ax.bar(names, values)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("count")
    ax.set_title(title)


def _hist(ax, hists: list[tuple[Histogram, str]], title: str, xlabel: str, threshold: float | None = None) -> None:
    for h, label in hists:
        if h.n:  # the same bin edges for every series
            ax.stairs(h.counts, h.edges, fill=True, alpha=0.5, label=f"{label} (N={int(h.n):,})")
    if threshold is not None:
        ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:g}")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    if any(h.n for h, _ in hists):
        ax.legend(fontsize=7)


def _plots(out: Path, acc: Accumulator, threshold: float | None, edit: bool = False,
           min_clap: float = EDIT_MIN_CLAP) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = acc.samples
    panels = {
        "clap_scores.png": lambda ax: _hist(ax, [(acc.candidate_clap, "candidates"), (acc.kept_clap, "kept")],
                                            f"CLAP score of captions ({n:,} clips)", "CLAP cosine", threshold),
        "caption_words.png": lambda ax: _hist(ax, [(acc.words, "kept captions")], "caption length", "words"),
        "duration.png": lambda ax: _hist(ax, [(acc.duration, "clips")], "clip duration", "seconds"),
        "kept_per_clip.png": lambda ax: _bar(ax, dict(sorted(acc.kept_per_clip.items())),
                                             f"captions kept per clip ({n:,} clips)", "kept captions"),
        "status.png": lambda ax: _bar(ax, dict(acc.status.most_common()), f"status of {acc.items:,} items", "status"),
        "candidates_by_kind.png": lambda ax: _bar(ax, dict(acc.kinds.most_common()),
                                                  f"candidates by kind ({acc.candidates:,})", "kind"),
        "top_labels.png": lambda ax: _bar(ax, dict(acc.labels.most_common(50)), "top 50 labels (clips)", "", True),
    }
    if edit:
        panels = {k: v for k, v in panels.items() if k in ("status.png", "duration.png", "top_labels.png")}
        panels |= {
            "edit_snr.png": lambda ax: _hist(ax, [(acc.snr, "events")], "event SNR against the background", "dB"),
            "edit_onset.png": lambda ax: _hist(ax, [(acc.onset, "events")], "event onset", "seconds"),
            "edit_clap.png": lambda ax: _hist(ax, [(acc.role_clap[r], r) for r in fmt.EDIT_ROLES],
                                              f"CLAP of group audios to their captions ({n:,} groups)", "CLAP cosine",
                                              min_clap),
            "edit_operations.png": lambda ax: _bar(ax, {f"{op} (kept)": acc.kept_triplets[op] for op in EDIT_TRIPLETS}
                                                   | {op: acc.triplets[op] for op in EDIT_TRIPLETS},
                                                   f"triplets per operation (kept: CLAP >= {min_clap:g})", ""),
        }
    paths = []
    for name, draw in panels.items():
        tall = name == "top_labels.png"
        fig, ax = plt.subplots(figsize=(6, 9 if tall else 3.4), dpi=100)
        draw(ax)
        if tall:
            ax.tick_params(axis="y", labelsize=6)
        fig.tight_layout()
        path = out / name
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def write_stats(directory: str | Path, out: str | Path | None = None, min_clap: float = EDIT_MIN_CLAP) -> dict:
    """Compute the stats of a shard set and write `stats.json` plus PNG plots into `out` (default DIR/stats)."""
    directory = Path(directory)
    out = Path(out) if out else directory / STATS_DIR
    out.mkdir(parents=True, exist_ok=True)
    acc = _accumulate(directory, min_clap)
    stats, threshold, edit = _result(directory, acc, min_clap)
    stats["plots"] = [p.name for p in _plots(out, acc, threshold, edit, min_clap)]
    write_json_atomic(out / "stats.json", stats)
    return stats
