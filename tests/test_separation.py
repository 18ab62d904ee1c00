"""Language-queried separation (separation/): PQMF, shapes, the query model learns, a tiny separator reaches a
positive SDRi, ACT resumes exactly with both optimizers, and the bundle holds neither discriminator nor denoiser."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from evaluation.metrics import sdr_improvement
from pretrain.checkpoint import list_checkpoints
from separation.config import SeparationConfig
from separation.data import make_mixture
from separation.embedder import Embedder
from separation.model import Separator, preset
from separation.pipeline import LanguageSeparator
from separation.pqmf import PQMF
from separation.train import QueryTrainer, SeparatorTrainer, run_separation
from shards import audio
from shards.reader import SampleDecoder, make_pipeline
from tests.helpers import two_class_set


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("separation")
    return two_class_set(root / "train", clips=32), two_class_set(root / "test", clips=8, seed=1)


def _cfg(out, shards, tiny_models, stage="separator", steps=4, **separation) -> SeparationConfig:
    return SeparationConfig.model_validate({
        "stage": stage, "output_dir": str(out), "tensorboard": False, "steps": steps, "batch_size": 8,
        "save_every": max(2, steps // 2) if steps <= 4 else steps, "log_every": 25,
        "data": {"shards": [str(shards)], "micro_batch_size": 8, "num_workers": 0, "shuffle": 16},
        "optim": {"lr": 3e-3, "betas": (0.8, 0.99), "warmup_steps": 10, "schedule": "constant"},
        "ema": {"decay": 0.95}, "validation": {"every": 0},
        "separation": {"clap_model": str(tiny_models["clap"]), "chunk": 0.5, "caption_prob": 0.0,
                       "sources": (2, 2), "ratio_db": (-5.0, 5.0), **separation}})


def _held_out(test_set):
    items = list(make_pipeline(str(test_set), decoder=SampleDecoder(sample_rate=16000, mono=True, duration=0.5)))
    tones = [i for i in items if i["meta"]["labels"] == ["Sine tone"]]
    noises = [i for i in items if i["meta"]["labels"] == ["Noise burst"]]
    for a, b in zip(tones, noises):
        for target, other in ((a, b), (b, a)):
            mixture, clean = make_mixture(target, [other], 0.0, 16000)
            yield mixture, clean, target["meta"]["labels"][0].lower()


def test_pqmf_reconstructs_and_the_separator_keeps_any_length():
    pqmf = PQMF()
    x = torch.randn(2, 16003)
    y = pqmf.synthesise(pqmf.analyse(x), x.shape[-1])
    inner = slice(64, -64)  # the filters' edges
    snr = 10 * torch.log10((x[:, inner] ** 2).mean() / ((y - x)[:, inner] ** 2).mean())
    assert y.shape == x.shape and snr > 55  # measured: 64 dB
    asm = Separator(preset("tiny", ssl_dim=32)).eval()
    for n in (333, 8000, 12345):
        with torch.no_grad():
            est, spec, cond = asm(torch.randn(2, n), torch.randn(2, 512), torch.randn(2, 7, 32))
        assert est.shape == (2, n) and spec.shape[1] == 8 and cond.shape[1] == 4 * asm.config.cond_dim


def test_ssl_features_are_computed_on_the_device_as_the_extractor_would(tiny_models):
    """The SSL branch resamples and normalises the batch on the encoder's device: the same features as the
    model's own feature extractor given each clip resampled by soxr (on a GPU, shards/sinc.py's method,
    tested against soxr)."""
    from separation.ssl import SSLEncoder

    ssl = SSLEncoder(str(tiny_models["ssl"]))
    waves = torch.randn(3, 22050) * torch.tensor([[0.1], [1.0], [3.0]])
    with torch.no_grad():
        clips = [audio.resample(audio.Audio(w[None], 22050), 16000).samples[0] for w in waves.numpy()]
        inputs = ssl.extractor(clips, sampling_rate=16000, return_tensors="pt")
        expected = ssl.model(**inputs).last_hidden_state
    torch.testing.assert_close(ssl(waves, 22050), expected, atol=1e-5, rtol=1e-4)


def test_query_model_takes_the_mixtures_clap_embedding_unless_ablated():
    from separation.query import QueryModel, preset

    torch.manual_seed(0)
    text, mixture, mix_a, mix_b = torch.randn(2, 512), torch.randn(2, 8000), torch.randn(2, 512), torch.randn(2, 512)
    model = QueryModel(preset("tiny")).eval()
    with torch.no_grad():
        assert not torch.allclose(model(text, mixture, mix_a), model(text, mixture, mix_b))  # §2.1: an input
        with pytest.raises(ValueError, match="mixture's CLAP audio embedding"):
            model(text, mixture)
        ablated = QueryModel(preset("tiny", mixture_embedding=False)).eval()
        assert ablated(text, mixture).shape == (2, 512) and not hasattr(ablated.mixture_in, "weight")


@pytest.mark.timeout(300)
def test_query_model_predicts_the_target_embedding_better_than_the_mean_target(tmp_path, tiny_models, data):
    trainer = QueryTrainer(_cfg(tmp_path / "q", data[0], tiny_models, stage="query", steps=90))
    trainer.train()
    embed = Embedder(str(tiny_models["clap"]), "cpu")
    model = trainer.unwrapped.eval()
    preds, targets = [], []
    for mixture, clean, query in _held_out(data[1]):
        targets.append(embed.audio(torch.from_numpy(clean)[None], 16000))
        mix = torch.from_numpy(mixture)[None]
        with torch.no_grad():
            preds.append(model(embed.texts([query]), mix, embed.audio(mix, 16000)))
    targets, preds = torch.cat(targets), torch.cat(preds)
    # the constant a model ignoring text and mixture would learn: the mean target embedding of the training clips
    train_mean = torch.cat([embed.audio(torch.from_numpy(clean)[None], 16000) for _, clean, _ in _held_out(data[0])]).mean(0)
    mean_err = float((train_mean - targets).abs().mean())
    pred_err = float((preds - targets).abs().mean())
    print(f"query model error {pred_err:.4f}, mean-target baseline {mean_err:.4f}")
    assert pred_err < mean_err, (pred_err, mean_err)
    assert (trainer.out / "export" / "query" / "model.safetensors").is_file()


@pytest.mark.timeout(300)
def test_two_stage_bundle_separates_with_the_query_models_embedding(tmp_path, tiny_models, data):
    query_export = run_separation(_cfg(tmp_path / "q", data[0], tiny_models, stage="query", steps=2))
    export = run_separation(_cfg(tmp_path / "s", data[0], tiny_models, steps=2, query_from=str(query_export),
                                 act={"adversarial": 0.0, "denoiser": False}))
    separator = LanguageSeparator.from_pretrained(export)
    assert not separator.one_stage and separator.query is not None
    mixture = torch.from_numpy(next(_held_out(data[1]))[0])[None]
    out = separator.separate_waves(mixture, ["sine tone"])
    text = separator.clap.texts(["sine tone"])
    with torch.no_grad():  # by hand: CLAP text + the mixture's CLAP audio embedding + its frames -> query model -> separator
        emb = separator.query(text, mixture, separator.clap.audio(mixture, 16000))
        expected = separator.asm(mixture, emb, None)[0]
        text_only = separator.asm(mixture, text, None)[0]
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, text_only)  # the text embedding alone is the one-stage path, not this one
    assert not torch.allclose(out, separator.separate_waves(mixture, ["noise burst"]))
    # --dtype bf16 (the CUDA default) autocasts the query model and the separator: close to fp32, not it
    bf16 = LanguageSeparator.from_pretrained(export, dtype="bf16").separate_waves(mixture, ["sine tone"])
    snr = 10 * torch.log10(out.pow(2).sum() / (bf16 - out).pow(2).sum())
    assert bf16.dtype == torch.float32 and separator.dtype == "fp32" and 20 < snr < 100, snr


@pytest.mark.timeout(400)
def test_tiny_separator_reaches_a_positive_sdri_and_separates_files(tmp_path, tiny_models, data, monkeypatch):
    # the ACT ablations off (no discriminator, no denoiser) to fit a CPU test: L1 alone trains the mask
    export = run_separation(_cfg(tmp_path / "s", data[0], tiny_models, steps=100, one_stage=True,
                                 act={"adversarial": 0.0, "denoiser": False}))
    separator = LanguageSeparator.from_pretrained(export)
    gains = [sdr_improvement(clean, separator.separate_waves(torch.from_numpy(mix)[None], [query])[0].numpy(), mix)
             for mix, clean, query in _held_out(data[1])]
    assert np.mean(gains) > 0.5, gains  # measured: 3.6 dB after 150 steps, 2.7 after 100
    clip = audio.Audio(np.random.default_rng(0).standard_normal((2, 22050 * 2)).astype(np.float32) * 0.1, 22050)
    target, rest = separator.separate(clip, "sine tone")  # stereo, another rate, longer than the 0.5-s chunk
    assert target.samples.shape == clip.samples.shape and target.sample_rate == 22050
    assert rest.samples.shape == clip.samples.shape
    # a file is streamed (here in 0.3-s blocks) to the same separation; target + residual = mixture as written
    monkeypatch.setattr(audio, "BLOCK_SECONDS", 0.3)
    audio.write(tmp_path / "mix.wav", clip)
    separator.separate_file(tmp_path / "mix.wav", "sine tone", tmp_path / "t.wav", tmp_path / "r.wav")
    written = audio.decode(tmp_path / "t.wav").samples
    np.testing.assert_allclose(written, target.samples, atol=1e-5)
    np.testing.assert_allclose(written + audio.decode(tmp_path / "r.wav").samples, clip.samples, atol=1e-6)


@pytest.mark.timeout(300)
def test_act_resumes_exactly_with_both_optimizers_and_exports_only_the_separator(tmp_path, tiny_models, data):
    kw = {"ssl": str(tiny_models["ssl"]), "one_stage": True}
    run_separation(_cfg(tmp_path / "full", data[0], tiny_models, **kw))
    run_separation(_cfg(tmp_path / "part", data[0], tiny_models, steps=2, **kw).model_copy(update={"save_every": 2}))
    resumed = SeparatorTrainer(_cfg(tmp_path / "part", data[0], tiny_models, **kw), resume="latest")
    assert resumed.state.step == 2 and resumed.discriminator is not None
    export = resumed.train()
    # separator + denoiser (the trained module, once: dit_raw), and the discriminator (accelerate's file)
    for name in ("dit_raw/model.safetensors", "model.safetensors"):
        a = load_file(list_checkpoints(tmp_path / "full")[-1] / name)
        b = load_file(list_checkpoints(tmp_path / "part")[-1] / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        assert any(k.startswith("cd.") for k in a) if name.startswith("dit_raw") else any("scales" in k for k in a)
    for name in ("optimizer.bin", "optimizer_1.bin"):  # both optimizers are in the checkpoint
        assert (list_checkpoints(tmp_path / "part")[-1] / name).is_file()
    weights = load_file(export / "separator" / "model.safetensors")
    assert weights and not any(k.startswith(("cd.", "disc", "scales")) for k in weights)
    # the separator, and the local CLAP and SSL encoder it needs (a bundle is self-contained); no discriminator
    assert sorted(p.name for p in export.iterdir()) == ["capflow.json", "clap", "separator", "ssl", "training_config.yaml"]
    LanguageSeparator.from_pretrained(export)  # one-stage: no query model needed


def test_separation_refuses_the_validation_it_would_ignore():
    from separation.config import SeparationConfig

    data = {"data": {"shards": ["audio-set"]}}
    assert SeparationConfig.model_validate(data).validation.every == 0
    with pytest.raises(ValueError, match="validation.every: 5 would be ignored"):
        SeparationConfig.model_validate({**data, "validation": {"every": 5}})


def test_mixtures_never_pair_related_labels_and_drop_rather_than_overlap(tmp_path):
    import json
    import random

    from captioner.synth import ontology_nodes
    from separation.config import SeparationSection
    from separation.data import draw_mixtures
    from shards.ontology import Ontology

    (tmp_path / "ontology.json").write_text(json.dumps(ontology_nodes()))
    ontology = Ontology.load(tmp_path / "ontology.json")

    def clip(key, labels):
        return {"key": key, "audio": np.random.default_rng(len(key)).standard_normal((1, 1600)).astype(np.float32) * 0.1,
                "captions": [], "meta": {"labels": labels}}

    # weak labels list a class with its parent: a sine tone and a chirp are two sounds (both tonal), a clip labelled
    # only "Tonal sound" may be either, so it is never mixed with them
    pool = [clip("tone", ["Sine tone", "Tonal sound"]), clip("chirp", ["Chirp", "Tonal sound"]),
            clip("tonal", ["Tonal sound"]), clip("click", ["Clicking", "Impulsive sound"])]
    cfg = SeparationSection(caption_prob=0.0, sources=(2, 4), sample_rate=16000)
    mixtures = draw_mixtures(pool, 64, random.Random(0), cfg, ontology)
    partners = {"tone": {"chirp", "click"}, "chirp": {"tone", "click"}, "tonal": {"click"},
                "click": {"tone", "chirp", "tonal"}}
    for m in mixtures:
        assert m["others"] and set(m["others"]) <= partners[m["key"]], m
    assert {m["key"] for m in mixtures} == set(partners)
    assert {len(m["others"]) for m in mixtures if m["key"] == "tonal"} == {1}  # fewer sources, never a related one
    assert next(m["query"] for m in mixtures if m["key"] == "tone") == "sine tone"  # the parent is implied
    with pytest.raises(ValueError, match="unrelated labels"):
        draw_mixtures(pool[1:3], 4, random.Random(0), cfg, ontology)  # a chirp and "some tonal sound": nothing to mix


def test_training_crops_start_at_a_random_offset_per_clip_and_seed(tmp_path):
    shards = two_class_set(tmp_path / "set", clips=8, seconds=2.0)
    def crops(seed):
        decoder = SampleDecoder(sample_rate=16000, mono=True, duration=0.5, crop_seed=seed)
        return {s["key"]: s["audio"] for s in make_pipeline(str(shards), decoder=decoder)}
    full = {s["key"]: s["audio"] for s in make_pipeline(str(shards), decoder=SampleDecoder(sample_rate=16000))}
    offsets = []
    for key, crop in crops(0).items():
        assert crop.shape == (1, 8000)
        # where the crop lies in the full clip
        starts = [o for o in range(0, 24001) if np.array_equal(full[key][:, o: o + 8000], crop)]
        assert len(starts) == 1
        offsets.append(starts[0])
    assert len(set(offsets)) > 4 and max(offsets) > 8000  # not always the first chunk
    assert all(np.array_equal(a, b) for a, b in zip(crops(0).values(), crops(0).values()))  # deterministic
    assert any(not np.array_equal(a, b) for a, b in zip(crops(0).values(), crops(1).values()))
