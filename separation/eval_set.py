"""Held-out synthetic mixtures for `capflow evaluate` (DCASE LASS style: two clips, SNR uniform in −15…15 dB,
the target's caption as the query, its labels when it has no caption; the two clips' labels unrelated in
AudioSet's ontology, as in training).

Streams: the shard set is indexed by its json members only and each mixture decodes just its two clips, so
the memory is one mixture's whatever the held-out set's size. Writes OUT/mixture/, OUT/target/,
OUT/separated/ (WAV) and two manifests: `separations.jsonl` (the separator's outputs: reference = target,
source = mixture, for SDR/SDRi/SI-SDR/CLAP/CLAP-A/FAD) and `no_processing.jsonl` (the mixture itself as the
output: the paper's "No Processing" row).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from shards import audio
from shards import format as fmt
from shards.ontology import Ontology
from shards.reader import iter_tar_index, read_member, select_captions, shard_urls

from .data import keyword_query, make_mixture, unrelated
from .pipeline import LanguageSeparator


def _index(shards: str | Path) -> list[dict]:
    """{key, meta, captions, tar, span} of every clip with audio and a caption or labels (no audio decoded)."""
    pool = []
    for url in shard_urls(shards):
        for key, meta, members in iter_tar_index(Path(url)):
            captions = select_captions(meta) if meta else []
            if meta and fmt.AUDIO in members and (captions or meta.get("labels")):
                pool.append({"key": key, "meta": meta, "captions": captions, "tar": url, "span": members[fmt.AUDIO]})
    return pool


def separation_test_set(separator: LanguageSeparator, shards: str | Path, out: str | Path, mixtures: int = 100,
                        snr_db: tuple[float, float] = (-15.0, 15.0), seed: int = 0, progress: bool = True,
                        ontology: str | Path | None = None) -> Path:
    rate, relation = separator.sample_rate, Ontology.load(ontology)
    pool = _index(shards)
    if len(pool) < 2:
        raise ValueError(f"{shards}: need at least two clips with captions or labels to mix")

    def decoded(item: dict) -> dict:
        clip = audio.load(read_member(item["tar"], item["span"]), sample_rate=rate, mono=True,
                          duration=separator.chunk, name=f"{item['key']}.{fmt.AUDIO}")
        return {**item, "audio": clip.samples}

    rng = random.Random(seed)
    out = Path(out)
    for sub in ("mixture", "target", "separated"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rows = []
    for i in tqdm(range(mixtures), desc="separating", unit="mixture", disable=not progress):
        for _ in range(100):  # a target with an unrelated partner (the pool's kinds decide how often)
            target = rng.choice(pool)
            if partners := unrelated(target, pool, relation):
                break
        else:
            raise ValueError(f"{shards}: no two clips with unrelated labels to mix (one kind of sound only?)")
        target, other = decoded(target), decoded(rng.choice(partners))
        mixture, clean = make_mixture(target, [other], rng.uniform(*snr_db), rate)
        query = (rng.choice(target["captions"]) if target["captions"]
                 else keyword_query(target["meta"]["labels"], relation))
        start = time.perf_counter()
        est = separator.separate_waves(torch.from_numpy(mixture)[None], [query])[0].float().cpu().numpy()
        seconds = time.perf_counter() - start
        name = f"{i:05d}"
        for sub, wave in (("mixture", mixture), ("target", clean), ("separated", est)):
            audio.write(out / sub / f"{name}.wav", audio.Audio(wave[None], rate))
        rows.append({"id": name, "caption": query, "reference": f"target/{name}.wav", "source": f"mixture/{name}.wav",
                     "seconds": round(seconds, 5), "target_key": target["key"], "other_key": other["key"]})
    (out / "separations.jsonl").write_text("".join(json.dumps({**r, "path": f"separated/{r['id']}.wav"}) + "\n"
                                                   for r in rows))
    (out / "no_processing.jsonl").write_text("".join(json.dumps({**r, "path": f"mixture/{r['id']}.wav"}) + "\n"
                                                     for r in rows))
    return out / "separations.jsonl"
