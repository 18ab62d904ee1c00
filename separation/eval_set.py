"""Held-out synthetic mixtures for `capflow evaluate` (DCASE LASS style: two clips, SNR uniform in −15…15 dB,
the target's caption as the query, its labels when it has no caption).

Writes OUT/mixture/, OUT/target/, OUT/separated/ (WAV) and two manifests: `separations.jsonl` (the separator's
outputs: reference = target, source = mixture, for SDR/SDRi/SI-SDR/CLAP/CLAP-A/FAD) and `no_processing.jsonl`
(the mixture itself as the output: the paper's "No Processing" row).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from shards import audio
from shards.reader import SampleDecoder, make_pipeline

from .data import keyword_query, make_mixture
from .pipeline import LanguageSeparator


def separation_test_set(separator: LanguageSeparator, shards: str | Path, out: str | Path, mixtures: int = 100,
                        snr_db: tuple[float, float] = (-15.0, 15.0), seed: int = 0, progress: bool = True) -> Path:
    rate = separator.sample_rate
    decoder = SampleDecoder(sample_rate=rate, mono=True, duration=separator.chunk)
    pool = [s for s in make_pipeline(shards, decoder=decoder) if s["captions"] or s["meta"].get("labels")]
    if len(pool) < 2:
        raise ValueError(f"{shards}: need at least two decodable clips with captions or labels to mix")
    rng = random.Random(seed)
    out = Path(out)
    for sub in ("mixture", "target", "separated"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rows = []
    for i in tqdm(range(mixtures), desc="separating", unit="mixture", disable=not progress):
        target, other = rng.sample(pool, 2)
        mixture, clean = make_mixture(target, [other], rng.uniform(*snr_db), rate)
        query = rng.choice(target["captions"]) if target["captions"] else keyword_query(target["meta"]["labels"])
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
