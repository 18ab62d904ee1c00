"""Every command form answers a user's mistake with one line that says what to fix, exit status 2."""

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
