import pytest


@pytest.mark.timeout(400)
def test_demo_runs_end_to_end(tmp_path):
    from capflow.demo import run_demo

    work = run_demo(tmp_path / "demo")
    assert (work / "release" / "README.md").is_file()
    assert (work / "generated.wav").stat().st_size > 1000
    assert (work / "runs" / "align" / "export" / "README.md").is_file()
    assert list((work / "runs" / "align" / "validation").glob("step-*/*.png"))
    assert not list((work / "shards" / "audio").glob("*.tmp"))
