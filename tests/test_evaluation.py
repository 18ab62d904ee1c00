"""capflow evaluate: backbones through the packages' own classes, reports with their protocol, caching."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

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
    # the logits are fc_audioset's output before the sigmoid: the package's clipwise_output is their sigmoid
    np.testing.assert_allclose(torch.sigmoid(torch.from_numpy(ours["logits"][0])).numpy(),
                               expected["clipwise_output"][0].numpy(), rtol=1e-5, atol=1e-6)
    assert ours["logits"].shape == (1, 527) and backbone.describe()["sha256"]
    assert backbone.describe()["protocol"] == "audioldm_eval"


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
    rows = (tmp_path / "noisy" / "per_clip.csv").read_text().splitlines()  # as fadtk writes per-clip scores
    assert rows[0] == "id,clap,clap_a" and len(rows) == 10
    expected = []
    for path in sorted((clips / "ref").iterdir()):
        r, _ = sf.read(path)
        g, _ = sf.read(clips / "gen" / path.name)
        r, g = np.atleast_2d(r.T).mean(0), np.atleast_2d(g.T).mean(0)
        expected.append(10 * np.log10((r ** 2).sum() / ((r - g) ** 2).sum()))
    assert m["sdr"]["value"] == pytest.approx(np.mean(expected), abs=1e-3)  # the files' own SNR

    # another reference set with the same names is another cache key (it reported the first set's FD exactly)
    import shutil

    shutil.copytree(clips / "gen", tmp_path / "ref_b")
    cfg = EvalConfig(generated=str(clips / "ref"), reference=str(tmp_path / "ref_b"), models=str(tiny_models["clap"].parent),
                     metrics=["fd"], out=str(tmp_path / "b"), cache_dir=str(tmp_path / "same" / "cache"))
    m = evaluate(cfg)["metrics"]
    assert not m["fd"]["reference_cached"] and m["fd"]["value"] > 1e-3


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
    # the default backbones are the official checkpoints: offline and not cached, one line says what to do
    env = {**__import__("os").environ, "CAPFLOW_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "capflow", "evaluate", str(clips / "gen"), "--reference",
                           str(clips / "ref"), "--metrics", "fd", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]
    assert "Cnn14_16k_mAP=0.438.pth" in proc.stderr and "zenodo.org/records/3987831" in proc.stderr
    assert "--models" in proc.stderr


def test_instruction_edits_are_scored_against_the_target_caption_not_the_instruction(clips, tmp_path):
    """`capflow edit --batch` manifests: an instruction is not a description of the result, so text-CLAP gets
    the batch line's target caption, or nothing (and evaluate refuses text-CLAP without captions)."""
    from types import SimpleNamespace

    from finetune.cli import _write_manifest

    batch = tmp_path / "batch.jsonl"
    rows = [{"input": str(clips / "ref" / p.name), "output": str(clips / "gen" / p.name), "instruction": "Remove the bell",
             "type": "remove", "caption": None, "seconds": 0.1} for p in sorted((clips / "gen").iterdir())[:2]]
    _write_manifest(SimpleNamespace(batch=str(batch)), rows, text_is_caption=False)
    lines = [json.loads(line) for line in (tmp_path / "batch.edits.jsonl").read_text().splitlines()]
    assert all("caption" not in r and r["instruction"] == "Remove the bell" for r in lines)
    with pytest.raises(ValueError, match="text-CLAP needs captions"):
        evaluate(EvalConfig(generated=str(tmp_path / "batch.edits.jsonl"), metrics=["clap"], out=str(tmp_path / "e")))
    rows[0]["caption"] = "a dog barks in a quiet room"
    _write_manifest(SimpleNamespace(batch=str(batch)), rows, text_is_caption=False)
    first = json.loads((tmp_path / "batch.edits.jsonl").read_text().splitlines()[0])
    assert first["caption"] == "a dog barks in a quiet room"
    _write_manifest(SimpleNamespace(batch=str(batch)), rows, text_is_caption=True)  # Imagic: the text is the target
    assert json.loads((tmp_path / "batch.edits.jsonl").read_text().splitlines()[1])["caption"] == "Remove the bell"


@pytest.fixture(scope="module")
def parity_sets(tmp_path_factory):
    """Generated and reference folders of 16-kHz clips with the same ids: stereo with different channels and a
    DC offset, some shorter than 2 s and 1 s, so that the first channel, DC removal and the padding all count
    (16 kHz: no resampling, which needs torchaudio on the reference side)."""
    root = tmp_path_factory.mktemp("parity")
    rng = np.random.default_rng(3)
    for name in ("gen", "ref"):
        (root / name).mkdir()
    for i in range(14):
        n = int(16000 * (0.7, 1.5, 3.0)[i % 3])
        t = np.arange(n) / 16000
        base = np.stack([np.sin(2 * np.pi * (200 + 90 * i) * t), 0.3 * rng.standard_normal(n)]) * 0.3
        sf.write(root / "ref" / f"c{i:02d}.wav", (base + 0.1).T, 16000, subtype="FLOAT")
        gen = base * (0.5 + rng.random()) + 0.2 * rng.standard_normal(base.shape) * (i % 2) - 0.05
        sf.write(root / "gen" / f"c{i:02d}.wav", gen.T, 16000, subtype="FLOAT")
    return root


def _audioldm_eval_features(folder, cnn14):
    """audioldm_eval's WaveDataset + get_featuresdict: first channel, DC removed, padded to 32,000 samples; the
    model's own fc_audioset output ("logits") taken by a hook, "2048" the embedding."""
    logits, embeddings = [], []
    hook = cnn14.fc_audioset.register_forward_hook(lambda module, args, out: logits.append(out))
    for path in sorted(folder.iterdir()):
        wave = torch.from_numpy(sf.read(path, dtype="float32", always_2d=True)[0].T[0:1])
        wave = wave - wave.mean()
        wave = torch.nn.functional.pad(wave, (0, max(0, 32000 - wave.size(-1))))
        with torch.no_grad():
            embeddings.append(cnn14(wave)["embedding"])
    hook.remove()
    return torch.cat(embeddings).double().numpy(), torch.cat(logits)


def _fadtk_embeddings(folder, vggish):
    """fadtk's load_audio + load_wav + get_embedding: channel mean, a 16-bit wav, int16 / 32768, padded to 1 s,
    float16 embeddings; one array per file."""
    import io

    from torchvggish import vggish_input

    out = []
    for path in sorted(folder.iterdir()):
        data = sf.read(path, dtype="float32", always_2d=True)[0].mean(axis=1)
        buffer = io.BytesIO()
        sf.write(buffer, data, 16000, format="WAV", subtype="PCM_16")
        buffer.seek(0)
        wav = sf.read(buffer, dtype="int16")[0] / 32768.0
        wav = np.pad(wav, (0, max(0, 16000 - len(wav))))
        with torch.no_grad():
            out.append(vggish(vggish_input.waveform_to_examples(wav, 16000, return_tensor=True)).numpy().astype(np.float16))
    return out


def _fadtk_stats(arrays):
    """fadtk's calculate_embd_statistics_online over per-file embedding arrays (float16: per-file means in
    float16). A file of one 0.96-s example (under 1.92 s) has no covariance of its own: fadtk's np.cov makes it
    NaN, which poisons the whole set; its scatter is 0, which is what the online formula means."""
    mu, s, n = np.zeros(arrays[0].shape[1]), np.zeros((arrays[0].shape[1],) * 2), 0
    for e in arrays:
        scatter = np.cov(e, rowvar=False) * (len(e) - 1) if len(e) > 1 else np.zeros_like(s)
        _mu, _s, _n = np.mean(e, axis=0), scatter, len(e)
        delta = _mu - mu
        mu = mu + _n / (n + _n) * delta
        s = s + _s + delta[:, None] * delta[None, :] * n * _n / (n + _n)
        n += _n
    return mu, s / (n - 1)


@pytest.mark.timeout(300)
def test_fd_kl_is_fad_equal_the_reference_toolkits_on_the_same_files(parity_sets, tiny_models, tmp_path):
    """FD, KL (both), IS as audioldm_eval computes them, FAD and FAD∞ as fadtk does, each recomputed here from the
    toolkits' code paths on the same files, through the packages' model classes: agreement to 1e-4 relative. A
    sigmoid (clipwise_output) reaching KL or IS, or capflow's own preparation, fails this."""
    import scipy.linalg
    from safetensors.torch import save_file
    from test_metrics import fadtk_frechet, fadtk_score_inf
    from torchvggish.torchvggish import VGG, make_layers

    # the random CNN14 gives nearly one class distribution for every clip; a larger fc_audioset spreads its
    # logits as a trained one's are spread, so that KL and IS are far from their trivial values
    state = _state_dict(tiny_models["panns-cnn14"])
    state["fc_audioset.weight"] = state["fc_audioset.weight"].float() * 200
    models = tmp_path / "models"
    shutil.copytree(tiny_models["panns-cnn14"], models / "panns-cnn14")
    save_file(state, models / "panns-cnn14" / "model.safetensors")
    (models / "vggish").symlink_to(tiny_models["vggish"])
    report = evaluate(EvalConfig(generated=str(parity_sets / "gen"), reference=str(parity_sets / "ref"),
                                 models=str(models), out=str(tmp_path / "r"), metrics=["fd", "kl", "is", "fad", "fad_inf"]))
    m = report["metrics"]

    cnn14 = _panns_models().Cnn14(**CNN14_16K)
    cnn14.load_state_dict(state)
    cnn14.eval()
    emb_gen, logits_gen = _audioldm_eval_features(parity_sets / "gen", cnn14)
    emb_ref, logits_ref = _audioldm_eval_features(parity_sets / "ref", cnn14)
    # audioldm_eval calculate_fid: scipy's sqrtm of the covariance product
    s1, s2 = np.cov(emb_gen, rowvar=False), np.cov(emb_ref, rowvar=False)
    diff = emb_gen.mean(0) - emb_ref.mean(0)
    fd = diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real)
    # audioldm_eval calculate_kl (KL(ref ‖ gen), 1e-6 inside the log) and calculate_isc (seed-2020 shuffle)
    kl = torch.nn.functional.kl_div
    kl_softmax = kl((logits_gen.softmax(dim=1) + 1e-6).log(), logits_ref.softmax(dim=1), reduction="sum") / len(logits_gen)
    kl_sigmoid = kl((logits_gen.sigmoid() + 1e-6).log(), logits_ref.sigmoid(), reduction="sum") / len(logits_gen)
    x = logits_gen[np.random.RandomState(2020).permutation(len(logits_gen))].double()
    p, log_p, n = x.softmax(dim=1), x.log_softmax(dim=1), len(x)
    scores = [(p[i * n // 10:(i + 1) * n // 10] * (log_p[i * n // 10:(i + 1) * n // 10]
               - p[i * n // 10:(i + 1) * n // 10].mean(dim=0, keepdim=True).log())).sum(dim=1).mean().exp().item()
              for i in range(10)]
    assert m["fd"]["value"] == pytest.approx(fd, rel=1e-4)
    assert m["kl"]["value"] > 0.05 and m["is"]["value"] > 1.05  # not the near-trivial values of sigmoid inputs
    assert m["kl"]["value"] == pytest.approx(float(kl_softmax), rel=1e-4)
    assert m["kl"]["kl_sigmoid"] == pytest.approx(float(kl_sigmoid), rel=1e-4)
    assert m["is"]["value"] == pytest.approx(np.mean(scores), rel=1e-4)
    assert m["is"]["std"] == pytest.approx(np.std(scores), rel=1e-3)

    vggish = VGG(make_layers(), postprocess=False)  # fadtk: no PCA
    vggish.load_state_dict(_state_dict(tiny_models["vggish"]))
    vggish.embeddings = torch.nn.Sequential(*list(vggish.embeddings.children())[:-1])  # fadtk: no final ReLU
    vggish.eval()
    gen_files, ref_files = _fadtk_embeddings(parity_sets / "gen", vggish), _fadtk_embeddings(parity_sets / "ref", vggish)
    mu_ref, cov_ref = _fadtk_stats(ref_files)
    assert m["fad"]["value"] == pytest.approx(fadtk_frechet(mu_ref, cov_ref, *_fadtk_stats(gen_files)), rel=1e-4)
    np.random.seed(0)  # capflow's FAD∞ seed: fadtk's draws after np.random.seed(0)
    inf, _ = fadtk_score_inf(np.concatenate(gen_files), mu_ref, cov_ref)
    assert m["fad_inf"]["value"] == pytest.approx(inf, rel=1e-4)
    assert m["fd"]["protocol"] == "audioldm_eval" and m["fad"]["protocol"] == "fadtk"
    assert m["kl"]["matches"] == "audioldm_eval calculate_kl" and "fadtk" in m["fad_inf"]["matches"]


def test_a_grouped_report_embeds_every_clip_once(clips, tiny_models, tmp_path, monkeypatch):
    from evaluation import backbones

    manifest = tmp_path / "grouped.jsonl"
    names = sorted(p.name for p in (clips / "gen").iterdir())
    manifest.write_text("".join(json.dumps({"id": Path(n).stem, "path": str(clips / "gen" / n), "group": f"g{k % 3}"})
                                + "\n" for k, n in enumerate(names)))
    prepared = []
    original = backbones.Backbone.prepare
    monkeypatch.setattr(backbones.Backbone, "prepare", lambda self, clip: prepared.append(1) or original(self, clip))
    report = evaluate(EvalConfig(generated=str(manifest), reference=str(clips / "ref"), metrics=["fad"],
                                 models=str(tiny_models["clap"].parent), out=str(tmp_path / "g")))
    assert sorted(report["groups"]) == ["g0", "g1", "g2"] and report["groups"]["g1"]["fad"]["n_clips"] == 3
    assert len(prepared) == 2 * len(names)  # each generated and each reference clip once, not once per group


def test_official_checkpoint_layouts_load_and_code_is_refused(tiny_models, tmp_path):
    """The PANNs release nests the weights under "model" beside its sampler's numpy state: that loads with
    weights_only; a pickle that would run code does not."""
    state = _state_dict(tiny_models["panns-cnn14"])
    official = tmp_path / "panns-cnn14"
    official.mkdir()
    torch.save({"iteration": 1, "model": state, "sampler": {"indexes_per_class": [np.arange(5)], "queue": [1, 2],
                "random_state": np.random.RandomState(0).get_state()}}, official / "Cnn14_16k_mAP=0.438.pth")
    backbone = load_backbone("panns-cnn14", official)
    assert torch.equal(backbone.model.fc_audioset.weight, state["fc_audioset.weight"].float())
    assert backbone.describe()["sha256"] == __import__("hashlib").sha256(
        (official / "Cnn14_16k_mAP=0.438.pth").read_bytes()).hexdigest()

    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"model": Exploit()}, tmp_path / "evil.pth")
    with pytest.raises(Exception, match="Weights only load failed"):
        _state_dict(tmp_path / "evil.pth")


def test_unscorable_generated_clips_are_said_and_strict_refuses(clips, tiny_models, tmp_path, capsys):
    """A generated set with a non-finite and an empty file: the console says how many were left out (the report
    too), and --strict refuses the set in one line before any backbone loads."""
    import shutil

    from capflow.cli import main

    shutil.copytree(clips / "gen", tmp_path / "gen")
    sf.write(tmp_path / "gen" / "nan.wav", np.full(16000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    (tmp_path / "gen" / "empty.wav").write_bytes(b"")
    args = ["evaluate", str(tmp_path / "gen"), "--metrics", "is", "--models", str(tiny_models["clap"].parent),
            "--out", str(tmp_path / "ev")]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "warning: 2 of 11 generated clips could not be scored" in err
    assert "2 generated clips could not be scored" in (tmp_path / "ev" / "report.md").read_text()
    assert "MERT" in (tmp_path / "ev" / "report.md").read_text()
    assert main([*args, "--strict"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "--strict: 2 of 11 generated clips cannot be scored" in errors[0]
