import json

import pytest


@pytest.mark.timeout(600)
def test_demo_runs_end_to_end(tmp_path):
    from capflow.demo import QUICK, run_demo

    work = run_demo(tmp_path / "demo", QUICK)
    from huggingface_hub import DatasetCard

    card = DatasetCard((work / "release" / "README.md").read_text())
    assert card.data.license == "cc0-1.0" and card.data.source_datasets == ["extended|audioset"]
    assert (work / "generated" / "00.wav").stat().st_size > 1000
    report = json.loads((work / "eval" / "report.json").read_text())
    assert set(report["metrics"]) == {"fd", "is", "fad", "clap"} and report["metrics"]["fd"]["n_clips"] == 4
    assert (work / "runs" / "align" / "export" / "README.md").is_file()
    assert list((work / "runs" / "align" / "validation").glob("step-*/*.png"))
    assert not list((work / "shards" / "audio").glob("*.tmp-*"))  # temporaries are NAME.tmp-HOST-PID-RAND
    edits = json.loads((work / "edits" / "eval" / "report.json").read_text())
    assert set(edits["groups"]) == {"add", "remove", "replace"} and edits["making_seconds_per_clip"] > 0
    assert json.loads((work / "runs" / "edit" / "export" / "capflow.json").read_text())["format"] == "capflow-editor"
    for name in ("remove_the_hum", "imagic_knocking", "imagic_inpaint_1-2s"):
        assert (work / "edits" / f"{name}.wav").stat().st_size > 1000
    separated = json.loads((work / "separation" / "eval_separations" / "report.json").read_text())
    assert {"sdr", "sdri", "si_sdr", "clap", "clap_a"} <= set(separated["metrics"])
    assert (work / "separation" / "without_clicking.wav").stat().st_size > 1000
    for index in work.rglob("capflow.json"):  # every bundle is self-contained: no local path in its index
        assert str(work.resolve()) not in index.read_text() and str(work) not in index.read_text(), index
    sft = json.loads((work / "ezaudio" / "sft" / "export" / "capflow.json").read_text())
    assert sft["objective"] == "v-ddpm" and (work / "ezaudio" / "generated.wav").stat().st_size > 1000
    # the learning report: the codec learned (the untrained one fails the bar); the text-to-audio rows are measured
    # (their learning margin is checked on its own in test_pretrain: the shortened chain is too small for it)
    learned = json.loads((work / "report.json").read_text())
    codec = learned["codec"]
    assert codec["trained"]["mrstft"] < 0.5 * codec["untrained"]["mrstft"]
    before = learned["before"]["caption_margin"]
    assert before["right"] == before["wrong"] and learned["after"]["clips"] >= 4
    assert "| after |" in (work / "report.md").read_text()
    assert len(list((work / "report" / "after").glob("*.png"))) == len(learned["after"]["classes"])


def test_demo_never_deletes_a_folder_it_did_not_write(tmp_path):
    from capflow.demo import MARKER, prepare_workdir

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="not a capflow demo folder"):
        prepare_workdir(tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"

    demo = tmp_path / "demo"
    prepare_workdir(demo)
    (demo / "runs").mkdir()
    (demo / "notes.txt").write_text("kept")
    prepare_workdir(demo)  # a rerun clears the demo's own parts only
    assert (demo / MARKER).is_file() and not (demo / "runs").exists() and (demo / "notes.txt").read_text() == "kept"
