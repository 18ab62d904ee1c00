"""`capflow train-codec` (pretrain/codec_train.py): an Oobleck VAE trained on audio shards through the one loop,
exported as a codec that `capflow encode` and bundles load, resumed exactly, and reconstructing held-out clips
better than the untrained codec it started as."""

import json

import pytest
import torch

from pretrain.codec_train import CodecTrainConfig, heldout_clips, reconstruction, run_train_codec

ARCH = {"channels": 8, "c_mults": [1, 2], "strides": [4, 5], "latent_dim": 8, "sample_rate": 16000}


@pytest.fixture(scope="module")
def audio_set(tmp_path_factory):
    from captioner.synth import synth_captioned_set

    return synth_captioned_set(tmp_path_factory.mktemp("codec") / "audio", num_clips=18, seconds=2.0)


def _cfg(audio_set, out, **overrides) -> CodecTrainConfig:
    data = {"output_dir": str(out), "data": {"shards": [str(audio_set)], "micro_batch_size": 4, "num_workers": 0,
                                             "shuffle": 8},
            "codec": {"architecture": ARCH, "loss": {"fft_sizes": [256, 128, 64], "l1": 1.0}, "chunk": 0.25,
                      "report_clips": 4, "report_seconds": 1.0},
            "optim": {"lr": 3e-3, "warmup_steps": 2, "schedule": "constant"}, "ema": {"decay": 0.9},
            "steps": 6, "batch_size": 4, "log_every": 3, "save_every": 3, "tensorboard": False}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if name:
            data.setdefault(section, {})[name] = value
        else:
            data[key] = value
    return CodecTrainConfig.model_validate(data)


def _weights(directory):
    from pretrain.codec import oobleck_class

    return oobleck_class().from_pretrained(directory).state_dict()


def test_train_codec_exports_a_codec_that_encode_uses_and_resumes_exactly(audio_set, tmp_path, capsys):
    from capflow.cli import main
    from pretrain.codec import AudioCodec, CodecConfig
    from pretrain.encode import EncodeConfig, run_encode

    export = run_train_codec(_cfg(audio_set, tmp_path / "straight"))
    index = json.loads((export / "capflow.json").read_text())
    assert index["format"] == "capflow-codec" and index["info"]["step"] == 6
    scores = index["reconstruction"]
    assert scores["trained"]["clips"] == 4 and scores["untrained"]["clips"] == 4
    codec = AudioCodec(CodecConfig(str(export)))
    assert (codec.latent_channels, codec.hop, codec.sample_rate) == (8, 20, 16000)
    manifest = run_encode(EncodeConfig.model_validate({
        "input": str(audio_set), "output": str(tmp_path / "latent"), "duration": 2.0, "batch_size": 8,
        "codec": {"pretrained": str(export), "subfolder": None}}), progress=False)
    assert manifest["extra"]["latent_channels"] == 8 and manifest["num_samples"] == 18

    # interrupted at step 3 and resumed: the same weights as the run that went straight through
    cfg = _cfg(audio_set, tmp_path / "resumed")
    run_train_codec(cfg.model_copy(update={"steps": 3}))
    args = ["train-codec", "--config", str(tmp_path / "resumed" / "config.yaml"), "--set", "steps=6", "--resume", "latest"]
    assert main(args) == 0
    assert "held-out reconstruction (4 clips)" in capsys.readouterr().out
    straight, resumed = _weights(export), _weights(tmp_path / "resumed" / "export")
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0, msg=name)


def test_a_trained_codec_reconstructs_held_out_clips_better_than_untrained(audio_set, tmp_path):
    """The margin a test can afford (200 steps, about 15 s): the multi-resolution STFT distance of held-out
    (eval split) clips falls below 0.6 of the untrained codec's; the untrained codec itself fails that bar."""
    from pretrain.codec import oobleck_class

    cfg = _cfg(audio_set, tmp_path / "run", steps=200, save_every=200, log_every=100)
    assert all(c.shape == (1, 16000) for c in heldout_clips(cfg))
    export = run_train_codec(cfg)
    scores = json.loads((export / "capflow.json").read_text())["reconstruction"]
    assert scores["trained"]["mrstft"] < 0.6 * scores["untrained"]["mrstft"], scores
    torch.manual_seed(1)  # another untrained codec does not pass the bar
    other = reconstruction(oobleck_class()(**cfg.codec.architecture.vae_config()), heldout_clips(cfg), cfg.codec.loss,
                           16000)
    assert other["mrstft"] > 0.6 * scores["untrained"]["mrstft"]


def test_the_adversarial_recipe_steps_its_discriminator(audio_set, tmp_path):
    """stable-audio-tools' full recipe: an adversarial and a feature-matching term, the discriminator stepped by
    the loop's hook (its weights move; the exported codec holds no discriminator)."""
    from pretrain.codec_train import CodecTrainer

    cfg = _cfg(audio_set, tmp_path / "gan", steps=2, save_every=2)
    cfg.codec.loss.adversarial, cfg.codec.loss.feature_matching = 0.1, 5.0
    cfg.codec.loss.disc_ffts = [64, 128]
    trainer = CodecTrainer(cfg)
    before = [p.detach().clone() for p in trainer.discriminator.parameters()]
    export = trainer.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.discriminator.parameters()))
    assert set(_weights(export)) == set(_weights(tmp_path / "gan" / "export"))
    assert not any("disc" in name for name in _weights(export))


@pytest.mark.parametrize("change, message", [
    ({"validation": {"every": 5}}, "validation.every"),
    ({"init_from": "x"}, "trains from scratch"),
])
def test_config_mistakes_are_one_line(audio_set, tmp_path, change, message):
    data = _cfg(audio_set, tmp_path / "x").model_dump(mode="json") | change
    with pytest.raises(ValueError, match=message):
        CodecTrainConfig.model_validate(data)


def test_latent_shards_are_refused_before_any_model_loads(tmp_path, capsys):
    from helpers import latent_set

    from capflow.cli import main

    latents = latent_set(tmp_path / "latents", n=4)
    (tmp_path / "c.yaml").write_text(f"output_dir: {tmp_path / 'run'}\ndata: {{shards: [{latents}]}}\n")
    assert main(["train-codec", "--config", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "audio shards" in err
