"""`capflow demo`: the whole chain on the embedded default, offline, on one CPU machine.

synthetic AudioSet-format corpus -> tiny models -> caption on local Ray -> validate -> stats -> release
-> generate with an untrained tiny text-to-audio bundle.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from captioner.config import CaptionConfig
from captioner.job import run_caption_job
from captioner.synth import synth_corpus
from pretrain.pipeline import TextToAudio
from shards import audio
from shards.config import load_config
from shards.release import release
from shards.stats import write_stats
from shards.validate import validate

from .tiny import write_all_tiny_models

log = logging.getLogger("capflow.demo")


def _step(n: int, text: str) -> None:
    log.info("[demo %d] %s", n, text)


def demo_caption_config(workdir: Path) -> CaptionConfig:
    """configs/caption/tiny.yaml's settings with every path under `workdir` (the file assumes ./demo)."""
    corpus, models = workdir / "corpus", workdir / "models"
    overrides = [f"source.audio_dir={corpus / 'audio'}", f"source.segments=[{corpus / 'balanced_train_segments.csv'}]",
                 f"source.class_labels={corpus / 'class_labels_indices.csv'}", f"source.ontology={corpus / 'ontology.json'}",
                 f"source.strong=[{corpus / 'audioset_train_strong.tsv'}]", f"output={workdir / 'shards' / 'audio'}",
                 f"alm.model={models / 'alm'}", f"labels.engine.model={models / 'llm'}", f"clap.model={models / 'clap'}"]
    return load_config(CaptionConfig, Path(__file__).parent / "configs" / "caption_tiny.yaml", overrides)


def run_demo(workdir: str | Path = "demo") -> Path:
    workdir = Path(workdir)
    if workdir.exists():
        shutil.rmtree(workdir)
    _step(1, f"synthetic AudioSet-format corpus -> {workdir / 'corpus'}")
    synth_corpus(workdir / "corpus")
    _step(2, f"tiny random models -> {workdir / 'models'}")
    models = write_all_tiny_models(workdir / "models")

    cfg = demo_caption_config(workdir)
    shards_dir = Path(cfg.output)
    _step(3, f"caption on local Ray -> {shards_dir}")
    summary = run_caption_job(cfg)
    log.info("%d clips: %d ok, %d captions kept of %d candidates, failures %s", summary["clips"], summary["ok"],
             summary["captions_kept"], summary["candidates"], summary["failures"])
    _step(4, "validate the shard set")
    problems = validate(shards_dir)
    if problems:
        raise RuntimeError("demo shard set failed validation:\n" + "\n".join(map(str, problems)))
    _step(5, "stats and plots")
    stats = write_stats(shards_dir)
    log.info("%d clips, %.3f h, kept-caption CLAP mean %.3f", stats["samples"], stats["hours"],
             stats["kept_clap"].get("mean", float("nan")))
    _step(6, f"release as a Hugging Face dataset -> {workdir / 'release'}")
    release(shards_dir, workdir / "release", license="cc0-1.0", name="capflow-demo")

    _step(7, "generate with the untrained tiny text-to-audio bundle (noise expected; the path is what runs)")
    t2a = TextToAudio.from_pretrained(models["t2a-untrained"])
    wave = t2a.generate(["a dog barks twice"], steps=4, duration=2.0)
    audio.write(workdir / "generated_untrained.wav", audio.Audio(wave[0].numpy(), t2a.codec.sample_rate))
    log.info("demo finished: everything is under %s", workdir)
    return workdir
