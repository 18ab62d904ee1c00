"""`capflow demo`: the whole chain on the embedded default, offline, on one CPU machine.

synthetic AudioSet-format corpus -> tiny models -> caption on local Ray -> validate -> stats -> release
-> train the codec -> encode to latents -> pretrain "mask" -> pretrain "align" (init from the mask export) -> generate -> evaluate
-> edit groups from the captioned shards -> encode them -> fine-tune the instruction editor -> edit a clip
and the held-out groups -> evaluate the edits per operation -> Imagic edits (toward a text; inpainting) -> separation: query model,
separator (ACT), separate held-out mixtures and evaluate them against the no-processing row -> import a
release in EzAudio's own files and VAE structure (tiny, written by the demo), generate, encode with its VAE and
fine-tune from it -> the learning report (report.md: what the codec and the text-to-audio model learned).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from captioner.config import CaptionConfig
from captioner.job import run_caption_job
from captioner.synth import synth_corpus
from evaluation.evaluate import EvalConfig, evaluate
from finetune.config import EditDataConfig, FinetuneConfig
from finetune.edit_data import run_edit_data
from finetune.edit_eval import edit_test_set
from finetune.editor import InstructionEditor
from finetune.imagic import ImagicConfig, ImagicEditor
from finetune.train import run_finetune
from pretrain.codec_train import CodecTrainConfig, run_train_codec
from pretrain.config import PretrainConfig
from pretrain.encode import EncodeConfig, run_encode
from pretrain.ezaudio import import_ezaudio
from pretrain.pipeline import TextToAudio, bundle_objective
from pretrain.tiny import write_tiny_ezaudio
from pretrain.train import run_pretrain
from separation.config import SeparationConfig
from separation.eval_set import separation_test_set
from separation.pipeline import LanguageSeparator
from separation.train import run_separation
from shards import audio
from shards.config import load_config
from shards.release import release
from shards.stats import write_stats
from shards.validate import validate

from .learning import write_learning_report
from .tiny import write_all_tiny_models

log = logging.getLogger("capflow.demo")


def _step(n: int, text: str) -> None:
    log.info("[demo %d] %s", n, text)


def demo_caption_config(workdir: Path) -> CaptionConfig:
    """configs/caption/tiny.yaml's settings with every path under `workdir` (the file assumes ./demo)."""
    corpus, models = workdir / "corpus", workdir / "models"
    overrides = [f"source.audio_dir={corpus / 'audio'}",
                 f"source.segments=[{corpus / 'balanced_train_segments.csv'},{corpus / 'eval_segments.csv'}]",
                 f"source.class_labels={corpus / 'class_labels_indices.csv'}", f"source.ontology={corpus / 'ontology.json'}",
                 f"source.strong=[{corpus / 'audioset_train_strong.tsv'}]", f"output={workdir / 'shards' / 'audio'}",
                 f"alm.model={models / 'alm'}", f"clap.model={models / 'clap'}"]
    return load_config(CaptionConfig, _packaged("caption_tiny.yaml"), overrides)


def _packaged(name: str) -> Path:
    return Path(__file__).parent / "configs" / name


def demo_encode_config(workdir: Path) -> EncodeConfig:
    return load_config(EncodeConfig, _packaged("encode_tiny.yaml"), [
        f"input={workdir / 'shards' / 'audio'}", f"output={workdir / 'shards' / 'latent'}",
        f"codec.pretrained={workdir / 'runs' / 'codec' / 'export'}"])


def _steps(steps: int | None) -> list[str]:
    return [f"steps={steps}", f"save_every={steps}"] if steps else []


def demo_codec_config(workdir: Path, steps: int | None = None) -> CodecTrainConfig:
    return load_config(CodecTrainConfig, _packaged("codec_tiny.yaml"), [
        f"output_dir={workdir / 'runs' / 'codec'}", f"data.shards=[{workdir / 'shards' / 'audio'}]", *_steps(steps)])


def demo_edit_data_config(workdir: Path) -> EditDataConfig:
    return load_config(EditDataConfig, _packaged("edit_data_tiny.yaml"), [
        f"inputs=[{workdir / 'shards' / 'audio'}]", f"output={workdir / 'shards' / 'edit'}",
        f"ontology={workdir / 'corpus' / 'ontology.json'}", f"clap.model={workdir / 'models' / 'clap'}"])


def demo_finetune_config(workdir: Path) -> FinetuneConfig:
    return load_config(FinetuneConfig, _packaged("finetune_tiny_edit.yaml"), [
        f"output_dir={workdir / 'runs' / 'edit'}", f"init_from={workdir / 'runs' / 'align' / 'export'}",
        f"data.shards=[{workdir / 'shards' / 'edit-latent'}]", f"validation.clap_model={workdir / 'models' / 'clap'}"])


def demo_separation_config(workdir: Path, stage: str) -> SeparationConfig:
    overrides = [f"output_dir={workdir / 'runs' / f'sep-{stage}'}", f"data.shards=[{workdir / 'shards' / 'audio'}]",
                 f"separation.clap_model={workdir / 'models' / 'clap'}",
                 f"separation.ontology={workdir / 'corpus' / 'ontology.json'}"]
    if stage == "separator":
        overrides += [f"separation.ssl={workdir / 'models' / 'ssl'}",
                      f"separation.query_from={workdir / 'runs' / 'sep-query' / 'export'}"]
    return load_config(SeparationConfig, _packaged(f"separation_tiny_{stage}.yaml"), overrides)


def _decodes(path: Path) -> bool:
    try:
        audio.decode(path)
        return True
    except audio.AudioError:
        return False


def demo_pretrain_config(workdir: Path, stage: str, steps: int | None = None) -> PretrainConfig:
    overrides = [f"output_dir={workdir / 'runs' / stage}", f"data.shards=[{workdir / 'shards' / 'latent'}]", *_steps(steps)]
    if stage == "align":
        overrides += [f"validation.every={steps}"] if steps else []  # the validation run at the end, whatever the length
        overrides += [f"init_from={workdir / 'runs' / 'mask' / 'export'}",
                      f"text_encoder.pretrained={workdir / 'models' / 'flan-t5'}",
                      f"validation.clap_model={workdir / 'models' / 'clap'}"]
    return load_config(PretrainConfig, _packaged(f"pretrain_tiny_{stage}.yaml"), overrides)


@dataclass(frozen=True)
class DemoScale:
    """How much the demo trains. `make demo` runs FULL (about 10 min on 2 cores); the test suite QUICK, a
    shortened chain that still checks the learning margins. None: the packaged config's steps."""

    clips: int = 120  # enough single-event clips per class for the models to learn names
    codec_steps: int | None = None
    align_steps: int | None = None


FULL, QUICK = DemoScale(), DemoScale(clips=48, codec_steps=40, align_steps=100)
MARKER = ".capflow-demo"  # written into a demo folder: capflow may clear what it wrote there, nothing else
DEMO_PARTS = ("corpus", "models", "shards", "release", "runs", "generated", "eval", "edits", "separation", "ezaudio",
              "report", "report.md", "report.json")


def prepare_workdir(workdir: Path) -> None:
    """A fresh demo folder. An existing one is reused only if capflow made it (it holds the marker), and only
    the demo's own parts are cleared; a non-empty folder without the marker is refused, untouched."""
    if workdir.exists() and any(workdir.iterdir()) and not (workdir / MARKER).is_file():
        raise ValueError(f"--workdir {workdir} is not empty and is not a capflow demo folder (no {MARKER}); "
                         "choose a new or empty folder: the demo never deletes what it did not write")
    for part in DEMO_PARTS:
        path = workdir / part
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("written by `capflow demo`; the demo may clear its own parts here\n")


def run_demo(workdir: str | Path = "demo", scale: DemoScale = FULL) -> Path:
    workdir = Path(workdir)
    prepare_workdir(workdir)
    _step(1, f"synthetic AudioSet-format corpus -> {workdir / 'corpus'}")
    synth_corpus(workdir / "corpus", num_clips=scale.clips)
    _step(2, f"tiny random models -> {workdir / 'models'}")
    write_all_tiny_models(workdir / "models")

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
    release(shards_dir, workdir / "release", license="cc0-1.0", name="capflow-demo", overwrite=True)
    log.info("publish it with: hf upload YOUR_USER/capflow-demo %s . --repo-type dataset --exclude '.*' "
             "(or capflow shards release ... --push-to-hub YOUR_USER/capflow-demo)", workdir / "release")

    _step(7, f"train the codec (a tiny Oobleck VAE) on the captioned shards -> {workdir / 'runs' / 'codec'}")
    codec = run_train_codec(demo_codec_config(workdir, scale.codec_steps))
    scores = json.loads((codec / "capflow.json").read_text())["reconstruction"]
    log.info("held-out reconstruction: MR-STFT %.3f (untrained %.3f), SI-SDR %.1f dB (untrained %.1f dB)",
             scores["trained"]["mrstft"], scores["untrained"]["mrstft"], scores["trained"]["si_sdr"],
             scores["untrained"]["si_sdr"])
    _step(8, f"encode the captioned shards to VAE latents with it -> {workdir / 'shards' / 'latent'}")
    manifest = run_encode(demo_encode_config(workdir))
    log.info("%d latent clips in %d shards", manifest["num_samples"], manifest["num_shards"])
    for n, stage in ((9, "mask"), (10, "align")):
        _step(n, f"pretrain stage {stage!r} on the tiny preset -> {workdir / 'runs' / stage}")
        export = run_pretrain(demo_pretrain_config(workdir, stage, scale.align_steps if stage == "align" else None))

    _step(11, f"generate from the align export -> {workdir / 'generated'} (what the models learned: step 22)")
    t2a = TextToAudio.from_pretrained(export)
    prompts = ["A sine tone then a chirp.", "Clicking over a low hum.", "A burst of noise.", "A rising chirp."]
    waves = t2a.generate(prompts, steps=8, duration=2.0)
    generated = workdir / "generated"
    generated.mkdir(exist_ok=True)
    for i, wave in enumerate(waves):
        audio.write(generated / f"{i:02d}.wav", audio.Audio(wave.numpy(), t2a.codec.sample_rate))
    (generated / "prompts.jsonl").write_text("".join(json.dumps({"id": f"{i:02d}", "path": f"{i:02d}.wav",
                                                                 "caption": p}) + "\n" for i, p in enumerate(prompts)))
    _step(12, f"evaluate the generated clips against the corpus -> {workdir / 'eval'}")
    report = evaluate(EvalConfig(generated=str(generated / "prompts.jsonl"), reference=str(workdir / "corpus" / "audio"),
                                 models=str(workdir / "models"), metrics=["fd", "is", "fad", "clap"],
                                 out=str(workdir / "eval")))
    log.info("%s (random tiny backbones: the protocol is what runs)",
             ", ".join(f"{k} {v['value']:.3f}" for k, v in report["metrics"].items()))

    edit_cfg = demo_edit_data_config(workdir)
    _step(13, f"edit groups (add/remove/replace) from the captioned shards -> {edit_cfg.output}")
    summary = run_edit_data(edit_cfg)
    edit_stats = write_stats(edit_cfg.output)["edit"]
    log.info("%d groups (%s), %d triplets; SNR median %.1f dB", summary["ok"], summary["splits"],
             sum(edit_stats["triplets"].values()), edit_stats["snr_db"].get("p50", float("nan")))
    _step(14, f"encode the edit groups to latents -> {workdir / 'shards' / 'edit-latent'}")
    encode_edit = demo_encode_config(workdir).model_copy(update={  # normalised as the T2A model's latents
        "input": edit_cfg.output, "output": str(workdir / "shards" / "edit-latent"), "normalization_from": str(export)})
    run_encode(encode_edit)

    _step(15, f"fine-tune the align export into an instruction editor -> {workdir / 'runs' / 'edit'}")
    editor_dir = run_finetune(demo_finetune_config(workdir))
    editor = InstructionEditor.from_pretrained(editor_dir)
    _step(16, f"edit a clip and the held-out edit groups -> {workdir / 'edits'}")
    source = next(p for p in sorted((workdir / "corpus" / "audio").glob("*.flac")) if _decodes(p))
    editor.edit_file(source, workdir / "edits" / "remove_the_hum.wav", "Remove the hum", steps=4)  # streamed
    edits = edit_test_set(editor, edit_cfg.output, workdir / "edits" / "test", steps=4)
    _step(17, f"evaluate the edits per operation -> {workdir / 'edits' / 'eval'}")
    report = evaluate(EvalConfig(generated=str(edits), models=str(workdir / "models"), out=str(workdir / "edits" / "eval"),
                                 metrics=["clap", "clap_src", "lsd", "mel"]))  # FD per operation: see README
    log.info("edits: %s; %.3f s per edit (random tiny models: the protocol is what runs)",
             ", ".join(f"{op} CLAP {r['clap']['value']:.3f} LSD {r['lsd']['value']:.2f}" for op, r in report["groups"].items()),
             report["making_seconds_per_clip"])

    _step(18, "non-rigid (Imagic) edits on the align export: toward a text, and inpainting a span")
    imagic = ImagicEditor(t2a, ImagicConfig(embed_steps=10, tune_steps=10, lora_rank=4, etas=[0.4, 0.7, 1.0],
                                            clap_model=str(workdir / "models" / "clap")))
    clip = audio.decode(source)  # Imagic edits one clip of the model's length: the first 2 s of the source
    clip = audio.Audio(clip.samples[:, : round(t2a.sampler.duration * clip.sample_rate)], clip.sample_rate)
    result = imagic.edit(clip, "Sound of knocking on a door", steps=4)
    audio.write(workdir / "edits" / "imagic_knocking.wav", result.audio)
    log.info("imagic: eta %.1f chosen of %s by the text + audio CLAP sum", result.eta,
             ", ".join(f"{c['eta']:.1f}: {c['sum']:.3f}" for c in result.candidates))
    imagic.cfg = ImagicConfig(eta=0.7, embed_steps=10, tune_steps=10, lora_rank=4, inpaint=(1.0, 2.0), clap_model=None)
    filled = imagic.edit(clip, "Sound of a hum", steps=4)
    audio.write(workdir / "edits" / "imagic_inpaint_1-2s.wav", filled.audio)

    _step(19, "language-queried separation: train the query model, then the separator with ACT")
    query_export = run_separation(demo_separation_config(workdir, "query"))
    separator_export = run_separation(demo_separation_config(workdir, "separator"))
    _step(20, f"separate held-out mixtures and one file -> {workdir / 'separation'}")
    separator = LanguageSeparator.from_pretrained(separator_export)
    separator.separate_file(source, "clicking", workdir / "separation" / "clicking.wav",
                            residual=workdir / "separation" / "without_clicking.wav")  # streamed, file to file
    manifest = separation_test_set(separator, workdir / "shards" / "audio", workdir / "separation" / "test", mixtures=4,
                                   ontology=workdir / "corpus" / "ontology.json")
    for name in ("separations", "no_processing"):
        report = evaluate(EvalConfig(generated=str(manifest.with_name(f"{name}.jsonl")), models=str(workdir / "models"),
                                     metrics=["sdr", "sdri", "si_sdr", "clap", "clap_a"],
                                     out=str(workdir / "separation" / f"eval_{name}")))
        log.info("%s: %s", name.replace("_", " "), ", ".join(f"{k} {v['value']:.2f}" for k, v in report["metrics"].items()
                                                            if v.get("value") is not None))
    log.info("query model %s, separator %s", query_export, separator_export)

    _step(21, f"start from public weights: import a release in EzAudio's own files and structure (tiny, random, "
              f"written here), generate, encode the shards with its VAE and fine-tune from it -> {workdir / 'ezaudio'}")
    release_files = write_tiny_ezaudio(workdir / "ezaudio" / "release")
    bundle = import_ezaudio(release_files["dit"], release_files["vae"], workdir / "ezaudio" / "bundle",
                            text_encoder=str((workdir / "models" / "flan-t5").resolve()))
    ez = TextToAudio.from_pretrained(bundle)
    wave = ez.generate(["A sine tone then a chirp."], steps=8, duration=2.0)[0]
    audio.write(workdir / "ezaudio" / "generated.wav", audio.Audio(wave.numpy(), ez.codec.sample_rate))
    log.info("EzAudio-format bundle (objective %s, DDIM) generated %s", ez.objective.name, workdir / "ezaudio" / "generated.wav")
    # as configs/encode/ezaudio-vae.yaml: the bundle's own VAE, peak-normalised clips, posterior samples
    run_encode(demo_encode_config(workdir).model_copy(update={
        "output": str(workdir / "ezaudio" / "latent"), "peak_normalize": True, "normalization_from": str(bundle),
        "codec": demo_encode_config(workdir).codec.model_copy(update={"pretrained": str(bundle / "codec"),
                                                                       "sample_posterior": True})}))
    # fine-tuning from it continues in its objective (v-prediction): two steps of stage sft on those latents
    tuned = run_pretrain(load_config(PretrainConfig, _packaged("pretrain_tiny_align.yaml"), [
        "stage=sft", f"output_dir={workdir / 'ezaudio' / 'sft'}", f"init_from={bundle}", "steps=2", "save_every=2",
        f"data.shards=[{workdir / 'ezaudio' / 'latent'}]", f"text_encoder.pretrained={workdir / 'models' / 'flan-t5'}",
        "validation.every=0"]))
    log.info("fine-tuned it (2 steps of stage sft, objective %s) -> %s", bundle_objective(tuned).name, tuned)
    _step(22, f"what the models learned -> {workdir / 'report.md'}")
    report = write_learning_report(workdir, workdir / "runs" / "mask" / "export", workdir / "runs" / "align" / "export",
                                   workdir / "shards" / "latent", codec)
    for name in ("before", "after"):
        r = report[name]
        log.info("%s text training: generated latents classified by their prompt %.2f (real held-out %.2f, chance "
                 "%.2f); held-out loss right caption %.4f, wrong %.4f", name, r["generated_accuracy"],
                 r["real_accuracy"], 1 / len(r["classes"]), r["caption_margin"]["right"], r["caption_margin"]["wrong"])
    log.info("demo finished: everything is under %s", workdir)
    return workdir
