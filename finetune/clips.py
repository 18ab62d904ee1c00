"""The clips edit groups are made of: an index over captioned audio shard sets, their sound events, identities
and splits.

The index reads only the json members of each tar (seeking over the audio) and records where each clip's
FLAC lies (tar path, byte offset, size), so a worker on another machine reads exactly its clips' bytes.
Events are counted from strong labels where a clip has them, else from its weak labels, else by the label
LLM from the clip's best caption (`count_method`); AudioSet's ontology collapses a label with its ancestors
(Music + Guitar is one event). A single-event clip without a strong-label span has its event found by
activity detection on its audio (`span_method` `activity`; `none` when it cannot be isolated: such a clip is
never an A or B). A clip's identity is its AudioSet segment (ytid + start) where its metadata names one, else
a hash of its decoded audio: the same audio under two keys (AudioSet and AudioCaps) is one clip, in one split.
A clip cut from a longer recording (a source's `segment_seconds`: its metadata has `span`) is (recording, span):
its recording is the AudioSet segment or the file, and the splits are decided per recording, so no two
segments of one recording land in train and test.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from captioner.engines import Request, make_engine
from shards import audio
from shards import format as fmt
from shards.manifest import read_manifest
from shards.mix import event_span
from shards.ontology import Ontology
from shards.reader import iter_tar_index, read_member

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
    events: list[str]  # distinct event names, lower case, ancestors collapsed
    count_method: str  # strong | weak | llm
    spans: dict[str, tuple[float, float]] = field(default_factory=dict)  # event -> (first start, last end) s
    split: str = "train"
    source_split: str | None = None
    identity: str | None = None  # "segment:{ytid}_{start_ms}" or "audio:{sha1 of the decoded samples}" (+ "@{span ms}")
    recording: str | None = None  # what a segmented clip was cut from (its split is the recording's); None: itself
    span_method: str | None = None  # strong | activity | none (single-event clips)

    def ref(self) -> dict:
        """What a worker needs to read and describe the clip."""
        return {"key": self.key, "tar": self.tar, "offset": self.offset, "size": self.size, "caption": self.caption,
                "events": self.events, "count_method": self.count_method, "spans": self.spans,
                "duration": self.duration, "split": self.split, "identity": self.identity,
                "span_method": self.span_method}


def read_clip(ref: dict) -> audio.Audio:
    """A clip's audio, read from its byte range in its tar. FileNotFoundError if the tar is gone,
    AudioError if the bytes do not decode."""
    try:
        data = read_member(ref["tar"], (ref["offset"], ref["size"]))
    except EOFError as e:
        raise audio.AudioError(f"{ref['key']}: {e}") from None
    return audio.decode(data, name=f"{ref['key']}.{fmt.AUDIO}")


def segment_identity(meta: dict) -> str | None:
    """The AudioSet segment a clip is cut from, where its metadata says (AudioSet: ytid, start or segment_id;
    AudioCaps manifests: youtube_id, start_time)."""
    ytid, start = meta.get("ytid") or meta.get("youtube_id"), meta.get("start", meta.get("start_time"))
    if ytid and start is not None:
        return f"segment:{ytid}_{round(float(start) * 1000)}"
    return f"segment:{meta['segment_id']}" if meta.get("segment_id") else None


def clip_identity(meta: dict) -> tuple[str | None, str | None]:
    """(identity, recording) from a clip's metadata: a clip cut from a recording (`span`) is that recording at
    its span's start, the recording being its AudioSet segment or its file; otherwise (segment or None, None)."""
    segment, span = segment_identity(meta), meta.get("span")
    if not span:
        return segment, None
    recording = segment or f"file:{meta.get('source')}:{meta.get('path')}"
    return f"{recording}@{round(float(span[0]) * 1000)}", recording


def audio_identity(clip: audio.Audio) -> str:
    """A hash of the decoded samples at 16-bit precision (the same audio stored at another bit depth matches)."""
    pcm = np.round(np.clip(clip.samples, -1, 1) * 32767).astype("<i2")
    return f"audio:{hashlib.sha1(pcm.tobytes() + str(clip.sample_rate).encode()).hexdigest()}"


def _events_from_meta(meta: dict, ontology: Ontology) -> tuple[list[str], str, dict]:
    strong = meta.get("strong_labels") or []
    if strong:
        spans: dict[str, tuple[float, float]] = {}
        for e in strong:
            name = e["label"].lower()
            s, t = spans.get(name, (e["start"], e["end"]))
            spans[name] = (min(s, e["start"]), max(t, e["end"]))
        events = ontology.collapse(list(spans))
        merged = {}
        for event in events:  # an event's span covers its collapsed ancestors' spans (Music around Guitar)
            parts = [span for name, span in spans.items() if name in ontology.ancestors(event)]
            merged[event] = (min(p[0] for p in parts), max(p[1] for p in parts))
        return events, "strong", merged
    labels = ontology.collapse(meta.get("labels") or [])
    return (labels, "weak", {}) if labels else ([], "llm", {})
def scan_set(directory: str | Path, ontology: Ontology | None = None) -> list[Clip]:
    """Every ok clip of one captioned audio shard set (json members read, audio seeked over)."""
    directory, ontology = Path(directory), ontology or Ontology()
    manifest = read_manifest(directory)
    if manifest.get("kind", "audio") != "audio":
        raise ValueError(f"{directory}: edit data is made from captioned audio shard sets; this one is "
                         f"{manifest.get('kind')!r}")
    clips = []
    for entry in manifest["shards"]:
        path = (directory / entry["tar"]).resolve()
        for key, meta, members in iter_tar_index(path):
            if meta is None or fmt.AUDIO not in members:
                continue
            events, method, spans = _events_from_meta(meta, ontology)
            captions = meta.get("captions") or []
            offset, size = members[fmt.AUDIO]
            clips.append(Clip(key=key, tar=str(path), offset=offset, size=size,
                              duration=float(meta.get("duration") or 0.0), caption=captions[0] if captions else None,
                              events=events, count_method=method, spans=spans, source_split=meta.get("split"),
                              span_method="strong" if spans else None))
            clips[-1].identity, clips[-1].recording = clip_identity(meta)
    return clips


def assign_split(clips: list[Clip], cfg: SplitConfig, seed: int) -> str:
    """test / valid / train for the clips of one recording (or identity): test if any names a test source split
    (AudioSet `eval`), else valid if any names a valid one, else a hash of the recording (or identity)."""
    sources = {(c.source_split or "").lower() for c in clips}
    if sources & set(cfg.test_sources):
        return "test"
    if sources & set(cfg.valid_sources):
        return "valid"
    u = zlib.crc32(f"{seed}/split/{clips[0].recording or clips[0].identity or clips[0].key}".encode()) / 2**32
    return "test" if u < cfg.test else "valid" if u < cfg.test + cfg.valid else "train"


def analyze(clips: list[Clip], cfg: EditDataConfig, progress: bool = True) -> None:
    """Decode the clips that need it (in place): a hash identity for clips without an AudioSet segment, and the
    event span of single-event clips without a strong-label one. Threads: decoding releases the GIL."""
    todo = [c for c in clips if c.identity is None or (len(c.events) == 1 and c.span_method is None)]

    def one(clip: Clip) -> None:
        try:
            decoded = read_clip(clip.ref())
        except (OSError, audio.AudioError) as e:  # the worker reports it as a status row if the clip is used
            log.warning("%s: %s", clip.key, e)
            clip.identity = clip.identity or f"key:{clip.key}"
            return
        if clip.identity is None:
            clip.identity = audio_identity(decoded)
        if len(clip.events) == 1 and clip.span_method is None:
            span = event_span(decoded.samples, decoded.sample_rate, cfg.event_margin_db, cfg.max_event_fraction)
            clip.span_method = "activity" if span else "none"
            if span:
                clip.spans = {clip.events[0]: (span[0] / decoded.sample_rate, span[1] / decoded.sample_rate)}

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(tqdm(pool.map(one, todo), total=len(todo), desc="decoding clips (identity, event spans)", unit="clip",
                  disable=not progress or not todo))


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
    """The clips of every input set with events, identities and splits, one per identity (the first set's
    audio wins; a later copy fills a missing caption). Clips without labels have their events counted by the
    label LLM (`llm`, else one made from cfg.llm); with `llm: null` they are left out."""
    ontology = Ontology.load(cfg.ontology)
    by_key: dict[str, Clip] = {}
    for directory in tqdm(cfg.inputs, desc="indexing clips", unit="set", disable=not progress or len(cfg.inputs) < 2):
        for clip in scan_set(directory, ontology):
            by_key.setdefault(clip.key, clip)
    clips = list(by_key.values())  # input order: the first set first
    unlabeled = sum(c.count_method == "llm" for c in clips)
    if unlabeled and (llm is not None or cfg.llm is not None):
        count_with_llm(clips, llm or make_engine(cfg.llm), cfg.seed, progress=progress)
    elif unlabeled:
        log.info("%d clips have no labels and no LLM is configured: they are not used", unlabeled)
    clips = [c for c in clips if c.events]
    analyze(clips, cfg, progress)
    same: dict[str, list[Clip]] = {}
    for clip in clips:
        same.setdefault(clip.identity, []).append(clip)
    kept, recordings = [], {}
    for copies in same.values():
        first = copies[0]
        first.caption = first.caption or next((c.caption for c in copies if c.caption), None)
        recordings.setdefault(first.recording or first.identity, []).extend(copies)
        kept.append(first)
    splits = {name: assign_split(members, cfg.splits, cfg.seed) for name, members in recordings.items()}
    for first in kept:  # every segment of a recording in its recording's split
        first.split = splits[first.recording or first.identity]
    if len(kept) < len(clips):
        log.info("%d clips repeat the audio of another clip (same AudioSet segment or decoded audio): one of each "
                 "is used", len(clips) - len(kept))
    return sorted(kept, key=lambda c: c.key)
