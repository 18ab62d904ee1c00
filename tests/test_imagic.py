"""Non-rigid (Imagic-style) editing (finetune/imagic.py): the mechanism, the batched η sweep and its choice,
inpainting that keeps the known frames exactly, and a bundle left unchanged by LoRA or full tuning."""

import numpy as np
import pytest
import torch

from finetune.imagic import ImagicConfig, ImagicEditor
from pretrain.pipeline import TextToAudio
from shards import audio


@pytest.fixture(scope="module")
def t2a(tiny_models, tmp_path_factory):
    """The untrained tiny T2A bundle with its zero-initialised cross-attention randomised: a model whose
    output depends on the text, as a trained one's does."""
    model = TextToAudio.from_pretrained(tiny_models["t2a-untrained"])
    torch.manual_seed(0)
    for blk in model.dit.blocks():
        torch.nn.init.normal_(blk.cross_attn.proj.weight, std=0.3)
    path = model.save_pretrained(tmp_path_factory.mktemp("t2a") / "bundle")
    return TextToAudio.from_pretrained(path)


def _clip(seconds=2.0, rate=16000, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) * (np.sin(2 * np.pi * 2 * t) > 0)
    return audio.Audio(np.repeat(wave[None], channels, 0).astype(np.float32), rate)


def _state(dit):
    return {k: v.clone() for k, v in dit.state_dict().items()}


def test_steps_one_and_two_make_e_opt_reconstruct_the_clip(t2a):
    editor = ImagicEditor(t2a, ImagicConfig(embed_steps=80, embed_lr=2e-2, tune_steps=80, tune_lr=3e-3, lora_rank=4,
                                            batch=4, eta=1.0, clap_model=None))
    before = _state(t2a.dit)
    z = editor.encode(_clip())
    e_target, e_mask = t2a.text_encoder(["Sound of knocking on a door"])
    e_opt = editor.optimise_embedding(z, e_target, e_mask)
    assert not torch.equal(e_opt, e_target)
    dit, restore = editor.tune(z, e_opt, e_mask)
    try:
        latents = editor.sample(dit, z, e_target, e_opt, e_mask, [0.0, 1.0], steps=10, cfg=1.0)
    finally:
        restore()
    err_opt, err_target = (float(((x - z[0]) ** 2).mean()) for x in latents)
    assert err_opt < 0.8 * err_target, (err_opt, err_target)  # measured: MSE 0.61 with e_opt, 1.37 with e_target
    after = t2a.dit.state_dict()
    assert type(t2a.dit).__name__ == "EzAudioDiT" and set(after) == set(before)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the adapters are gone


def test_auto_eta_is_one_batched_sweep_that_maximises_the_clap_sum(t2a, tiny_models, monkeypatch):
    cfg = ImagicConfig(embed_steps=3, tune_steps=3, lora_rank=4, etas=[0.2, 0.6, 1.0],
                       clap_model=str(tiny_models["clap"]))
    editor = ImagicEditor(t2a, cfg)
    calls = []
    sample = editor.sample
    monkeypatch.setattr(editor, "sample", lambda *a, **k: calls.append(a[5]) or sample(*a, **k))
    result = editor.edit(_clip(1.5, 22050, 2), "Sound of rain", steps=3)
    assert calls == [[0.2, 0.6, 1.0]]  # one call for the whole grid
    assert [c["eta"] for c in result.candidates] == [0.2, 0.6, 1.0]
    best = max(result.candidates, key=lambda c: c["text_clap"] + c["audio_clap"])
    assert result.eta == best["eta"] and result.audio.samples.shape == (2, int(1.5 * 22050))
    assert all(abs(c["sum"] - c["text_clap"] - c["audio_clap"]) < 1e-9 for c in result.candidates)


def test_inpainting_keeps_the_known_frames_and_full_tuning_restores_the_weights(t2a, caplog):
    cfg = ImagicConfig(eta=0.7, embed_steps=2, tune_steps=2, lora_rank=None, tune_lr=1e-2, inpaint="0.5:1.0",
                       clap_model=None)
    editor = ImagicEditor(t2a, cfg)
    before = _state(t2a.dit)
    z = editor.encode(_clip())
    span = editor.span(z.shape[-1])
    e_target, e_mask = t2a.text_encoder(["Sound of a dog barking"])
    dit, restore = editor.tune(z, e_target, e_mask, ~span)
    try:
        assert any(not torch.equal(before[k], v) for k, v in dit.state_dict().items())  # full tuning moved weights
        latents = editor.sample(dit, z, e_target, e_target, e_mask, [0.7], ~span, steps=3)
    finally:
        restore()
    known = ~span[0]
    assert torch.equal(latents[0][:, known], z[0][:, known]) and not torch.equal(latents[0][:, ~known], z[0][:, ~known])
    assert all(torch.equal(before[k], v) for k, v in t2a.dit.state_dict().items())
    with caplog.at_level("INFO", logger="finetune.imagic"):
        out = editor.edit(_clip(), "Sound of a dog barking", steps=3)
    assert out.eta == 0.7 and out.audio.samples.shape == _clip().samples.shape
    # each stage says how long it will take, measured on its first step, before the rest runs
    assert "imagic 1/3 embedding: 2 steps, about" in caplog.text and "imagic 2/3 tuning: 2 steps, about" in caplog.text
    with pytest.raises(ValueError, match="START:END"):
        ImagicConfig(inpaint="3-5")
