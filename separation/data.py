"""Training mixtures made on the fly from captioned audio shards (Hybrid-Sep §3.1), on pretrain's resumable
stream: each batch draws a pool of decoded chunks (cut at a random offset of each clip) and mixes them with a
generator seeded by their keys.

A mixture is either a keyword mixture (2–4 sources with labels; query: the target's labels, "guitar, bird and
speech") or a caption mixture (2 sources with captions; query: one of the target's captions); the two kinds
never share a mixture. No other source has a label related to a target label in AudioSet's ontology (the
same class, an ancestor or a descendant: no music under a guitar target): a target without enough such
sources in the pool gets fewer, and one without any is not used. The target-to-rest energy ratio is uniform
in `ratio_db` (loudness over active samples, shards/mix.py); one gain keeps mixture and target under full
scale. Shape legend: b batch, s samples.
"""

from __future__ import annotations

import logging
import random
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from pretrain.data import LatentBatches
from shards.mix import group_gain, loudness_db
from shards.ontology import Ontology
from shards.reader import SampleDecoder

log = logging.getLogger("capflow.separation")
MAX_REDRAWS = 8  # pools joined in a row before a stream of one kind of sound stops the run


def keyword_query(labels: list[str], ontology: Ontology | None = None) -> str:
    """"guitar, bird and speech": the most specific labels (a weak label's ancestors are implied)."""
    names = (ontology or Ontology()).collapse(labels)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def unrelated(target: dict, candidates: list[dict], ontology: Ontology) -> list[dict]:
    """The candidates that may sound beside the target: another clip, no label related to the target's."""
    labels = ontology.collapse(target["meta"].get("labels") or [])  # a weak label's parent is implied, not a sound
    return [s for s in candidates if s["key"] != target["key"]
            and not ontology.overlaps(labels, ontology.collapse(s["meta"].get("labels") or []))]


def make_mixture(target: dict, others: list[dict], ratio_db: float, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(mixture, target) mono float32 with 10·log10(E_target / E_rest) = ratio_db over active samples."""
    t = target["audio"][0]
    rest = np.sum([o["audio"][0] for o in others], axis=0)
    lt, lr = loudness_db(t[None], rate), loudness_db(rest[None], rate)
    gain = 10 ** ((lt - lr - ratio_db) / 20) if np.isfinite(lt) and np.isfinite(lr) else 1.0
    mixture = t + gain * rest
    g = group_gain(mixture, t)
    return (g * mixture).astype(np.float32), (g * t).astype(np.float32)


class NoMixture(ValueError):
    """A pool without two sounds that may be mixed (all of one kind, say): the stream draws more samples."""


def draw_mixtures(pool: list[dict], count: int, rng: random.Random, cfg, ontology: Ontology | None = None) -> list[dict]:
    """`count` mixtures from a pool of decoded samples ({key, audio (1, s), captions, meta}); NoMixture when
    the pool holds no target with an unrelated source."""
    ontology = ontology or Ontology()
    labeled = [s for s in pool if s["meta"].get("labels")]
    captioned = [s for s in pool if s["captions"]]
    out = []
    for _ in range(count):
        kind = "caption" if (rng.random() < cfg.caption_prob and len(captioned) > 1) or len(labeled) < 2 else "keyword"
        candidates = captioned if kind == "caption" else labeled
        targets = rng.sample(candidates, len(candidates))  # tried in a random order
        target, others_pool = next(((t, o) for t in targets if (o := unrelated(t, candidates, ontology))), (None, []))
        if target is None:
            raise NoMixture(f"no clip of a pool of {len(pool)} can be mixed with another of unrelated labels")
        n = 1 if kind == "caption" else rng.randint(cfg.sources[0] - 1, cfg.sources[1] - 1)
        others = rng.sample(others_pool, min(n, len(others_pool)))
        ratio = rng.uniform(*cfg.ratio_db)
        mixture, tgt = make_mixture(target, others, ratio, cfg.sample_rate)
        query = (rng.choice(target["captions"]) if kind == "caption"
                 else keyword_query(target["meta"]["labels"], ontology))
        out.append({"mixture": mixture, "target": tgt, "query": query, "kind": kind, "ratio_db": ratio,
                    "key": target["key"], "others": [o["key"] for o in others]})
    return out


def check_mixable(shard_sets: list[str], ontology: Ontology) -> None:
    """Refuse, before training starts, data from which no mixture can ever be made: no two clips (both labeled,
    or both captioned) without related labels, read from the shard sets' parquet sidecars (remote sets are
    left to the stream)."""
    import pyarrow.parquet as pq

    from shards import format as fmt

    kinds: dict[str, dict[tuple, int]] = {"labels": {}, "captions": {}}  # collapsed label set -> clips
    local = [Path(s) for s in shard_sets if Path(s).is_dir()]
    for path in sorted(p for d in local for p in d.glob(f"*{fmt.SIDECAR_SUFFIX}")):
        for row in pq.read_table(path, columns=["status", "labels", "captions"]).to_pylist():
            if row["status"] != fmt.STATUS_OK:
                continue
            labels = tuple(ontology.collapse(row["labels"] or []))
            for kind in kinds:
                if row[kind]:
                    kinds[kind][labels] = kinds[kind].get(labels, 0) + 1
    if not local:
        return

    def pair(sets: dict[tuple, int]) -> bool:
        items = list(sets.items())[:2000]  # a mixable set shows a pair among its first label sets
        return any(n > 1 and not labels for labels, n in items) or any(
            not ontology.overlaps(a, b) for i, (a, _) in enumerate(items) for b, _ in items[i + 1:])

    if not any(pair(sets) for sets in kinds.values()):
        raise ValueError(f"{', '.join(map(str, local))}: no two clips can be mixed (separation needs clips with "
                         "labels or captions, of more than one kind of sound, unrelated in the ontology)")


class MixtureBatches(LatentBatches):
    """Batches of {mixture (b, s), target (b, s), query, kind, key}; `separation.pool` chunks per mixture."""

    redraws = 0  # pools that could not mix and were joined with the next one (in this worker)

    def decoder(self, seed: int):
        s = self.cfg.separation
        return SampleDecoder(sample_rate=s.sample_rate, mono=True, duration=s.chunk, decode_audio=True,
                             crop_seed=seed if s.crop == "random" else None)

    def select(self):
        return None

    def samples_per_batch(self) -> int:
        return self.cfg.data.micro_batch_size * self.cfg.separation.pool

    def batches(self, collated: Iterator[dict]) -> Iterator[dict]:
        """A pool that cannot make a mixture (a small shuffle buffer's run of one class) is carried over and
        joined with the next one, at most MAX_REDRAWS times in a row; each time is logged. Deterministic, so a
        resumed stream draws the same batches. `check_mixable` refused a data set that can never mix before
        training started."""
        carried: list[dict] = []
        for batch in collated:
            pool = carried + [{"key": k, "audio": a.numpy() if hasattr(a, "numpy") else a, "captions": c, "meta": m}
                              for k, a, c, m in zip(batch["key"], batch["audio"], batch["captions"], batch["meta"])]
            try:
                yield self.mix(pool)
                carried = []
            except NoMixture as e:
                self.redraws += 1
                if len(pool) > MAX_REDRAWS * self.samples_per_batch():
                    raise ValueError(f"{e}, after {MAX_REDRAWS} more draws: the stream yields sounds of one kind "
                                     "only; raise data.shuffle or separation.pool") from None
                log.warning("%s: drawing more samples (%d redraws so far in this worker)", e, self.redraws)
                carried = pool

    def mix(self, pool: list[dict]) -> dict:
        rng = random.Random(zlib.crc32(("/".join(s["key"] for s in pool) + f"/{self.cfg.seed}").encode()))
        mixtures = draw_mixtures(pool, self.cfg.data.micro_batch_size, rng, self.cfg.separation,
                                 Ontology.load(self.cfg.separation.ontology))
        target = torch.from_numpy(np.stack([m["target"] for m in mixtures]))
        return {"mixture": torch.from_numpy(np.stack([m["mixture"] for m in mixtures])), "target": target,
                "query": [m["query"] for m in mixtures], "kind": [m["kind"] for m in mixtures],
                "key": [m["key"] for m in mixtures]}
