"""The clips edit groups are made of: an index over captioned audio shard sets, their sound events and splits.

The index reads only the json members of each tar (seeking over the audio) and records where each clip's
FLAC lies (tar path, byte offset, size), so a worker on another machine reads exactly its clips' bytes.
Events are counted from strong labels where a clip has them, else from its weak labels, else by the label
LLM from the clip's best caption; `count_method` records which.
"""

from __future__ import annotations

import json
import logging
import re
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from captioner.engines import Request, make_engine
from shards import format as fmt
from shards.manifest import read_manifest

from .config import EditDataConfig, SplitConfig

log = logging.getLogger(__name__)

EVENTS_PROMPT = ("List the distinct sound sources or sound events in this audio caption, one short noun phrase "
                 "per line, nothing else.\nCaption: {caption}")


@dataclass
class Clip:
    key: str
    tar: str  # absolute path of the tar holding the clip
    offset: int  # byte offset of its FLAC member's data in the tar
    size: int
    duration: float
    caption: str | None  # the best kept caption
    events: list[str]  # distinct event names, lower case
    count_method: str  # strong | weak | llm
    spans: dict[str, tuple[float, float]] = field(default_factory=dict)  # event -> (first start, last end) s
    split: str = "train"
    source_split: str | None = None

    def ref(self) -> dict:
        """What a worker needs to read and describe the clip."""
        return {"key": self.key, "tar": self.tar, "offset": self.offset, "size": self.size, "caption": self.caption,
                "events": self.events, "count_method": self.count_method, "spans": self.spans,
                "duration": self.duration, "split": self.split}


def _events_from_meta(meta: dict) -> tuple[list[str], str, dict]:
    strong = meta.get("strong_labels") or []
    if strong:
        spans: dict[str, tuple[float, float]] = {}
        for e in strong:
            name = e["label"].lower()
            s, t = spans.get(name, (e["start"], e["end"]))
            spans[name] = (min(s, e["start"]), max(t, e["end"]))
        return sorted(spans), "strong", spans
    labels = sorted({label.lower() for label in meta.get("labels") or []})
    return (labels, "weak", {}) if labels else ([], "llm", {})


def scan_set(directory: str | Path) -> list[Clip]:
    """Every ok clip of one captioned audio shard set (json members read, audio seeked over)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest.get("kind", "audio") != "audio":
        raise ValueError(f"{directory}: edit data is made from captioned audio shard sets; this one is "
                         f"{manifest.get('kind')!r}")
    clips = []
    for entry in manifest["shards"]:
        path = (directory / entry["tar"]).resolve()
        flac: dict[str, tuple[int, int]] = {}
        metas: dict[str, dict] = {}
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                if ext == fmt.AUDIO:
                    flac[key] = (info.offset_data, info.size)
                elif ext == fmt.META:
                    metas[key] = json.loads(tar.extractfile(info).read())
        for key, meta in metas.items():
            if key not in flac:
                continue
            events, method, spans = _events_from_meta(meta)
            captions = meta.get("captions") or []
            clips.append(Clip(key=key, tar=str(path), offset=flac[key][0], size=flac[key][1],
                              duration=float(meta.get("duration") or 0.0), caption=captions[0] if captions else None,
                              events=events, count_method=method, spans=spans, source_split=meta.get("split")))
    return clips


def assign_split(clip: Clip, cfg: SplitConfig, seed: int) -> str:
    """test / valid / train for one clip: its source split if that names one, else a hash of its key."""
    source = (clip.source_split or "").lower()
    if source in cfg.test_sources:
        return "test"
    if source in cfg.valid_sources:
        return "valid"
    u = zlib.crc32(f"{seed}/split/{clip.key}".encode()) / 2**32
    return "test" if u < cfg.test else "valid" if u < cfg.test + cfg.valid else "train"


def parse_events(text: str) -> list[str]:
    """The LLM's one-phrase-per-line answer -> distinct lower-case event names."""
    names = []
    for line in text.splitlines():
        name = re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", line).strip().strip(".").lower()
        if name and len(name) <= 60 and name not in names:
            names.append(name)
    return names


def count_with_llm(clips: list[Clip], engine, seed: int, batch: int = 64, progress: bool = True) -> None:
    """Fill `events` of label-less clips from their captions with the label LLM (in place)."""
    todo = [c for c in clips if c.count_method == "llm" and c.caption]
    for start in tqdm(range(0, len(todo), batch), desc="counting events (LLM)", unit="batch", disable=not progress):
        chunk = todo[start: start + batch]
        answers = engine.generate([Request(EVENTS_PROMPT.format(caption=c.caption), None, seed, 1) for c in chunk])
        for clip, texts in zip(chunk, answers):
            clip.events = parse_events(texts[0] if texts else "")


def index_clips(cfg: EditDataConfig, llm=None, progress: bool = True) -> list[Clip]:
    """The clips of every input set, deduplicated by key (the first set's audio wins; a later set fills a
    missing caption), with events and splits. Clips without labels have their events counted by the label
    LLM (`llm`, else one made from cfg.llm); with `llm: null` they are left out."""
    by_key: dict[str, Clip] = {}
    duplicates = 0
    for directory in tqdm(cfg.inputs, desc="indexing clips", unit="set", disable=not progress or len(cfg.inputs) < 2):
        for clip in scan_set(directory):
            if clip.key in by_key:
                duplicates += 1
                if by_key[clip.key].caption is None:
                    by_key[clip.key].caption = clip.caption
                continue
            by_key[clip.key] = clip
    if duplicates:
        log.info("%d clips appear in more than one input set; the first set's audio is used", duplicates)
    clips = sorted(by_key.values(), key=lambda c: c.key)
    unlabeled = sum(c.count_method == "llm" for c in clips)
    if unlabeled and (llm is not None or cfg.llm is not None):
        count_with_llm(clips, llm or make_engine(cfg.llm), cfg.seed, progress=progress)
    elif unlabeled:
        log.info("%d clips have no labels and no LLM is configured: they are not used", unlabeled)
    for clip in clips:
        clip.split = assign_split(clip, cfg.splits, cfg.seed)
    return [c for c in clips if c.events]
