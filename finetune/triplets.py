"""Reading edit groups as training triplets: one ⟨source, target, instruction⟩ per draw.

A group stores three audios (x, xa, xb; latents x.npy, xa.npy, xb.npy after `capflow encode`) and yields
six triplets. Each draw picks an operation uniformly among add/remove/replace (of those with a triplet that
passes the read-time CLAP filter), then one of its passing triplets and one instruction wording, from a
generator seeded by (seed, key), so a resumed run draws the same. RFM-Editing's filter: both the source's
and the target's CLAP to their captions >= 0.35.
"""

from __future__ import annotations

import io
import json
import random
import zlib

import numpy as np

from shards import format as fmt
from shards.reader import make_pipeline

from .instructions import OPERATIONS, TRIPLETS


def passing(meta: dict, min_clap: float | None, operations=OPERATIONS) -> dict[str, list[str]]:
    """{operation: [triplet names]} whose source and target CLAP scores pass `min_clap` (None: all pass)."""
    clap = meta.get("clap") or {}
    out: dict[str, list[str]] = {}
    for name, (src, tgt, op) in TRIPLETS.items():
        if op not in operations:
            continue
        if min_clap is None or (clap.get(src, -1) >= min_clap and clap.get(tgt, -1) >= min_clap):
            out.setdefault(op, []).append(name)
    return out


def draw(meta: dict, rng: random.Random, min_clap: float | None, operations=OPERATIONS) -> dict | None:
    """One triplet of a group: {name, op, source, target, instruction, caption, source_caption}, or None when
    no triplet passes the filter."""
    ok = passing(meta, min_clap, operations)
    if not ok:
        return None
    op = rng.choice(sorted(ok))
    name = rng.choice(ok[op])
    src, tgt, _ = TRIPLETS[name]
    captions = meta.get("caption") or {}
    return {"name": name, "op": op, "source": src, "target": tgt, "instruction": rng.choice(meta["instructions"][name]),
            "caption": captions.get(tgt, ""), "source_caption": captions.get(src, "")}


class TripletDecoder:
    """Raw encoded edit-group sample -> one drawn triplet with its source and target latents."""

    def __init__(self, min_clap: float | None = 0.35, operations=OPERATIONS, seed: int = 0):
        self.min_clap, self.operations, self.seed = min_clap, tuple(operations), seed

    def _member(self, sample: dict, role: str) -> np.ndarray:
        ext = f"{role}.{fmt.LATENT}"
        if ext not in sample:
            raise ValueError(f"{sample.get('__url__')}: edit group {sample['__key__']} has no {ext} member (encode the "
                             "edit groups with `capflow encode`)")
        return np.load(io.BytesIO(sample[ext]), allow_pickle=False)

    def __call__(self, sample: dict) -> dict:
        key = sample["__key__"]
        if not fmt.KEY_RE.match(key) or fmt.META not in sample:
            raise ValueError(f"{sample.get('__url__')}: sample {key!r} is not an edit group (bad key or no json)")
        meta = json.loads(sample[fmt.META])
        if "instructions" not in meta:
            raise ValueError(f"{sample.get('__url__')}: sample {key!r} is not an edit group (no instructions); "
                             "train the editor on `capflow edit-data` output")
        triplet = draw(meta, random.Random(zlib.crc32(f"{self.seed}/{key}".encode())), self.min_clap, self.operations)
        out = {"key": key, "triplet": triplet, "split": meta.get("split")}
        if triplet is not None:
            out["source"] = self._member(sample, triplet["source"])
            out["target"] = self._member(sample, triplet["target"])
            out["valid_frames"] = int((meta.get("latent") or {}).get("valid_frames", out["target"].shape[-1]))
        return out


def triplet_pipeline(source, batch_size: int | None = None, decoder: TripletDecoder | None = None, **kwargs):
    """A webdataset pipeline of drawn triplets (groups with no passing triplet are skipped)."""
    return make_pipeline(source, batch_size, decoder=decoder or TripletDecoder(),
                         select=lambda s: s["triplet"] is not None, **kwargs)
