"""Every command form answers a user's mistake with one line that says what to fix, exit status 2."""

import os
import subprocess
import sys

import pytest


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.mark.parametrize("args, message", [
    (["capflow", "tiny-models", "FILE"], "is a file; give a directory"),
    (["pretrain", "generate", "--checkpoint", "typo", "a dog", "-o", "x.wav"], "no capflow bundle at typo"),
    (["captioner", "caption", "--config", "missing.yaml"], "config file not found: missing.yaml"),
    (["pretrain", "--config", "missing.yaml"], "config file not found: missing.yaml"),
    (["shards", "release", "nowhere", "out"], "no manifest.json in nowhere"),
])
def test_mistakes_are_one_line(tmp_path, args, message):
    (tmp_path / "FILE").write_text("")
    proc = _run(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_release_into_a_file_and_folder_source_ignoring_audioset_keys(tmp_path, corpus):
    from captioner.sources import SourceConfig, load_items

    source = SourceConfig(kind="folder", audio_dir=str(corpus / "audio"), segments=["/nowhere/segments.csv"])
    assert len(load_items(source)) == 10  # the AudioSet keys a folder source does not read are not checked


@pytest.fixture
def clip(tmp_path):
    import numpy as np
    import soundfile as sf

    path = tmp_path / "in.wav"
    sf.write(path, 0.1 * np.random.default_rng(0).standard_normal((16000 * 12, 2)), 16000)  # 12 s, stereo
    return path


def test_bad_edit_and_separation_inputs_are_refused_before_any_model_loads(tmp_path, clip, tiny_models, capsys,
                                                                            monkeypatch):
    """Empty texts, unwritable outputs, a bundle of the wrong kind and an over-long Imagic input: exit 2, one
    line, and no model constructor ever called."""
    from capflow.cli import main
    from finetune.editor import InstructionEditor
    from pretrain.pipeline import TextToAudio
    from separation.pipeline import LanguageSeparator

    def no_load(*a, **k):
        raise AssertionError("a model was loaded before the inputs were checked")

    for cls in (InstructionEditor, TextToAudio, LanguageSeparator):
        monkeypatch.setattr(cls, "from_pretrained", classmethod(no_load))
    t2a = str(tiny_models["t2a-untrained"])
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    cases = [
        (["edit", "--checkpoint", t2a, str(clip), "  ", "-o", str(tmp_path / "o.wav")], "empty instruction"),
        (["edit", "--method", "imagic", "--checkpoint", t2a, str(clip), "", "-o", str(tmp_path / "o.wav")],
         "empty target text"),
        (["separate", "--checkpoint", t2a, str(clip), "", "-o", str(tmp_path / "o.wav")], "empty query"),
        (["separate", "--checkpoint", t2a, str(clip), "a dog", "-o", str(tmp_path / "o.wav")],
         "is a capflow-t2a bundle, not capflow-separator; use it with `capflow generate`"),
        (["edit", "--checkpoint", t2a, str(clip), "Remove the dog", "-o", str(tmp_path / "o.wav")],
         "is a capflow-t2a bundle, not capflow-editor"),
        (["edit", "--method", "imagic", "--checkpoint", t2a, str(clip), "a dog barks", "-o", str(tmp_path / "o.wav")],
         "Imagic edits one clip of the model's length"),
        (["edit", "--method", "imagic", "--checkpoint", t2a, str(clip), "a dog barks", "--dtype", "bf16"],
         "fine-tunes the DiT, which it does in fp32"),
        (["edit", "--checkpoint", t2a, str(tmp_path / "nope.wav"), "Remove the dog"], "nope.wav: no such file"),
        (["separate", "--checkpoint", t2a, str(clip), "a dog", "-o", str(tmp_path / "ro" / "sub" / "o.wav")],
         "not writable"),
        (["separate", "--checkpoint", t2a, str(clip), "a dog", "-o", str(tmp_path / "o.xyz")], "cannot write .xyz audio"),
    ]
    if os.geteuid() == 0:  # root writes anywhere: the permission case cannot be made
        cases = [c for c in cases if c[1] != "not writable"]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (argv, err)


def test_outputs_are_never_clipped(tmp_path):
    """Float containers keep values past full scale; integer ones are scaled down (and say so), not clipped."""
    import numpy as np
    import soundfile as sf

    from shards import audio

    x = audio.Audio(np.array([[0.5, -1.5, 2.0, 0.25]], dtype=np.float32), 16000)
    assert audio.write(tmp_path / "a.wav", x) == 1.0
    np.testing.assert_array_equal(sf.read(tmp_path / "a.wav", dtype="float32")[0], x.samples[0])
    gain = audio.write(tmp_path / "a.flac", x)
    back = sf.read(tmp_path / "a.flac")[0]
    assert gain < 0.5 and np.abs(back - x.samples[0] * gain).max() < 1e-4  # the shape kept, nothing clipped
