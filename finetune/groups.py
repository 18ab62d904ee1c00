"""Planning edit groups: which background X and which single-event clips A, B make each group.

Deterministic: the plan depends only on the clip index and the seed, so a resumed job plans the same groups
and a unit's identity is the hash of its groups. Backgrounds have a caption and 1..N events (RFM-Editing:
at most three); A and B are single-event clips of distinct events, both absent from X, all three from the
same split. A's and B's events are drawn uniformly over the eligible event names (then a clip of that
event uniformly), so frequent classes such as speech and music do not crowd out the rest.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from dataclasses import dataclass

from shards.mix import seeded_rng

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


def event_length(clip: Clip) -> float:
    """Seconds of the clip's single event: its strong-label span, else the whole clip."""
    if clip.spans:
        start, end = next(iter(clip.spans.values()))
        return end - start
    return clip.duration


def plan_groups(clips: list[Clip], cfg: EditDataConfig) -> list[GroupPlan]:
    groups = []
    for split in ("train", "valid", "test"):
        pool = [c for c in clips if c.split == split]
        by_event: dict[str, list[Clip]] = defaultdict(list)
        for c in pool:
            if len(c.events) == 1 and event_length(c) >= cfg.min_event_seconds:
                by_event[c.events[0]].append(c)
        backgrounds = [c for c in pool if c.caption and 1 <= len(c.events) <= cfg.background_max_events]
        names = sorted(by_event)
        for x in backgrounds:
            allowed = [e for e in names if e not in x.events]
            for j in range(cfg.groups_per_background):
                rng = seeded_rng(cfg.seed, "group", x.key, j)
                if len(allowed) < 2:
                    break
                ea, eb = rng.choice(len(allowed), size=2, replace=False)
                # X never qualifies: its own events are not allowed
                a = by_event[allowed[ea]][int(rng.integers(len(by_event[allowed[ea]])))]
                b = by_event[allowed[eb]][int(rng.integers(len(by_event[allowed[eb]])))]
                groups.append(GroupPlan(f"{x.key}-{j}", split, x.ref(), a.ref(), b.ref()))
    if cfg.max_groups is not None and len(groups) > cfg.max_groups:
        # a fixed pseudo-random subset (by a hash of the key), so every split keeps its share
        groups = sorted(groups, key=lambda g: zlib.crc32(f"{cfg.seed}/keep/{g.key}".encode()))[: cfg.max_groups]
    return sorted(groups, key=lambda g: g.key)


def check_splits(groups) -> list[str]:
    """Clips that appear in groups of two splits (must be none); `groups` yields (split, clip keys)."""
    seen: dict[str, str] = {}
    problems = []
    for split, keys in groups:
        for key in keys:
            if seen.setdefault(key, split) != split:
                problems.append(f"clip {key} is in a {seen[key]} group and a {split} group")
    return problems
