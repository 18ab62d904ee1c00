"""EzAudio import (pretrain/ezaudio.py): EzAudio-format files (their key names, nesting and pickle layout,
random weights) become a v-DDPM bundle whose DiT and VAE equal the originals, sampled as EzAudio's own
DDIM loop; pickles that would run code are refused."""

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler

from pretrain.dit import EzAudioDiT
from pretrain.ezaudio import EZAUDIO_SCHEDULER, import_ezaudio, load_checkpoint
from pretrain.objective import Objective
from pretrain.pipeline import TextToAudio
from pretrain.tiny import ezaudio_dit_state, write_tiny_ezaudio


@pytest.fixture(scope="module")
def ezaudio(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("ezaudio")
    files = write_tiny_ezaudio(root / "release")
    bundle = import_ezaudio(files["dit"], files["vae"], root / "bundle", text_encoder=str(tiny_models["flan-t5"]))
    return files, bundle


def test_checkpoint_has_ezaudios_layout_and_imports_to_the_same_dit(ezaudio):
    files, bundle = ezaudio
    state = torch.load(files["dit"], weights_only=True)["model"]
    # names as EzAudio's MaskDiT writes them (src/models/udit.py, blocks.py)
    for key in ("mask_embed", "model.patch_embed.proj.weight", "model.in_blocks.0.attn.to_q.weight",
                "model.in_blocks.0.attn.rotary.inv_freq", "model.mid_block.cross_attn.to_v.weight",
                "model.out_blocks.0.skip_linear.weight", "model.in_blocks.0.adaln.scale_shift_table",
                "model.in_blocks.0.mlp.net.0.proj.weight", "model.final_block.final_layer.weight", "model.time_ada.weight"):
        assert key in state, key
    imported = EzAudioDiT.from_pretrained(bundle / "dit").eval()
    # the same weights loaded by name: our module with EzAudio's tensors placed where they belong
    by_name = EzAudioDiT(imported.config).eval()
    assert ezaudio_dit_state(by_name).keys() == {k for k in state}
    with torch.no_grad():
        for name, p in by_name.named_parameters():
            p.copy_(dict(imported.named_parameters())[name])
    assert all(torch.equal(a, b) for a, b in zip(ezaudio_dit_state(by_name).values(), state.values()))
    x, t = torch.randn(2, imported.config.latent_channels, 20), torch.tensor([0.999, 0.3])
    text, mask = torch.randn(2, 5, 32), torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(imported(x, t, text=text, text_mask=mask), by_name(x, t, text=text, text_mask=mask),
                                   rtol=0, atol=0)
    index = json.loads((bundle / "capflow.json").read_text())
    assert index["objective"] == "v-ddpm" and index["scheduler"]["prediction_type"] == "v_prediction"
    assert "EzAudio" in (bundle / "README.md").read_text()


def test_the_release_vae_decodes_in_the_bundle_as_stable_audio_tools(ezaudio):
    """The tiny release's VAE has EzAudio's structure (encoder output twice the latent width, a first conv of its
    own width, hop 480 at 24 kHz); the bundle's codec encodes and decodes it as stable-audio-tools' Oobleck."""
    import sat_oobleck

    from pretrain.codec import AudioCodec, CodecConfig
    from pretrain.tiny import EZAUDIO_VAE_TINY

    files, bundle = ezaudio
    state = torch.load(files["vae"], weights_only=True)["state_dict"]
    assert state["autoencoder.encoder.layers.6.weight_v"].shape[0] == 2 * EZAUDIO_VAE_TINY["latent_dim"]
    assert state["autoencoder.encoder.layers.0.weight_v"].shape[0] == EZAUDIO_VAE_TINY["channels"]
    codec = AudioCodec(CodecConfig(str(bundle / "codec")))
    assert (codec.latent_channels, codec.hop, codec.sample_rate) == (8, 480, 24000)
    wave = 0.1 * torch.randn(1, 1, 480 * 6, generator=torch.Generator().manual_seed(0))
    z = torch.randn(1, 8, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(codec.encode(wave), sat_oobleck.encode_mean(state, wave, EZAUDIO_VAE_TINY),
                                   rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(codec.decode(z), sat_oobleck.decode(state, z, EZAUDIO_VAE_TINY), rtol=1e-4, atol=1e-4)


def _ddim_step(v, t, prev, x, alphas, generator, eta=1.0):
    """One DDIM step on a v-prediction (Song et al. 2021, eq. 12; diffusers' step in float64), its direction
    term's 1 - ᾱ_prev - σ² floored at 0: at a zero-terminal-SNR first step it is 0 exactly, and a rounding error
    below it is NaN under the square root."""
    a_t, a_prev = alphas[t], (alphas[prev] if prev >= 0 else torch.tensor(1.0, dtype=torch.float64))
    x0 = a_t.sqrt() * x - (1 - a_t).sqrt() * v
    eps = a_t.sqrt() * v + (1 - a_t).sqrt() * x
    sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
    out = a_prev.sqrt() * x0 + (1 - a_prev - sigma ** 2).clamp_min(0).sqrt() * eps
    return out + sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype)


@pytest.mark.parametrize("steps", [25, 50])
def test_v_ddpm_generation_equals_ezaudios_ddim_loop(ezaudio, steps):
    _, bundle = ezaudio
    t2a = TextToAudio.from_pretrained(bundle)
    seed, prompt = 3, "a dog barks"
    wave = t2a.generate([prompt], steps=steps, seed=seed, duration=0.4)
    # EzAudio's inference(): noise from the seeded generator, DDIM (eta 1) on CFG 5 + rescale 0.75 of the v-prediction
    generator = torch.Generator().manual_seed(seed)
    n = t2a.codec.frames(0.4)
    latents = torch.randn(1, t2a.dit.config.latent_channels, n, generator=generator)
    text, mask = t2a.text_encoder([prompt])
    neg, neg_mask = t2a.text_encoder([""])
    scheduler = DDIMScheduler(**EZAUDIO_SCHEDULER)  # its schedule and timesteps; the step is the formula above
    scheduler.set_timesteps(steps)
    alphas = scheduler.alphas_cumprod.double()
    with torch.no_grad():
        for t in scheduler.timesteps:
            pos = t2a.dit(latents, (t / 1000).reshape(1), text=text, text_mask=mask)
            uncond = t2a.dit(latents, (t / 1000).reshape(1), text=neg, text_mask=neg_mask)
            guided = uncond + 5.0 * (pos - uncond)
            rescaled = guided * pos.std(dim=(1, 2), keepdim=True) / guided.std(dim=(1, 2), keepdim=True)
            pred = 0.75 * rescaled + 0.25 * guided
            latents = _ddim_step(pred, int(t), int(t) - 1000 // steps, latents, alphas, generator).float()
        expected = t2a.codec.decode(latents)
    assert torch.isfinite(wave).all()
    torch.testing.assert_close(wave[..., : expected.shape[-1]], expected, rtol=1e-5, atol=1e-5)


def _alphas_bar(cfg: dict) -> torch.Tensor:
    """ᾱ of EzAudio's schedule from its definition: scaled-linear betas (√β evenly spaced), rescaled to zero
    terminal SNR (Lin et al. 2024, Algorithm 1: √ᾱ shifted so the last is 0, scaled so the first is kept)."""
    betas = torch.linspace(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, cfg["num_train_timesteps"],
                           dtype=torch.float64) ** 2
    root = torch.cumprod(1 - betas, 0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    return ((root - last) * first / (first - last)) ** 2


def test_v_ddpm_training_point_is_ezaudios():
    """EzAudio's train.py: integer timesteps uniform in [0, 1000), x_t = √ᾱ·x0 + √(1-ᾱ)·ε, target v = √ᾱ·ε - √(1-ᾱ)·x0;
    the DiT's time input is timestep / 1000."""
    x1, noise = torch.randn(6, 8, 20), torch.randn(6, 8, 20)
    x_t, t, target = Objective("v-ddpm", EZAUDIO_SCHEDULER).point(x1, noise, generator=torch.Generator().manual_seed(3))
    steps = torch.randint(0, 1000, (6,), generator=torch.Generator().manual_seed(3))
    ab = _alphas_bar(EZAUDIO_SCHEDULER)[steps].float()[:, None, None]
    torch.testing.assert_close(t, steps.float() / 1000)
    torch.testing.assert_close(x_t, ab.sqrt() * x1 + (1 - ab).sqrt() * noise, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(target, ab.sqrt() * noise - (1 - ab).sqrt() * x1, rtol=1e-5, atol=1e-5)


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.makedirs, (str(marker),)

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"model": Exploit()}))
    with pytest.raises(ValueError, match="weights_only"):
        load_checkpoint(path, "model")
    assert not marker.exists()
    torch.save({"other": {}}, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="'model'"):
        load_checkpoint(tmp_path / "wrong.pt", "model")


def test_import_cli_writes_a_bundle_and_fails_in_one_line(ezaudio, tiny_models, tmp_path, capsys):
    from capflow.cli import main

    files, _ = ezaudio
    assert main(["import", "ezaudio", "--dit", str(files["dit"]), "--vae", str(files["vae"]), "--text-encoder",
                 str(tiny_models["flan-t5"]), "-o", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    assert (tmp_path / "b" / "capflow.json").is_file() and (tmp_path / "b" / "codec" / "config.json").is_file()
    code = main(["import", "ezaudio", "--dit", str(tmp_path / "missing.pt"), "--vae", str(files["vae"]), "-o",
                 str(tmp_path / "c")])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1 and "missing.pt" in errors[0] and not (tmp_path / "c").exists()


def _spy_objectives(monkeypatch) -> list[str]:
    """The objectives whose training points are drawn from now on."""
    seen, point = [], Objective.point
    monkeypatch.setattr(Objective, "point", lambda self, *a, **k: seen.append(self.name) or point(self, *a, **k))
    return seen


def test_sft_from_an_imported_bundle_continues_in_v_prediction(ezaudio, tiny_models, tmp_path, monkeypatch):
    from helpers import latent_set

    from pretrain.config import PretrainConfig
    from pretrain.train import Trainer

    _, bundle = ezaudio
    cfg = PretrainConfig.model_validate({
        "stage": "sft", "output_dir": str(tmp_path / "run"), "init_from": str(bundle),
        "text_encoder": {"pretrained": str(tiny_models["flan-t5"])},
        "data": {"shards": [str(latent_set(tmp_path / "latents", n=8))], "micro_batch_size": 4, "num_workers": 0},
        "optim": {"lr": 1e-3, "warmup_steps": 1}, "validation": {"every": 0}, "steps": 2, "batch_size": 4,
        "log_every": 1, "save_every": 2, "tensorboard": False})
    seen = _spy_objectives(monkeypatch)
    export = Trainer(cfg).train()
    assert seen and set(seen) == {"v-ddpm"}  # every training point was EzAudio's
    index = json.loads((export / "capflow.json").read_text())
    assert index["objective"] == "v-ddpm" and index["scheduler"] == EZAUDIO_SCHEDULER


def test_imagic_on_an_imported_bundle_tunes_with_the_v_loss(ezaudio, monkeypatch):
    import numpy as np

    from finetune.imagic import ImagicConfig, ImagicEditor
    from shards import audio

    _, bundle = ezaudio
    seen = _spy_objectives(monkeypatch)
    t = np.arange(16000) / 16000
    clip = audio.Audio((0.3 * np.sin(2 * np.pi * 440 * t))[None].astype(np.float32), 16000)
    editor = ImagicEditor(TextToAudio.from_pretrained(bundle), ImagicConfig(eta=0.7, embed_steps=2, tune_steps=2,
                                                                            lora_rank=4, clap_model=None))
    out = editor.edit(clip, "a dog barks", steps=3)
    assert set(seen) == {"v-ddpm"} and len(seen) == 4  # 2 embedding + 2 tuning steps, all with the v-loss
    assert out.audio.samples.shape == clip.samples.shape and np.isfinite(out.audio.samples).all()


@pytest.mark.parametrize("kind", ["flow", "v-ddpm"])
def test_inpaint_regenerates_the_span_and_keeps_the_rest(ezaudio, tiny_models, tmp_path, kind, monkeypatch, caplog):
    """Only [start, end) changes (the context windows were replaced by the VAE's reconstruction, with a hard
    splice), crossfaded inside the span's edges; the model hears the clip peak-normalised (EzAudio), and a v-DDPM
    bundle edits at EzAudio's editing guidance (CFG 3.5, rescale 0); a capped boundary is said."""
    import numpy as np

    from shards import audio

    bundle = ezaudio[1] if kind == "v-ddpm" else tiny_models["t2a-untrained"]
    t2a = TextToAudio.from_pretrained(bundle)
    rng = np.random.default_rng(0)
    clip = audio.Audio((rng.standard_normal((2, 16000 * 3)) * 0.01).astype(np.float32), 16000)  # quiet stereo 16 kHz
    heard, generate = {}, t2a.generate
    encode = t2a.codec.encode
    monkeypatch.setattr(t2a.codec, "encode", lambda w, **k: heard.setdefault("peak", float(w.abs().max())) and encode(w, **k))
    monkeypatch.setattr(t2a, "generate", lambda *a, **k: heard.update(k) or generate(*a, **k))
    with caplog.at_level("INFO"):
        out = t2a.inpaint(clip, "a chirp", 1.0, 1.5, boundary=0.5, steps=4)
    assert "caps it at half the span" in caplog.text
    assert out.sample_rate == 16000 and out.samples.shape == clip.samples.shape
    outside = np.ones(clip.samples.shape[-1], bool)
    outside[16000:24000] = False
    np.testing.assert_array_equal(out.samples[:, outside], clip.samples[:, outside])
    assert not np.allclose(out.samples[:, 17000:23000], clip.samples[:, 17000:23000])
    edge = np.abs(np.diff(out.samples[:, 15990:16010], axis=-1)).max()  # no jump at the splice
    assert edge < 5 * np.abs(np.diff(clip.samples, axis=-1)).max()
    assert heard["peak"] > 0.5  # the window the model heard was normalised (the clip peaks near 0.04)
    if kind == "v-ddpm":
        assert (heard["cfg"], heard["rescale"]) == (3.5, 0.0)
    longer = t2a.inpaint(clip, "a chirp", 2.5, 3.5, steps=2)  # past the end: outpainting
    assert longer.samples.shape[-1] == round(3.5 * 16000)
    np.testing.assert_array_equal(longer.samples[:, :16000], clip.samples[:, :16000])
    if kind == "flow":  # the command line
        from capflow.cli import main

        audio.write(tmp_path / "in.wav", clip)
        assert main(["edit", "--method", "inpaint", "--checkpoint", str(bundle), str(tmp_path / "in.wav"), "a chirp",
                     "--inpaint", "1.0:1.5", "--steps", "2", "-o", str(tmp_path / "out.wav")]) == 0
        assert audio.decode(tmp_path / "out.wav").samples.shape == clip.samples.shape
        assert main(["edit", "--method", "inpaint", "--checkpoint", str(bundle), str(tmp_path / "in.wav"), "a chirp",
                     "--inpaint", "2:1", "-o", str(tmp_path / "x.wav")]) == 2  # refused before the model loads


def test_size_and_text_encoder_come_from_the_tensors_and_the_card_credits_ezaudio(tmp_path, tiny_models, capsys):
    """An XL-shaped DiT (EzAudio-XL's width 1152 and text width 2048, one block a side for CPU time) imported with
    --size l is refused in one line (it was written as EzAudio-L naming Flan-T5-large); a text encoder of another
    width is refused; the card credits Hai et al. and records each input's sha256."""
    from capflow.cli import main
    from pretrain.dit import preset
    from pretrain.tiny import ezaudio_dit_state, write_tiny_ezaudio
    from shards.validate import sha256_file

    files = write_tiny_ezaudio(tmp_path / "release")
    xl = EzAudioDiT(preset("dit-xl", depth=1, latent_channels=8))
    torch.save({"model": ezaudio_dit_state(xl)}, tmp_path / "xl.pt")
    base = ["import", "ezaudio", "--vae", str(files["vae"])]
    cases = [([*base, "--dit", str(tmp_path / "xl.pt"), "--size", "l"], "tensors are EzAudio-XL's"),
             ([*base, "--dit", str(tmp_path / "xl.pt"), "--text-encoder", str(tiny_models["flan-t5"])],
              "width 32, but the DiT takes text of width 2048")]
    for argv, message in cases:
        assert main([*argv, "-o", str(tmp_path / "b")]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        assert len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "b").exists()

    relative = os.path.relpath(tiny_models["flan-t5"])  # a relative --text-encoder is copied into the bundle
    assert main([*base, "--dit", str(files["dit"]), "--text-encoder", relative, "-o", str(tmp_path / "b")]) == 0
    index = json.loads((tmp_path / "b" / "capflow.json").read_text())
    assert index["text_encoder"]["pretrained"] == "text_encoder"
    assert (tmp_path / "b" / "text_encoder" / "config.json").read_text() == (Path(relative) / "config.json").read_text()
    source = index["info"]["imported_from"]
    assert source["dit"]["sha256"] == sha256_file(files["dit"]) and source["vae"]["sha256"] == sha256_file(files["vae"])
    card = (tmp_path / "b" / "README.md").read_text()
    assert "Hai" in card and "2409.10819" in card and "MIT" in card and "Hou" not in card
    assert str(tmp_path) not in card  # no local path in a card that may be pushed


@pytest.fixture(scope="module")
def ezaudio_shaped(tmp_path_factory):
    """An EzAudio release at its published shapes: the VAE exactly as ckpts/vae/config.json builds it (from
    stable-audio-tools' architecture, not from capflow's converter), the DiT at DiT-L's width, text width and latent
    channels with one block a side (CPU time), and a Flan-T5 of Flan-T5-large's width."""
    import sat_oobleck

    from pretrain.dit import preset
    from pretrain.tiny import ezaudio_dit_state, write_tiny_t5

    root = tmp_path_factory.mktemp("ezaudio_shaped")
    (root / "ckpts" / "vae").mkdir(parents=True)
    state = sat_oobleck.stable_audio_vae_state()
    torch.save({"state_dict": state}, root / "ckpts" / "vae" / "1m.pt")
    (root / "ckpts" / "vae" / "config.json").write_text(json.dumps(sat_oobleck.ezaudio_vae_config_json()))
    dit = EzAudioDiT(preset("dit-l", depth=1))
    torch.save({"model": ezaudio_dit_state(dit)}, root / "ckpts" / "dit.pt")
    return root, state, write_tiny_t5(root / "flan-t5-large-width", d_model=1024)


def test_ezaudios_real_vae_imports_and_equals_stable_audio_tools(ezaudio_shaped, tmp_path):
    """EzAudio's VAE (encoder output 256 = mean + scale of 128, first conv 128 wide) has no diffusers config: it
    failed with a size mismatch on encoder.conv2. Its encode mean and decode equal stable-audio-tools' Oobleck
    computed from the same tensors."""
    import sat_oobleck

    from pretrain.codec import AudioCodec, CodecConfig

    root, state, t5 = ezaudio_shaped
    bundle = import_ezaudio(root / "ckpts" / "dit.pt", root / "ckpts" / "vae" / "1m.pt", tmp_path / "b",
                            text_encoder=str(t5))
    codec = AudioCodec(CodecConfig(str(bundle / "codec")))
    assert (codec.latent_channels, codec.hop, codec.sample_rate) == (128, 480, 24000)
    wave = 0.1 * torch.randn(1, 1, 480 * 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected_z = sat_oobleck.encode_mean(state, wave)
        torch.testing.assert_close(codec.encode(wave), expected_z, rtol=1e-4, atol=1e-4)
        z = torch.randn(1, 128, 5, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(codec.decode(z), sat_oobleck.decode(state, z), rtol=1e-4, atol=1e-4)
    index = json.loads((bundle / "capflow.json").read_text())
    assert index["info"]["imported_from"]["size"] == "l"
    t2a = TextToAudio.from_pretrained(bundle)
    out = t2a.generate(["a dog barks"], steps=2, duration=0.1)
    assert out.shape == (1, 1, 480 * t2a.codec.frames(0.1)) and torch.isfinite(out).all()


def test_a_vae_of_another_shape_is_one_line_naming_the_tensor(ezaudio_shaped, tmp_path, capsys):
    import sat_oobleck

    from capflow.cli import main

    root, _, t5 = ezaudio_shaped
    bad = sat_oobleck.stable_audio_vae_state()
    bad["autoencoder.decoder.layers.1.layers.1.weight_v"] = bad["autoencoder.decoder.layers.1.layers.1.weight_v"][:, :-1]
    torch.save({"state_dict": bad}, tmp_path / "bad.pt")
    assert main(["import", "ezaudio", "--dit", str(root / "ckpts" / "dit.pt"), "--vae", str(tmp_path / "bad.pt"),
                 "--text-encoder", str(t5), "-o", str(tmp_path / "b")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "decoder.block.0.conv_t1.weight_v" in errors[0] and "EzAudio" in errors[0], errors


def test_a_flow_solver_on_a_v_ddpm_bundle_is_refused_before_loading(ezaudio, tmp_path, capsys):
    """`--sampler euler` on EzAudio's v-DDPM was silently ignored (output bit-identical to DDIM)."""
    from capflow.cli import main

    _, bundle = ezaudio
    assert main(["generate", "--checkpoint", str(bundle), "a dog", "--sampler", "euler", "-o", str(tmp_path / "x.wav")]) == 2
    assert "a v-ddpm bundle samples with ddim" in capsys.readouterr().err
    t2a = TextToAudio.from_pretrained(bundle)
    with pytest.raises(ValueError, match="samples with ddim"):
        t2a.generate(["a dog"], steps=2, duration=0.1, method="heun")
    assert torch.isfinite(t2a.generate(["a dog"], steps=2, duration=0.1, method="ddim")).all()


def test_readme_recipe_import_generate_with_ids_and_evaluate(ezaudio, tiny_models, tmp_path, capsys, monkeypatch):
    """README "Start from EzAudio": generate from a prompts file with ids writes ID.wav and OUT/prompts.jsonl,
    resumes where it stopped (a prompt's seed is its own), and `capflow evaluate OUT/prompts.jsonl --reference`
    pairs by id for KL; reference ids that match none are refused before anything is embedded."""
    import numpy as np
    import soundfile as sf

    from capflow.cli import main

    _, bundle = ezaudio
    (tmp_path / "ref").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        sf.write(tmp_path / "ref" / f"Y{i}abc.wav", 0.1 * rng.standard_normal(16000), 16000)
    (tmp_path / "captions.csv").write_text("id,caption\nY0abc,a dog barks\nY1abc,rain falls\nY2abc,a bell rings\n")
    gen = ["generate", "--checkpoint", str(bundle), "--prompts-file", str(tmp_path / "captions.csv"), "-o",
           str(tmp_path / "gen"), "--steps", "2", "--duration", "0.5"]
    assert main(gen) == 0
    rows = [json.loads(line) for line in (tmp_path / "gen" / "prompts.jsonl").read_text().splitlines()]
    assert [(r["id"], r["path"], r["caption"]) for r in rows][1] == ("Y1abc", "Y1abc.wav", "rain falls")
    before = sf.read(tmp_path / "gen" / "Y1abc.wav")[0]
    (tmp_path / "gen" / "Y1abc.wav").unlink()  # an interrupted run: the rerun makes only what is missing
    assert main(gen) == 0
    assert "2 of 3 clips are already" in capsys.readouterr().out
    # its own seed (noise and DDIM's): the same clip alone as in a batch of 3, up to the batch's float rounding
    np.testing.assert_allclose(sf.read(tmp_path / "gen" / "Y1abc.wav")[0], before, atol=1e-5)
    assert main(["evaluate", str(tmp_path / "gen" / "prompts.jsonl"), "--reference", str(tmp_path / "ref"),
                 "--metrics", "fd,kl,is,clap", "--models", str(Path(tiny_models["clap"]).parent), "--out",
                 str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["metrics"]["kl"]["n_pairs"] == 3 and report["metrics"]["clap"]["n_pairs"] == 3
    (tmp_path / "other").mkdir()
    sf.write(tmp_path / "other" / "x.wav", np.zeros(16000), 16000)
    import evaluation.evaluate as ev

    monkeypatch.setattr(ev, "_metrics", lambda *a, **k: pytest.fail("embedded before the ids were checked"))
    assert main(["evaluate", str(tmp_path / "gen" / "prompts.jsonl"), "--reference", str(tmp_path / "other"),
                 "--metrics", "kl", "--models", str(Path(tiny_models["clap"]).parent)]) == 2
    assert "no id is shared" in capsys.readouterr().err
