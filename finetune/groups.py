"""Planning edit groups: which background X and which single-event clips A, B make each group.

Deterministic: the plan depends only on the clip index and the seed, so a resumed job plans the same groups
and a unit's identity is the hash of its groups. Backgrounds have a caption, 1..N events (RFM-Editing:
at most three) and at least `min_background_seconds`; A and B are single-event clips whose event is isolated
(a strong-label or detected span of at least `min_event_seconds`), of events unrelated to each other and to
every event of X in AudioSet's ontology (no "Add male speech" to a background with speech, so a "remove"
removes every sound of its kind), all three from the same split. A's and B's events are drawn uniformly over
the eligible event names (then a clip of that event uniformly), so frequent classes such as speech and music
do not crowd out the rest.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from dataclasses import dataclass

from shards.mix import seeded_rng
from shards.ontology import Ontology

from .clips import Clip
from .config import EditDataConfig


@dataclass
class GroupPlan:
    key: str  # `{X key}-{j}`
    split: str
    x: dict  # Clip.ref()
    a: dict
    b: dict

    @property
    def clips(self) -> list[str]:
        return [self.x["key"], self.a["key"], self.b["key"]]

    @property
    def identities(self) -> list[str]:
        """The audios the group is made of (AudioSet segment or decoded-audio hash; the key when unknown)."""
        return [r.get("identity") or r["key"] for r in (self.x, self.a, self.b)]


def event_length(clip: Clip) -> float:
    """Seconds of the clip's single event: its span (strong label or activity detection), 0 when not isolated."""
    if not clip.spans:
        return 0.0
    start, end = next(iter(clip.spans.values()))
    return min(end, clip.duration) - start


def plan_groups(clips: list[Clip], cfg: EditDataConfig) -> list[GroupPlan]:
    ontology = Ontology.load(cfg.ontology)
    groups = []
    for split in ("train", "valid", "test"):
        pool = [c for c in clips if c.split == split]
        by_event: dict[str, list[Clip]] = defaultdict(list)
        for c in pool:
            if len(c.events) == 1 and event_length(c) >= cfg.min_event_seconds:
                by_event[c.events[0]].append(c)
        backgrounds = [c for c in pool if c.caption and 1 <= len(c.events) <= cfg.background_max_events
                       and c.duration >= cfg.min_background_seconds]
        names = sorted(by_event)
        for x in backgrounds:
            allowed = [e for e in names if not ontology.overlaps([e], x.events)]  # X never qualifies
            for j in range(cfg.groups_per_background):
                rng = seeded_rng(cfg.seed, "group", x.key, j)
                ea = allowed[int(rng.integers(len(allowed)))] if allowed else None
                others = [e for e in allowed if not ontology.related(e, ea)] if ea else []
                if not others:
                    break
                eb = others[int(rng.integers(len(others)))]
                a = by_event[ea][int(rng.integers(len(by_event[ea])))]
                b = by_event[eb][int(rng.integers(len(by_event[eb])))]
                groups.append(GroupPlan(f"{x.key}-{j}", split, x.ref(), a.ref(), b.ref()))
    if cfg.max_groups is not None and len(groups) > cfg.max_groups:
        # a fixed pseudo-random subset (by a hash of the key), so every split keeps its share
        groups = sorted(groups, key=lambda g: zlib.crc32(f"{cfg.seed}/keep/{g.key}".encode()))[: cfg.max_groups]
    return sorted(groups, key=lambda g: g.key)


def check_splits(groups) -> list[str]:
    """Audios that appear in groups of two splits (must be none); `groups` yields (split, clip identities)."""
    seen: dict[str, str] = {}
    problems = []
    for split, keys in groups:
        for key in keys:
            if seen.setdefault(key, split) != split:
                problems.append(f"clip {key} is in a {seen[key]} group and a {split} group")
    return problems
