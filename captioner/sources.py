"""Input corpora as lists of Items: AudioSet exactly as distributed, a folder of audio files, or a
JSONL/CSV manifest. A source never decodes audio; it says where each clip should be.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field

from shards import audio
from shards.audio import AUDIO_SUFFIXES, is_audio_path
from shards.config import Strict
from shards.format import make_key


@dataclass
class Item:
    source: str
    id: str
    path: Path
    labels: list[str] = field(default_factory=list)  # display names
    strong: list[dict] = field(default_factory=list)  # {"label", "start", "end"} in seconds, time-ordered
    extra: dict = field(default_factory=dict)  # source-specific ids (ytid, start, end) and human captions
    span: tuple[float, float] | None = None  # (start, end) seconds of a clip cut from a longer file
    key: str = field(init=False)  # `{source}-{id}`, made conforming once (sorting 2 M items asks often)

    def __post_init__(self):
        self.key = make_key(self.source, self.id)

    def meta(self) -> dict:
        return {"key": self.key, "source": self.source, "id": self.id, "path": str(self.path),
                "labels": self.labels, "strong_labels": self.strong, **self.extra,
                **({"span": list(self.span)} if self.span else {})}


class SourceConfig(Strict):
    kind: Literal["audioset", "folder", "manifest"] = "audioset"
    name: str | None = None  # the key prefix; default: the kind
    audio_dir: str = ""
    # AudioSet
    segments: list[str] = []  # segment CSVs (balanced_train_segments.csv, ...)
    # file name under audio_dir; fields: ytid, start, end, start_ms. The extension is a first guess only:
    # a file with the same name and any audio extension (.wav, .m4a, .OGG, ...) is found too.
    pattern: str = "{ytid}_{start_ms}.flac"
    class_labels: str | None = None  # class_labels_indices.csv
    ontology: str | None = None  # ontology.json
    strong: list[str] = []  # strong-label TSVs
    # folder
    glob: str = "**/*"
    # manifest (JSONL or CSV with a `path` column; optional `id`, `labels`, `caption`, `split`: rows of one clip merge)
    manifest: str | None = None
    limit: int | None = None  # first N items (after sorting), for quick runs
    # Long recordings: a file longer than this is cut into consecutive clips of it (keys `{id}_{start_ms}`; a file
    # of one clip keeps its key); a last piece under `min_segment_seconds` is left out. Planning reads each file's
    # header once. None: every file is one clip, whatever its length (the ALM hears its first max_seconds).
    segment_seconds: float | None = Field(default=None, gt=0)
    min_segment_seconds: float = Field(default=1.0, ge=0)


def _read_label_names(cfg: SourceConfig) -> dict[str, str]:
    names: dict[str, str] = {}
    if cfg.ontology:
        for node in json.loads(Path(cfg.ontology).read_text()):
            names[node["id"]] = node["name"]
    if cfg.class_labels:
        with open(cfg.class_labels, newline="") as f:
            for row in csv.DictReader(f):
                names[row["mid"]] = row["display_name"]
    return names


def _read_segments(path: str):
    """Rows of an AudioSet segment CSV: '# ' comment lines, then `YTID, start, end, "mid,mid"`."""
    with open(path, newline="") as f:
        lines = [line for line in f if line.strip() and not line.startswith("#")]
    for row in csv.reader(lines, skipinitialspace=True):
        if len(row) < 4:
            raise ValueError(f"{path}: malformed segment row {row!r} (expected YTID, start, end, labels)")
        yield row[0], float(row[1]), float(row[2]), [m for m in row[3].split(",") if m]


def audioset_split(path: str) -> str:
    """AudioSet's split from its segment file's name (eval_segments.csv, balanced_train_segments.csv, ...):
    carried to the shards and the release, so evaluation clips never leak into training data."""
    name = Path(path).name.lower()
    for split in ("unbalanced_train", "balanced_train", "eval"):
        if name.startswith(split):
            return split
    return "train"


def _read_strong(paths: list[str]) -> dict[str, list[tuple[float, float, str]]]:
    """segment_id -> events. AudioSet's framed positive/negative files carry a `present` column: only
    PRESENT rows are events (NOT_PRESENT rows are verified absences)."""
    events: dict[str, list] = {}
    for path in paths:
        with open(path, newline="") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                if row.get("present", "PRESENT").strip().upper() != "PRESENT":
                    continue
                events.setdefault(row["segment_id"], []).append(
                    (float(row["start_time_seconds"]), float(row["end_time_seconds"]), row["label"]))
    return events


class AudioIndex:
    """Finds a clip whatever its audio extension: `dir/name.flac` is taken as is when it exists, else any
    `dir/name.<audio suffix>` (case-insensitive). Each directory is listed once (no stat per clip: planning
    2 M AudioSet rows stays a matter of seconds)."""

    def __init__(self):
        self._dirs: dict[str, tuple[set[str], dict[str, str]]] = {}

    def _listing(self, directory: str) -> tuple[set[str], dict[str, str]]:
        if directory not in self._dirs:
            names, stems = set(), {}
            if os.path.isdir(directory):
                with os.scandir(directory) as it:
                    for entry in it:
                        if is_audio_path(entry.name):
                            names.add(entry.name)
                            stem = os.path.splitext(entry.name)[0]
                            # a fixed preference when one clip exists in several formats: lossless first
                            if stem not in stems or _rank(entry.name) < _rank(stems[stem]):
                                stems[stem] = entry.name
            self._dirs[directory] = names, stems
        return self._dirs[directory]

    def find(self, path: str) -> str | None:
        directory, name = os.path.split(path)
        names, stems = self._listing(directory)
        if name in names:
            return path
        found = stems.get(os.path.splitext(name)[0] if is_audio_path(name) else name)
        return os.path.join(directory, found) if found else None


def _rank(name: str) -> tuple[int, str]:
    order = (".flac", ".wav")
    suffix = os.path.splitext(name)[1].lower()
    return (order.index(suffix) if suffix in order else len(order), name)


def _check_files(cfg: SourceConfig) -> None:
    """Fail before any work on a path typo, naming the config key (a wrong audio_dir would otherwise turn
    every clip into a 'missing' row)."""
    # only the keys the source kind reads (a folder source made from an AudioSet config by --set ignores the rest)
    paths = {"audioset": [("source.segments", p) for p in cfg.segments] + [("source.strong", p) for p in cfg.strong]
             + [(f"source.{k}", getattr(cfg, k)) for k in ("class_labels", "ontology") if getattr(cfg, k)],
             "manifest": [("source.manifest", cfg.manifest)] if cfg.manifest else [],
             "folder": []}.get(cfg.kind, [])
    for key, path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{key}: no such file {path}")
    if cfg.audio_dir and not Path(cfg.audio_dir).is_dir():
        raise FileNotFoundError(f"source.audio_dir: {cfg.audio_dir} is not a directory")


def audioset_items(cfg: SourceConfig) -> list[Item]:
    if not cfg.segments:
        raise ValueError("source.kind=audioset needs source.segments (the segment CSV files)")
    names = _read_label_names(cfg)
    strong = _read_strong(cfg.strong)
    audio_dir = cfg.audio_dir
    index = AudioIndex()
    items, found = [], 0
    for seg_path in cfg.segments:
        split = audioset_split(seg_path)
        for ytid, start, end, mids in _read_segments(seg_path):
            start_ms = round(start * 1000)
            segment_id = f"{ytid}_{start_ms}"  # AudioSet's own id (strong labels use it): the key follows it
            wanted = os.path.join(audio_dir, cfg.pattern.format(ytid=ytid, start=f"{start:.3f}", end=f"{end:.3f}",
                                                                start_ms=start_ms))
            path = index.find(wanted)
            found += path is not None
            timeline = sorted(strong.get(segment_id, []))
            items.append(Item(
                source=cfg.name or "audioset", id=segment_id, path=Path(path or wanted),
                labels=[names.get(m, m) for m in mids],
                strong=[{"label": names.get(m, m), "start": s, "end": e} for s, e, m in timeline],
                extra={"ytid": ytid, "start": start, "end": end, "segment_id": segment_id, "split": split},
            ))
    if items and not found:
        raise FileNotFoundError(
            f"no audio file for any of the {len(items)} AudioSet segments under {audio_dir} (source.pattern "
            f"{cfg.pattern!r} with any audio extension; e.g. looked for {items[0].path}); check source.audio_dir "
            "and source.pattern")
    return items


def folder_items(cfg: SourceConfig) -> list[Item]:
    if not cfg.audio_dir:
        raise ValueError("source.kind=folder needs source.audio_dir")
    root = Path(cfg.audio_dir)
    paths = sorted(p for p in root.glob(cfg.glob) if is_audio_path(p) and p.is_file())
    if not paths:
        raise FileNotFoundError(f"no audio files under {root} matching source.glob {cfg.glob!r} (looked for "
                                f"{', '.join(sorted(AUDIO_SUFFIXES))} in any case)")
    return [Item(source=cfg.name or "folder", id=str(p.relative_to(root).with_suffix("")), path=p,
                 extra={"split": "train"}) for p in paths]


def manifest_items(cfg: SourceConfig) -> list[Item]:
    if not cfg.manifest:
        raise ValueError("source.kind=manifest needs source.manifest (a .jsonl or .csv file)")
    path = Path(cfg.manifest)
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    items: dict[str, Item] = {}
    for n, row in enumerate(rows):
        if "path" not in row:
            raise ValueError(f"{path}: row {n + 1} has no 'path' field")
        file = Path(cfg.audio_dir) / row["path"] if cfg.audio_dir else Path(row["path"])
        labels = row.get("labels") or []
        if isinstance(labels, str):
            labels = [x for x in labels.split(",") if x]
        item_id = str(row.get("id") or Path(row["path"]).with_suffix(""))
        # AudioCaps-style files repeat a clip once per human caption: rows of one clip merge.
        # AudioCaps rows name their AudioSet segment (youtube_id, start_time): kept, it identifies the audio
        segment = {k: row[src] for k, src in (("ytid", "youtube_id"), ("ytid", "ytid"), ("start", "start_time"),
                                              ("start", "start")) if row.get(src) not in (None, "")}
        item = items.setdefault(item_id, Item(source=cfg.name or "manifest", id=item_id, path=file, labels=labels,
                                              extra={"human_captions": [], "split": row.get("split") or "train",
                                                     **segment}))
        if row.get("caption"):
            item.extra["human_captions"].append(row["caption"])
    return list(items.values())


SOURCES = {"audioset": audioset_items, "folder": folder_items, "manifest": manifest_items}


def load_items(cfg: SourceConfig) -> list[Item]:
    """All items of a source, sorted by key (a deterministic order for partitioning), keys unique."""
    if cfg.kind not in SOURCES:
        raise ValueError(f"unknown source kind {cfg.kind!r}; valid: {sorted(SOURCES)}")
    _check_files(cfg)
    items = SOURCES[cfg.kind](cfg)
    if cfg.segment_seconds:
        items = [clip for it in items for clip in segments(it, cfg.segment_seconds, cfg.min_segment_seconds)]
    items = sorted(items, key=lambda it: it.key)
    seen: dict[str, Item] = {}
    for it in items:
        if it.key in seen:
            raise ValueError(f"two items map to the key {it.key!r}: {seen[it.key].id!r} and {it.id!r}")
        seen[it.key] = it
    return items[: cfg.limit] if cfg.limit else items


def segments(item: Item, seconds: float, min_seconds: float = 1.0) -> list[Item]:
    """A file's consecutive clips of `seconds` (the last one shorter, left out under `min_seconds`), with its
    strong labels cut to each clip's time; the item itself when it is one clip. Its length comes from the file's
    header; a missing or unreadable file stays one item (and becomes its status row)."""
    try:
        total = audio.check_readable(item.path)
    except audio.AudioError:
        return [item]
    if total is None or total <= seconds:
        return [item]
    starts = [k * seconds for k in range(math.ceil(total / seconds))]
    spans = [(a, min(a + seconds, total)) for a in starts if min(a + seconds, total) - a >= min_seconds]
    if len(spans) <= 1:
        return [dataclasses.replace(item, span=spans[0]) if spans else item]
    return [dataclasses.replace(
        item, id=f"{item.id}_{round(a * 1000)}", span=(a, b),
        strong=[{**e, "start": max(e["start"], a) - a, "end": min(e["end"], b) - a}
                for e in item.strong if e["end"] > a and e["start"] < b]) for a, b in spans]


def partition(items: list[Item], unit_size: int) -> list[list[Item]]:
    """Deterministic work units of consecutive items; unit i becomes shard i."""
    return [items[i: i + unit_size] for i in range(0, len(items), unit_size)]
