"""capflow evaluate: backbones through the packages' own classes, reports with their protocol, caching."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from evaluation.backbones import CNN14_16K, _panns_models, _state_dict, load_backbone
from evaluation.evaluate import EvalConfig, evaluate


@pytest.fixture(scope="module")
def clips(tmp_path_factory, corpus):
    """A reference folder of the corpus' decodable clips and a generated folder: the same clips, plus noise."""
    root = tmp_path_factory.mktemp("eval")
    ref, gen = root / "ref", root / "gen"
    ref.mkdir()
    gen.mkdir()
    rng = np.random.default_rng(0)
    for path in sorted((corpus / "audio").glob("*.flac")):
        try:
            data, rate = sf.read(path)
        except Exception:  # noqa: BLE001  (the corpus has corrupt clips on purpose)
            continue
        sf.write(ref / f"{path.stem}.wav", data, rate)
        sf.write(gen / f"{path.stem}.wav", data + 0.05 * rng.standard_normal(data.shape), rate)
    (root / "captions.jsonl").write_text("\n".join(json.dumps({"id": p.stem, "path": f"gen/{p.name}",
                                                                "caption": "a tone and a chirp"})
                                                    for p in sorted(gen.iterdir())))
    return root


def test_cnn14_embedding_equals_the_package_class(tiny_models):
    backbone = load_backbone("panns-cnn14", tiny_models["panns-cnn14"])
    package = _panns_models().Cnn14(**CNN14_16K)
    package.load_state_dict(_state_dict(tiny_models["panns-cnn14"]))
    package.eval()
    wave = 0.1 * np.random.default_rng(0).standard_normal(16000 * 2).astype(np.float32)
    with torch.no_grad():
        expected = package(torch.from_numpy(wave)[None])
    ours = backbone([wave])
    np.testing.assert_allclose(ours["embedding"][0], expected["embedding"][0].numpy(), rtol=1e-5, atol=1e-6)
    assert ours["probs"].shape == (1, 527) and backbone.describe()["sha256"]


def test_clap_equals_the_captioner_scorer(tiny_models):
    from captioner.clap import ClapConfig, ClapScorer

    wave = 0.1 * np.random.default_rng(1).standard_normal(48000 * 3).astype(np.float32)
    backbone = load_backbone("clap", tiny_models["clap"])
    scorer = ClapScorer(ClapConfig(model=str(tiny_models["clap"]), device="cpu"))
    ours = float(backbone.texts(["a dog"])[0] @ backbone([wave])["embedding"][0])
    assert ours == pytest.approx(scorer.score(wave, ["a dog"])[0], abs=1e-5)
    with pytest.raises(ImportError, match="torchaudio"):
        load_backbone("passt", tiny_models["clap"])


@pytest.mark.timeout(300)
def test_identical_sets_score_zero_and_reports_carry_the_protocol(clips, tiny_models, tmp_path):
    cfg = EvalConfig(generated=str(clips / "ref"), reference=str(clips / "ref"), models=str(tiny_models["clap"].parent),
                     metrics=["fd", "kl", "is", "fad", "lsd", "sdr"], out=str(tmp_path / "same"))
    report = evaluate(cfg)
    m = report["metrics"]
    # KL of identical outputs is -527 x ~1e-6, the 1e-6 audioldm_eval puts inside the log
    assert abs(m["fd"]["value"]) < 1e-3 and abs(m["fad"]["value"]) < 1e-3 and abs(m["kl"]["value"]) < 1e-3
    assert m["lsd"]["value"] == 0 and m["sdr"]["value"] > 100
    assert m["fd"]["backbone"] == "panns-cnn14" and m["fd"]["sample_rate"] == 16000 and m["fd"]["n_clips"] == 9
    assert len(m["fad"]["sha256"]) == 64 and "0.96-s" in m["fad"]["crop"]
    assert (tmp_path / "same" / "report.md").read_text().count("| fd |") == 1

    cfg = EvalConfig(generated=str(clips / "captions.jsonl"), reference=str(clips / "ref"),
                     models=str(tiny_models["clap"].parent), metrics=["fd", "clap", "clap_a", "sdr"],
                     out=str(tmp_path / "noisy"), cache_dir=str(tmp_path / "same" / "cache"))
    report = evaluate(cfg)
    m = report["metrics"]
    assert m["fd"]["reference_cached"] and m["fd"]["value"] > 0  # reference embedded once, by the first run
    assert m["clap"]["n_pairs"] == 9 and (tmp_path / "noisy" / "clap_per_clip.png").is_file()
    assert m["clap_a"]["n_pairs"] == 9 and (tmp_path / "noisy" / "clap_vs_clap_a.png").is_file()
    expected = []
    for path in sorted((clips / "ref").iterdir()):
        r, _ = sf.read(path)
        g, _ = sf.read(clips / "gen" / path.name)
        r, g = np.atleast_2d(r.T).mean(0), np.atleast_2d(g.T).mean(0)
        expected.append(10 * np.log10((r ** 2).sum() / ((r - g) ** 2).sum()))
    assert m["sdr"]["value"] == pytest.approx(np.mean(expected), abs=1e-3)  # the files' own SNR


def test_evaluate_cli_and_errors(clips, tiny_models, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "capflow", "evaluate", str(clips / "gen"), "--reference",
                           str(clips / "ref"), "--metrics", "lsd,mel,si_sdr", "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "r" / "report.json").read_text())["metrics"]["mel"]["n_clips"] == 9
    proc = subprocess.run([sys.executable, "-m", "capflow", "evaluate", str(clips / "gen"), "--metrics", "fd,nope"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown metrics ['nope']" in proc.stderr
    shutil.rmtree(tmp_path / "r")
