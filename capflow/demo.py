"""`capflow demo`: the whole chain on the embedded default, offline, on one CPU machine."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from captioner.sources import SourceConfig, load_items
from captioner.synth import synth_corpus
from pretrain.pipeline import TextToAudio
from shards import audio
from shards.format import META
from shards.manifest import open_shard_set, write_manifest
from shards.release import release
from shards.stats import write_stats
from shards.validate import validate
from shards.writer import ShardSetWriter

from .tiny import write_all_tiny_models

log = logging.getLogger("capflow.demo")


def _step(n: int, text: str) -> None:
    log.info("[demo %d] %s", n, text)


def pack_corpus(source: SourceConfig, out: Path, shard_size: int = 8) -> dict:
    """Corpus -> audio shards with labels (no captions yet): missing and corrupt clips become status rows."""
    open_shard_set(out, {"source": source.model_dump(mode="json"), "shard_size": shard_size})
    with ShardSetWriter(out, prefix="audio", max_count=shard_size) as writer:
        for item in load_items(source):
            if not item.path.is_file():
                writer.add_failure(item.key, "missing", f"no audio file {item.path}", item.meta())
                continue
            try:
                clip = audio.decode(item.path)
            except audio.AudioError as e:
                writer.add_failure(item.key, "unreadable", str(e), item.meta())
                continue
            meta = item.meta() | {"duration": clip.duration, "sample_rate": clip.sample_rate,
                                  "channels": clip.channels, "candidates": [], "captions": []}
            writer.write(item.key, {"flac": audio.encode_flac(clip), META: meta})
    return write_manifest(out)


def run_demo(workdir: str | Path = "demo") -> Path:
    workdir = Path(workdir)
    if workdir.exists():
        shutil.rmtree(workdir)
    _step(1, f"synthetic AudioSet-format corpus -> {workdir / 'corpus'}")
    corpus = synth_corpus(workdir / "corpus")
    source = SourceConfig(kind="audioset", audio_dir=str(corpus / "audio"),
                          segments=[str(corpus / "balanced_train_segments.csv")],
                          class_labels=str(corpus / "class_labels_indices.csv"),
                          strong=[str(corpus / "audioset_train_strong.tsv")])
    shards_dir = workdir / "shards"
    _step(2, f"pack the corpus into shards -> {shards_dir}")
    manifest = pack_corpus(source, shards_dir)
    log.info("%d shards, %d samples", manifest["num_shards"], manifest["num_samples"])
    _step(3, "validate the shard set")
    problems = validate(shards_dir)
    if problems:
        raise RuntimeError("demo shard set failed validation:\n" + "\n".join(map(str, problems)))
    _step(4, "stats and plots")
    stats = write_stats(shards_dir)
    log.info("%d clips, %.3f h, status %s", stats["samples"], stats["hours"], stats["status"])
    _step(5, f"release as a Hugging Face dataset -> {workdir / 'release'}")
    release(shards_dir, workdir / "release", license="cc0-1.0", name="capflow-demo")
    _step(6, f"tiny random models -> {workdir / 'models'}")
    models = write_all_tiny_models(workdir / "models")
    _step(7, "generate with the untrained tiny text-to-audio bundle (noise expected; the path is what runs)")
    t2a = TextToAudio.from_pretrained(models["t2a-untrained"])
    wave = t2a.generate(["a dog barks twice"], steps=4, duration=2.0)
    audio.write(workdir / "generated_untrained.wav", audio.Audio(wave[0].numpy(), t2a.codec.sample_rate))
    log.info("demo finished: everything is under %s", workdir)
    return workdir
