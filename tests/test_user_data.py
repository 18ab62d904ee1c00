"""Nothing a user owns is deleted or lost (issue #34): output folders are replaced only when they are empty or
a capflow output of the same kind; outputs are checked before any model loads; a fixed-eta Imagic edit needs
no CLAP; a pool of one class does not stop a separation run; printed command lines run as printed."""

import json
import shlex

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from shards.config import config_dict
from shards.outputs import OutputError, check_output_dir, staged_dir


def _user_folder(path, files=("ckpts/s3/ezaudio_s3_l.pt", "ckpts/vae/1m.pt", "notes.txt")):
    """A folder of the user's: what `hf download OpenSound/EzAudio --local-dir DIR` leaves, plus notes."""
    for name in files:
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(f"the user's {name}")
    return {name: (path / name).read_text() for name in files}


def _intact(path, files):
    return all((path / name).read_text() == text for name, text in files.items())


def test_staged_dir_replaces_only_its_own_kind_and_keeps_the_old_output_on_failure(tmp_path):
    mine = _user_folder(tmp_path / "mine")
    for target in (tmp_path / "mine", tmp_path):  # a download folder; `-o ..` (a folder holding others)
        with pytest.raises(OutputError, match="holds no capflow output"):
            with staged_dir(target, "capflow-t2a") as tmp:
                (tmp / "capflow.json").write_text(json.dumps({"format": "capflow-t2a"}))
        assert _intact(tmp_path / "mine", mine)

    out = tmp_path / "bundle"
    for version in (1, 2):  # an empty folder, then a capflow output of the same kind: replaced
        out.mkdir(exist_ok=True)
        with staged_dir(out, "capflow-t2a") as tmp:
            (tmp / "capflow.json").write_text(json.dumps({"format": "capflow-t2a", "v": version}))
        assert json.loads((out / "capflow.json").read_text())["v"] == version
    with pytest.raises(OutputError, match="holds a capflow-t2a output"):  # another kind is not replaced
        check_output_dir(out, "capflow-editor")
    with pytest.raises(RuntimeError):  # an interrupted export leaves the old output whole, and no temporary
        with staged_dir(out, "capflow-t2a") as tmp:
            (tmp / "capflow.json").write_text(json.dumps({"format": "capflow-t2a", "v": 3}))
            raise RuntimeError("killed")
    assert json.loads((out / "capflow.json").read_text())["v"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "mine"]
    (tmp_path / "user.tmp").mkdir()  # a folder named like the old fixed temporary name is not capflow's
    (tmp_path / "user.tmp" / "x").write_text("kept")
    with staged_dir(tmp_path / "user", "capflow-t2a") as tmp:
        (tmp / "capflow.json").write_text(json.dumps({"format": "capflow-t2a"}))
    assert (tmp_path / "user.tmp" / "x").read_text() == "kept"


def test_import_onto_the_download_folder_is_refused_untouched(tmp_path, tiny_models, capsys):
    from capflow.cli import main
    from pretrain.tiny import write_tiny_ezaudio

    files = write_tiny_ezaudio(tmp_path / "release")
    download = _user_folder(tmp_path / "ezaudio")
    args = ["import", "ezaudio", "--dit", str(files["dit"]), "--vae", str(files["vae"]), "--text-encoder",
            str(tiny_models["flan-t5"])]
    assert main([*args, "-o", str(tmp_path / "ezaudio")]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds no capflow output" in err and len(err.splitlines()) == 1 and _intact(tmp_path / "ezaudio", download)
    assert main([*args, "-o", str(tmp_path / "bundle")]) == 0  # a new folder, then the same again: replaced
    assert main([*args, "-o", str(tmp_path / "bundle")]) == 0
    assert (tmp_path / "bundle" / "codec").is_dir() and not list(tmp_path.glob("bundle.*"))


def test_export_only_never_replaces_notes_or_the_run_folder(tmp_path, capsys):
    from helpers import latent_set

    from capflow.cli import main
    from pretrain.config import PretrainConfig
    from pretrain.train import run_pretrain

    cfg = PretrainConfig.model_validate({
        "stage": "mask", "output_dir": str(tmp_path / "run"), "model": {"preset": "tiny"},
        "data": {"shards": [str(latent_set(tmp_path / "latents", n=8))], "micro_batch_size": 4, "num_workers": 0,
                 "shuffle": 4}, "validation": {"every": 0}, "steps": 2, "batch_size": 4, "save_every": 2,
        "tensorboard": False})
    run_pretrain(cfg)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(config_dict(cfg)))
    notes = _user_folder(tmp_path / "notes", files=("paper.tex",))
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    for target in (tmp_path / "notes", tmp_path / "run"):
        assert main(["pretrain", "--config", str(config), "--export-only", str(target)]) == 2
        assert "capflow replaces only an empty folder" in capsys.readouterr().err
    assert _intact(tmp_path / "notes", notes)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == checkpoints
    assert main(["pretrain", "--config", str(config), "--export-only", str(tmp_path / "run" / "export")]) == 0

    (tmp_path / "other").mkdir()  # a training run whose export folder is the user's refuses before any work
    (tmp_path / "other" / "export").mkdir()
    (tmp_path / "other" / "export" / "mine.wav").write_text("x")
    with pytest.raises(OutputError, match="export folder"):
        run_pretrain(cfg.model_copy(update={"output_dir": str(tmp_path / "other")}))
    assert not (tmp_path / "other" / "checkpoints").exists()


@pytest.fixture
def clip(tmp_path):
    path = tmp_path / "in.wav"
    sf.write(path, 0.1 * np.random.default_rng(0).standard_normal(16000), 16000)
    return path


def test_unwritable_outputs_are_refused_before_any_model_loads(tmp_path, clip, tiny_models, capsys, monkeypatch):
    from capflow.cli import main
    from finetune.editor import InstructionEditor
    from pretrain.pipeline import TextToAudio
    from separation.pipeline import LanguageSeparator

    def no_load(*a, **k):
        raise AssertionError("a model was loaded before the output was checked")

    for cls in (InstructionEditor, TextToAudio, LanguageSeparator):
        monkeypatch.setattr(cls, "from_pretrained", classmethod(no_load))
    (tmp_path / "file.wav").write_text("")
    t2a = str(tiny_models["t2a-untrained"])
    for out in ("/proc/x.wav", str(tmp_path / "file.wav" / "x.wav")):  # os.access says yes to both, as root
        for argv in (["generate", "--checkpoint", t2a, "a dog", "-o", out],
                     ["edit", "--checkpoint", t2a, str(clip), "Remove the dog", "-o", out],
                     ["edit", "--method", "imagic", "--checkpoint", t2a, str(clip), "a dog", "--eta", "0.5", "-o", out],
                     ["separate", "--checkpoint", t2a, str(clip), "a dog", "-o", out]):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err.strip()
            assert ("not writable" in err or "is a file, not a folder" in err) and len(err.splitlines()) == 1, err


def test_generate_refuses_what_it_would_get_wrong(tmp_path, tiny_models, capsys, monkeypatch):
    from capflow.cli import main
    from pretrain.pipeline import TextToAudio

    t2a = str(tiny_models["t2a-untrained"])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# my prompts\na dog barks\n\n  # a comment\nrain\n")
    cases = [(["a", "b", "-o", str(tmp_path / "two.wav")], "give a folder"),
             (["  ", "-o", str(tmp_path / "x.wav")], "empty prompt"),
             (["a dog", "-o", str(tmp_path / "x.mp9")], "cannot write .mp9")]
    for argv, message in cases:
        assert main(["generate", "--checkpoint", t2a, *argv]) == 2
        assert message in capsys.readouterr().err
    for flag in ("--steps", "--duration"):
        with pytest.raises(SystemExit):  # 0 is a mistake, never "the default"
            main(["generate", "--checkpoint", t2a, "a dog", flag, "0", "-o", str(tmp_path / "x.wav")])
        assert "must be above 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # no silent ./out.wav
        main(["generate", "--checkpoint", t2a, "a dog"])
    assert "-o/--output" in capsys.readouterr().err
    seen = []
    monkeypatch.setattr(TextToAudio, "generate", lambda self, batch, **k: seen.extend(batch) or torch.zeros(len(batch), 1, 8))
    assert main(["generate", "--checkpoint", t2a, "--prompts-file", str(prompts), "-o", str(tmp_path / "gen"),
                 "--steps", "1"]) == 0
    assert seen == ["a dog barks", "rain"] and len(list((tmp_path / "gen").glob("*.wav"))) == 2


def test_imagic_with_a_fixed_eta_loads_no_clap_and_writes_its_edit(tmp_path, clip, tiny_models, capsys):
    """Offline, with the default --clap-model (a hub id that cannot be fetched): a fixed eta needs no CLAP."""
    from capflow.cli import main

    out = tmp_path / "edited.wav"
    assert main(["edit", "--method", "imagic", "--checkpoint", str(tiny_models["t2a-untrained"]), str(clip),
                 "a dog barks", "--eta", "0.6", "--embed-steps", "1", "--tune-steps", "1", "--steps", "1",
                 "-o", str(out)]) == 0
    assert sf.info(out).duration == pytest.approx(1.0)
    capsys.readouterr()
    # eta auto without a loadable CLAP is refused before the embedding and tuning, in one line
    assert main(["edit", "--method", "imagic", "--checkpoint", str(tiny_models["t2a-untrained"]), str(clip),
                 "a dog barks", "--embed-steps", "1", "--tune-steps", "1", "-o", str(out)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "fixed --eta" in errors[0]


def _pool_batch(keys, label, n=1600):
    rng = np.random.default_rng(len(keys[0]))
    return {"key": keys, "audio": [0.1 * rng.standard_normal((1, n)).astype(np.float32) for _ in keys],
            "captions": [[] for _ in keys], "meta": [{"labels": [label]} for _ in keys]}


def test_a_pool_of_one_class_draws_again_instead_of_stopping_training(tmp_path, tiny_models):
    from helpers import two_class_set

    from separation.config import SeparationConfig
    from separation.data import MixtureBatches, check_mixable
    from shards.ontology import Ontology

    cfg = SeparationConfig.model_validate({
        "stage": "separator", "output_dir": str(tmp_path / "run"), "steps": 1, "batch_size": 2,
        "data": {"shards": [str(tmp_path / "x")], "micro_batch_size": 2}, "validation": {"every": 0},
        "separation": {"clap_model": str(tiny_models["clap"]), "pool": 2, "caption_prob": 0.0, "sources": (2, 2),
                       "sample_rate": 16000}})
    stream = MixtureBatches(cfg)
    batches = [_pool_batch(["a1", "a2", "a3", "a4"], "Sine tone"), _pool_batch(["b1", "b2", "b3", "b4"], "Clicking")]
    out = list(stream.batches(iter(batches)))
    assert len(out) == 1 and stream.redraws == 1 and out[0]["mixture"].shape == (2, 1600)
    again = list(MixtureBatches(cfg).batches(iter(batches)))
    assert all(np.array_equal(a, b) for a, b in zip(out[0]["mixture"], again[0]["mixture"]))
    with pytest.raises(ValueError, match="sounds of one kind only"):  # bounded
        list(MixtureBatches(cfg).batches(iter([_pool_batch([f"a{i}x{j}" for j in range(4)], "Sine tone")
                                                for i in range(20)])))
    ontology = Ontology.load(cfg.separation.ontology)
    check_mixable([str(two_class_set(tmp_path / "two", clips=4))], ontology)  # two classes: mixable
    one = tmp_path / "one"
    two_class_set(one, clips=4)
    import pyarrow.parquet as pq  # the same set with one class only
    sidecar = next(one.glob("*.parquet"))
    table = pq.read_table(sidecar).to_pylist()
    for row in table:
        row["labels"] = ["Sine tone"]
    pq.write_table(pq.read_table(sidecar).from_pylist(table, schema=pq.read_schema(sidecar)), sidecar)
    with pytest.raises(ValueError, match="no two clips can be mixed"):
        check_mixable([str(one)], ontology)


def test_printed_release_command_runs_as_printed(tmp_path, capsys):
    """The "publish with:" line keeps the release's options (audio, license): run as printed, it resumes the same
    release and publishes (dry run) instead of being refused."""
    from helpers import two_class_set

    from capflow.cli import main

    shards = two_class_set(tmp_path / "set", clips=4)
    assert main(["shards", "release", str(shards), str(tmp_path / "rel"), "--with-audio", "--license", "cc-by-4.0"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("publish with: "))
    command = line.removeprefix("publish with: ").split(" (or: ")[0].replace("USER/NAME", "me/set")
    argv = shlex.split(command)
    assert argv[0] == "capflow"
    assert main([*argv[1:], "--dry-run"]) == 0, capsys.readouterr().err


def test_edit_test_set_hint_parses_as_evaluate_arguments(tmp_path):
    """The evaluate line `edit --test-set` logs names metrics `capflow evaluate` takes, comma-separated."""
    from capflow.cli import build_parser
    from evaluation.evaluate import METRICS
    from finetune.edit_eval import evaluate_command

    argv = shlex.split(evaluate_command(tmp_path / "my edits" / "edits.jsonl"))
    args = build_parser().parse_args(argv[1:])
    assert args.generated == str(tmp_path / "my edits" / "edits.jsonl")
    assert set(args.metrics.split(",")) <= set(METRICS)


def test_interrupt_is_one_line_with_the_rerun_command(capsys, monkeypatch):
    import argparse

    from shards.cli import run_command

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("sys.argv", ["capflow", "caption", "--config", "c.yaml"])
    assert run_command(argparse.Namespace(func=interrupted), "capflow caption") == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "`capflow caption --config c.yaml`" in err
