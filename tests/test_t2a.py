import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from pretrain.codec import AudioCodec, CodecConfig, measure_stats
from pretrain.pipeline import TextToAudio
from pretrain.text import TextEncoder


def test_text_encoder_pads_and_null_caption(tiny_models):
    enc = TextEncoder(str(tiny_models["flan-t5"]), max_length=100)
    hidden, mask = enc(["a dog barks twice", ""])
    assert hidden.shape == (2, 100, enc.dim) and mask.shape == (2, 100)
    assert mask[0].sum() > mask[1].sum() >= 1  # the empty string is still </s>
    null, null_mask = enc.null(3)
    torch.testing.assert_close(null[0], hidden[1])
    assert torch.equal(null_mask[0], mask[1])
    assert not any(p.requires_grad for p in enc.parameters())


def test_codec_round_trip_shapes_and_normalisation(tiny_models):
    codec = AudioCodec(CodecConfig(str(tiny_models["oobleck"])))
    assert (codec.sample_rate, codec.hop, codec.latent_channels) == (24000, 480, 8)
    wave = torch.randn(2, 1, 24000)
    raw = codec.encode(wave, normalize=False)
    assert raw.shape == (2, 8, 50)
    mean, std = measure_stats(list(raw))
    normed = AudioCodec(codec.with_stats(mean, std))
    z = normed.encode(wave)
    assert z.mean(dim=(0, 2)).abs().max() < 1e-4 and (z.std(dim=(0, 2)) - 1).abs().max() < 0.05
    torch.testing.assert_close(normed.decode(z), codec.decode(raw), rtol=1e-4, atol=1e-5)


def test_bundle_generate_is_seeded(tiny_models):
    model = TextToAudio.from_pretrained(tiny_models["t2a-untrained"])
    a = model.generate(["a dog barks", "rain falls"], steps=3, duration=0.5, seed=1)
    b = model.generate(["a dog barks", "rain falls"], steps=3, duration=0.5, seed=1)
    assert a.shape == (2, 1, 12000) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b)
    c = model.generate(["a dog barks", "rain falls"], steps=3, duration=0.5, seed=2)
    assert not torch.allclose(a, c)


def test_generate_cli(tiny_models, tmp_path):
    out = tmp_path / "dog.wav"
    cmd = [sys.executable, "-m", "pretrain", "generate", "--checkpoint", str(tiny_models["t2a-untrained"]),
           "a dog barks twice", "-o", str(out), "--steps", "2", "--duration", "1.5", "--cfg", "3", "--rescale", "0.5"]
    subprocess.run(cmd, check=True, capture_output=True)
    data, sr = sf.read(out)
    assert sr == 24000 and data.shape[0] == 36000 and np.isfinite(data).all()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a dog barks\n\nrain falls\n")
    subprocess.run([sys.executable, "-m", "pretrain", "generate", "--checkpoint", str(tiny_models["t2a-untrained"]),
                    "--prompts-file", str(prompts), "-o", str(tmp_path / "many"), "--steps", "1", "--duration", "0.5"],
                   check=True, capture_output=True)
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == ["0000_a_dog_barks.wav", "0001_rain_falls.wav",
                                                                     "prompts.jsonl"]


def test_generate_from_a_source_latent_stays_close_to_it(tiny_models):
    """The editing entry point (RFM-Editing eq. 4): starting at t_start near 1 keeps the source."""
    model = TextToAudio.from_pretrained(tiny_models["t2a-untrained"])
    source = torch.randn(1, model.dit.config.latent_channels, 25, generator=torch.Generator().manual_seed(0))
    edited = model.generate(["add a dog barking"], source=source, t_start=0.999, steps=1)
    reference = model.codec.decode(source)
    assert edited.shape == (1, 1, 25 * model.codec.hop)
    n = min(edited.shape[-1], reference.shape[-1])
    assert (edited[..., :n] - reference[..., :n]).abs().max() < 0.05 * reference.abs().max() + 1e-3


def test_generate_in_bf16_integrates_in_fp32(tiny_models):
    fp32 = TextToAudio.from_pretrained(tiny_models["t2a-untrained"])
    bf16 = TextToAudio.from_pretrained(tiny_models["t2a-untrained"], dtype="bf16")
    assert next(bf16.dit.parameters()).dtype == torch.bfloat16
    a = fp32.generate(["a dog barks"], steps=3, duration=0.5, seed=1)
    b = bf16.generate(["a dog barks"], steps=3, duration=0.5, seed=1)
    assert b.dtype == torch.float32 and torch.isfinite(b).all()
    assert (a - b).abs().max() < 0.1 * a.abs().max() + 1e-3  # same clip up to bf16 rounding
    with pytest.raises(ValueError, match="dtype must be auto or one of"):
        TextToAudio.from_pretrained(tiny_models["t2a-untrained"], dtype="int8")


def test_generate_refuses_a_source_it_would_discard(tiny_models):
    model = TextToAudio.from_pretrained(tiny_models["t2a-untrained"])
    source = torch.zeros(1, model.dit.config.latent_channels, 10)
    with pytest.raises(ValueError, match="t_start > 0"):
        model.generate(["x"], source=source, steps=1)


def test_missing_bundle_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no capflow bundle at typo"):
        TextToAudio.from_pretrained("typo")


def test_the_fast_path_is_the_default_on_cuda_only():
    """`capflow generate` with default flags: bf16 + torch.compile on CUDA (issue #22: 0.59 s per 10-s clip
    compiled against 1.69 s eager), fp32 eager on CPUs; explicit flags win."""
    from pretrain.cli import add_commands
    from pretrain.pipeline import fast_path

    parser = __import__("argparse").ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(["generate", "--checkpoint", "x", "a dog", "-o", "x.wav"])
    assert fast_path("cuda", args.dtype, args.compile) == ("bf16", True)
    assert fast_path("cuda:1", args.dtype, args.compile) == ("bf16", True)
    assert fast_path("cpu", args.dtype, args.compile) == ("fp32", False)
    args = parser.parse_args(["generate", "--checkpoint", "x", "a dog", "-o", "x.wav", "--dtype", "fp32", "--no-compile"])
    assert fast_path("cuda", args.dtype, args.compile) == ("fp32", False)


def test_a_bundle_is_self_contained_and_names_no_local_path(tiny_models, tmp_path):
    """capflow.json named the codec and Flan-T5 by absolute path: a copied or pushed bundle broke. Local
    components are copied in and named relatively; a missing one is one line."""
    import json
    import shutil

    model = TextToAudio.from_pretrained(tiny_models["t2a-untrained"])
    model.save_pretrained(tmp_path / "b")
    index = json.loads((tmp_path / "b" / "capflow.json").read_text())
    assert (index["codec"]["pretrained"], index["text_encoder"]["pretrained"]) == ("codec", "text_encoder")
    assert str(tmp_path) not in json.dumps(index) and str(tiny_models["oobleck"]) not in json.dumps(index)
    shutil.move(tmp_path / "b", tmp_path / "moved")
    moved = TextToAudio.from_pretrained(tmp_path / "moved")
    assert torch.isfinite(moved.generate(["a dog"], steps=1, duration=0.2)).all()
    shutil.rmtree(tmp_path / "moved" / "codec")
    with pytest.raises(FileNotFoundError, match="its codec folder `codec` is missing"):
        TextToAudio.from_pretrained(tmp_path / "moved")
