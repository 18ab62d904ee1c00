"""`capflow synth-corpus DIR`: a small corpus in AudioSet's distributed formats, made of procedural sounds.

Layout written (the same files a real AudioSet download has):
    DIR/balanced_train_segments.csv   segment CSV (comment header, quoted label ids)
    DIR/eval_segments.csv             the same for the evaluation split
    DIR/class_labels_indices.csv      index,mid,display_name
    DIR/ontology.json                 the ontology nodes of the labels used
    DIR/audioset_train_strong.tsv     strong labels (segment_id, start, end, label)
    DIR/audio/{ytid}_{start_ms}.flac  the clips; a few listed clips are missing, a few are corrupt
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from shards.audio import Audio, write

SAMPLE_RATE = 16_000
# Label ids in AudioSet's "/t/..." style; they are ours, not AudioSet's ontology ids.
CLASSES = {
    "/t/cf_tone": "Sine tone",
    "/t/cf_chirp": "Chirp",
    "/t/cf_noise": "Noise burst",
    "/t/cf_click": "Clicking",
    "/t/cf_hum": "Hum",
}
# Parent classes, as AudioSet's ontology has them ("Music" above "Guitar"): weak labels list a class with
# its ancestors, strong labels the class only.
PARENTS = {
    "/t/cf_tonal": ("Tonal sound", ["/t/cf_tone", "/t/cf_chirp", "/t/cf_hum"]),
    "/t/cf_impulsive": ("Impulsive sound", ["/t/cf_click", "/t/cf_noise"]),
}
PARENT_OF = {child: mid for mid, (_, children) in PARENTS.items() for child in children}


def ontology_nodes() -> list[dict]:
    """The classes and their parents in ontology.json's format."""
    node = {"description": "", "citation_uri": "", "positive_examples": [], "restrictions": []}
    return ([{"id": mid, "name": name, **node, "child_ids": []} for mid, name in CLASSES.items()]
            + [{"id": mid, "name": name, **node, "child_ids": children} for mid, (name, children) in PARENTS.items()])


def label_name(mid: str) -> str:
    return CLASSES.get(mid) or PARENTS[mid][0]


def _event(kind: str, n: int, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    t = np.arange(n) / sample_rate
    if kind == "/t/cf_tone":
        sig = np.sin(2 * np.pi * rng.uniform(220, 1760) * t)
    elif kind == "/t/cf_chirp":
        f0, f1 = rng.uniform(200, 800), rng.uniform(1500, 5000)
        sig = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * max(t[-1], 1e-3))))
    elif kind == "/t/cf_noise":
        sig = rng.standard_normal(n) * 0.5
    elif kind == "/t/cf_click":
        sig = np.zeros(n)
        period = int(sample_rate / rng.uniform(4, 20))
        sig[::period] = 1.0
        sig = np.convolve(sig, np.exp(-np.arange(64) / 8.0), mode="same")
    else:  # hum: mains frequency and harmonics
        f = rng.choice([50.0, 60.0])
        sig = sum(np.sin(2 * np.pi * f * k * t) / k for k in (1, 2, 3, 4))
    ramp = min(n // 10, sample_rate // 50)
    env = np.ones(n)
    if ramp:
        env[:ramp], env[-ramp:] = np.linspace(0, 1, ramp), np.linspace(1, 0, ramp)
    return sig * env


def make_clip(rng: np.random.Generator, duration: float, single: bool = False
              ) -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    """A clip of 1-3 events (0.5-4 s each), or of one long event (3-8 s: room for edit groups around it)."""
    n = int(duration * SAMPLE_RATE)
    clip = rng.standard_normal(n) * 0.003  # faint background so no clip is digital silence
    events = []
    for _ in range(1 if single else rng.integers(1, 4)):
        kind = str(rng.choice(list(CLASSES)))
        length = rng.uniform(3.0, min(8.0, duration)) if single else rng.uniform(0.5, min(4.0, duration))
        start = round(rng.uniform(0, duration - length), 2)
        end = round(start + length, 2)
        a, b = int(start * SAMPLE_RATE), int(end * SAMPLE_RATE)
        clip[a:b] += rng.uniform(0.2, 0.5) * _event(kind, b - a, rng)
        events.append((start, end, kind))
    return (clip / max(1.0, np.abs(clip).max())).astype(np.float32), sorted(events)


def synth_corpus(directory: str | Path, num_clips: int = 24, num_missing: int = 2, num_corrupt: int = 2,
                 seed: int = 0, eval_share: float = 0.2, single_share: float = 0.5) -> Path:
    """Write the corpus; returns DIR. Deterministic for a given seed. Every 1/`eval_share`-th clip is listed in
    eval_segments.csv (AudioSet's evaluation split), the rest in balanced_train_segments.csv; `single_share` of
    the clips hold one long event (3-8 s), the others 1-3 shorter ones. Classes are drawn at random per clip, so
    sorted keys are not sorted by class."""
    directory = Path(directory)
    audio_dir = directory / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    segments, strong = [], []
    for i in range(num_clips + num_missing):
        ytid = f"syn{i:04d}{''.join(rng.choice(list('abcdefghijkLMNOPQ_-'), 3))}"
        start = float(rng.choice([0.0, 30.0, 70.5]))
        duration = 10.0 if i % 6 else 7.5  # AudioSet has some clips shorter than 10 s
        clip, events = make_clip(rng, duration, single=rng.random() < single_share)
        mids = sorted({m for _, _, m in events} | {PARENT_OF[m] for _, _, m in events})  # weak: with parents
        segments.append((ytid, start, start + duration, mids))
        start_ms = round(start * 1000)
        strong += [(f"{ytid}_{start_ms}", s, e, m) for s, e, m in events]
        path = audio_dir / f"{ytid}_{start_ms}.flac"
        if i >= num_clips:
            continue  # listed in the CSV, no audio file: a "missing" clip
        if i < num_corrupt:
            path.write_bytes(b"fLaC\x00\x00 this is not a flac stream" + rng.bytes(64))
        else:
            write(path, Audio(clip[None], SAMPLE_RATE))

    every = round(1 / eval_share) if eval_share else 0
    splits = {"balanced_train": [seg for i, seg in enumerate(segments) if not every or i % every != every - 1],
              "eval": [seg for i, seg in enumerate(segments) if every and i % every == every - 1]}
    for split, rows in splits.items():
        with open(directory / f"{split}_segments.csv", "w", newline="") as f:
            f.write("# Segments csv created by capflow synth-corpus\n")
            f.write(f"# num_ytids={len(rows)}, num_segs={len(rows)}, num_unique_labels={len(CLASSES) + len(PARENTS)}\n")
            f.write("# YTID, start_seconds, end_seconds, positive_labels\n")
            for ytid, s, e, mids in rows:
                f.write(f'{ytid}, {s:.3f}, {e:.3f}, "{",".join(mids)}"\n')
    with open(directory / "class_labels_indices.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "mid", "display_name"])
        for i, node in enumerate(ontology_nodes()):
            w.writerow([i, node["id"], node["name"]])
    (directory / "ontology.json").write_text(json.dumps(ontology_nodes(), indent=1))
    with open(directory / "audioset_train_strong.tsv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["segment_id", "start_time_seconds", "end_time_seconds", "label"])
        for seg, s, e, m in strong:
            w.writerow([seg, f"{s:.3f}", f"{e:.3f}", m])
    return directory


def synth_captioned_set(directory: str | Path, num_clips: int = 18, clips_per_shard: int = 6, seconds: float = 4.0,
                        eval_share: float = 1 / 3, seed: int = 0, weak_share: float = 0.0, duplicates: int = 0) -> Path:
    """A captioned audio shard set written directly (no models): procedural clips with their labels as the
    caption; single- and multi-event clips, 16 kHz mono and 22.05 kHz stereo; the last `eval_share` of the
    clips are AudioSet `eval` clips. Labels are AudioSet's structure: weak labels list each class with its
    parent (ontology_nodes()); `weak_share` of the clips have weak labels only (no strong ones), and some of
    those hold their event over the whole clip (it cannot be isolated) or are labelled by the parent class only. Even clips carry their AudioSet segment
    (ytid, start). `duplicates` more samples repeat the last clips' audio under AudioCaps-style keys in the
    train split (the same segment where the original has one). For tests and benchmarks of what reads such sets."""
    from shards import audio
    from shards import format as fmt
    from shards.manifest import open_shard_set, write_manifest
    from shards.writer import ShardWriter

    directory = Path(directory)
    rng = np.random.default_rng(seed)
    mids = list(CLASSES)
    open_shard_set(directory, {"synth_captioned_set": {"clips": num_clips, "seconds": seconds, "seed": seed,
                                                       "weak_share": weak_share, "duplicates": duplicates}})
    made = []
    for i in range(num_clips):
        kinds = [(i + k) % len(mids) for k in range(1 if i % 2 else 1 + i % 3)]
        weak = (i % 4) < round(4 * weak_share)
        whole = weak and len(kinds) == 1 and i % 5 == 4  # a stationary event over the whole clip
        sr, channels = (16_000, 1) if i % 3 else (22_050, 2)
        n = int(seconds * sr)
        wave = (rng.standard_normal((channels, n)) * 0.01).astype(np.float32)
        strong = []
        for k, kind in enumerate(kinds):
            start = 0.0 if whole else round(0.5 + k * (seconds - 1.5) / max(1, len(kinds)), 2)
            length = seconds if whole else 1.0
            a, b = int(start * sr), min(n, int((start + length) * sr))
            wave[:, a:b] += 0.3 * _event(mids[kind], b - a, rng, sr)
            strong.append({"label": CLASSES[mids[kind]], "start": start, "end": start + length})
        labels = sorted({CLASSES[mids[k]] for k in kinds} | {label_name(PARENT_OF[mids[k]]) for k in kinds})
        if weak and i % 7 == 3:  # labelled by the parent class only ("Music" without the instrument)
            labels = sorted({label_name(PARENT_OF[mids[k]]) for k in kinds})
        key = f"synth-clip{i:05d}"
        meta = {"key": key, "source": "synth", "id": f"clip{i:05d}", "duration": n / sr, "sample_rate": sr,
                "channels": channels, "labels": labels, "strong_labels": [] if weak else strong, "candidates": [],
                "captions": [" and ".join(CLASSES[mids[k]] for k in kinds).capitalize() + "."],
                "split": "eval" if i >= num_clips * (1 - eval_share) else "balanced_train"}
        if i % 2 == 0:
            meta |= {"ytid": f"yt{seed}x{i:05d}", "start": 30.0}
        made.append((key, meta, audio.encode_flac(audio.Audio(wave, sr))))
    for j in range(duplicates):
        _, meta, flac = made[num_clips - 1 - j]
        key = f"caps-clip{j:05d}"
        made.append((key, {**meta, "key": key, "source": "audiocaps", "id": f"clip{j:05d}", "split": "train"}, flac))
    for s in range(-(-len(made) // clips_per_shard)):
        with ShardWriter(directory, "audio", s) as writer:
            for key, meta, flac in made[s * clips_per_shard: (s + 1) * clips_per_shard]:
                writer.write(key, {fmt.META: meta, fmt.AUDIO: flac})
    write_manifest(directory)
    return directory
