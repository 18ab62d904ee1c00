import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from captioner.clap import ClapConfig, ClapScorer, clap_windows, keep_best
from captioner.config import CaptionConfig
from captioner.engines import (
    EngineConfig,
    Request,
    SamplingConfig,
    TransformersEngine,
    build_vllm_requests,
    clean_caption,
    dedupe,
    parse_vllm_outputs,
    vllm_engine_args,
)
from captioner.job import run_caption_job
from captioner.labels import LabelsConfig, enrichment_prompt, timeline
from captioner.sources import SourceConfig, load_items, partition
from shards.config import apply_override
from shards.manifest import ConfigMismatch
from shards.validate import validate


def _source(corpus) -> SourceConfig:
    return SourceConfig(kind="audioset", audio_dir=str(corpus / "audio"),
                        segments=[str(corpus / "balanced_train_segments.csv")],
                        class_labels=str(corpus / "class_labels_indices.csv"), ontology=str(corpus / "ontology.json"),
                        strong=[str(corpus / "audioset_train_strong.tsv")])


def _config(corpus, tiny_models, out, **overrides) -> CaptionConfig:
    data = {
        "source": _source(corpus).model_dump(), "output": str(out), "unit_size": 4,
        "alm": {"model": str(tiny_models["alm"]), "sampling": {"n": 3, "max_new_tokens": 8}},
        "labels": {"engine": {"model": str(tiny_models["llm"]), "prompts": [], "sampling": {"n": 2, "max_new_tokens": 8}}},
        "clap": {"model": str(tiny_models["clap"]), "threshold": -1.0},
        "ray": {"workers": 2, "num_cpus": 0.25},
    }
    for key, value in overrides.items():
        apply_override(data, f"{key}={json.dumps(value)}")  # JSON is YAML
    return CaptionConfig.model_validate(data)


# ---- sources ------------------------------------------------------------------------------------------

def test_audioset_source_reads_the_distributed_formats(corpus):
    items = load_items(_source(corpus))
    assert len(items) == 11 and items == sorted(items, key=lambda i: i.key)
    assert all("." not in it.key and it.key.startswith("audioset-") for it in items)
    with_audio = [it for it in items if it.path.is_file()]
    assert len(with_audio) == 10  # one listed clip has no file
    it = with_audio[0]
    assert it.labels and all(not label.startswith("/t/") for label in it.labels)  # names, not ids
    assert it.strong == sorted(it.strong, key=lambda e: (e["start"], e["end"], e["label"]))
    assert it.extra["segment_id"] == f"{it.extra['ytid']}_{round(it.extra['start'] * 1000)}"
    assert [len(u) for u in partition(items, 5)] == [5, 5, 1]


def test_folder_and_manifest_sources(corpus, tmp_path):
    folder = load_items(SourceConfig(kind="folder", audio_dir=str(corpus / "audio")))
    assert len(folder) == 10 and all(it.source == "folder" for it in folder)
    rows = [{"path": p.name, "caption": "a tone"} for p in sorted((corpus / "audio").iterdir())[:3]]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    items = load_items(SourceConfig(kind="manifest", manifest=str(tmp_path / "m.jsonl"), audio_dir=str(corpus / "audio")))
    assert len(items) == 3 and items[0].extra["human_captions"] == ["a tone"] and items[0].path.is_file()
    with pytest.raises(ValueError, match="segments"):
        load_items(SourceConfig(kind="audioset"))
    with pytest.raises(FileNotFoundError, match="source.audio_dir: /nowhere is not a directory"):
        load_items(_source(corpus).model_copy(update={"audio_dir": "/nowhere"}))
    with pytest.raises(FileNotFoundError, match="source.strong: no such file"):
        load_items(_source(corpus).model_copy(update={"strong": [str(corpus / "typo.tsv")]}))


# ---- engines ------------------------------------------------------------------------------------------

def test_clean_and_dedupe():
    assert clean_caption('  "a dog   barks"  ') == "A dog barks."
    assert clean_caption("Birds sing!") == "Birds sing!"
    cands = [{"text": t} for t in ["A dog barks.", "a dog barks", "", "Rain falls."]]
    assert [c["text"] for c in dedupe(cands)] == ["A dog barks.", "Rain falls."]


@pytest.fixture(scope="module")
def alm(tiny_models):
    return TransformersEngine(EngineConfig(model=str(tiny_models["alm"]), sampling=SamplingConfig(n=5, max_new_tokens=6)))


def test_audio_encoder_runs_once_per_clip_whatever_n(alm):
    clips = []  # clips per audio-encoder pass
    hook = alm.model.model.audio_tower.register_forward_hook(lambda m, args, out: clips.append(args[0].shape[0]))
    wave = (0.1 * np.random.default_rng(0).standard_normal(16000 * 3)).astype(np.float32)
    try:
        for n in (1, 5, 12):
            clips.clear()
            texts = alm.generate([Request("Describe.", wave, seed=1, n=n), Request("Describe.", wave, seed=2, n=n)])
            assert [len(t) for t in texts] == [n, n]
            assert clips == [2]  # two clips, one batched encoder pass, independent of n
    finally:
        hook.remove()


def test_batched_decode_gives_each_clip_its_own_samples(tiny_models):
    """Clips decoded together (same prompt length) and apart (another length) give, greedily, what each gives
    alone: the cache is repeated per clip (repeat_interleave, not repeat) and the texts return in order."""
    greedy = SamplingConfig(n=3, top_k=1, max_new_tokens=8)
    rng = np.random.default_rng(3)
    waves = [(0.3 * rng.standard_normal(16000 * s)).astype(np.float32) for s in (2, 2, 3, 2)]
    requests = [Request("Describe.", w, seed=i, n=3) for i, w in enumerate(waves)]
    batched = TransformersEngine(EngineConfig(model=str(tiny_models["alm"]), sampling=greedy, clips_per_decode=8))
    alone = TransformersEngine(EngineConfig(model=str(tiny_models["alm"]), sampling=greedy, clips_per_decode=1))
    decodes = []
    hook = batched.model.model.audio_tower.register_forward_hook(lambda m, args, out: decodes.append(args[0].shape[0]))
    got = batched.generate(requests)
    hook.remove()
    assert sorted(decodes) == [1, 3]  # the three 2-s clips in one decode, the 3-s clip in another
    assert got == [alone.generate([r])[0] for r in requests]
    assert len({tuple(t) for t in got}) > 1  # the clips' texts differ, so an order mix-up would show


def test_static_cache_decode_samples_what_the_dynamic_decode_samples(tiny_models):
    """decode: static copies each clip's prefill n times into one preallocated cache, reused while the batch holds;
    with the same seed it samples exactly the dynamic decode's texts. decode: compiled (not compiled on a CPU)
    pads a short last chunk to the batch, so its cache is allocated once, and drops the padding's texts."""
    sampling = SamplingConfig(n=3, max_new_tokens=10)
    rng = np.random.default_rng(5)
    waves = [(0.3 * rng.standard_normal(16000 * 2)).astype(np.float32) for _ in range(5)]
    requests = [Request("Describe.", w, seed=i, n=3) for i, w in enumerate(waves)]
    engines = {decode: TransformersEngine(EngineConfig(model=str(tiny_models["alm"]), sampling=sampling,
                                                       clips_per_decode=2, decode=decode))
               for decode in ("dynamic", "static", "compiled")}
    dynamic = engines["dynamic"].generate(requests[:4])
    assert len({tuple(t) for t in dynamic}) == 4  # each clip's texts differ: a row mix-up would show
    allocations = {}
    for decode in ("static", "compiled"):
        engine = engines[decode]
        original, allocations[decode] = engine._static_copy, []

        def counted(*args, engine=engine, original=original, log=allocations[decode]):
            before = engine._static
            cache = original(*args)
            log.append(cache is not before)
            return cache

        engine._static_copy = counted
        assert engine.generate(requests[:4]) == dynamic  # two full chunks of 2 clips x 3 samples
        five = engine.generate(requests)  # the last chunk holds one clip
        assert [len(t) for t in five] == [3] * 5 and five[:4] == dynamic
    assert allocations["static"] == [True, False, False, False, True]  # the 1-clip chunk gets its own cache
    assert allocations["compiled"] == [True, False, False, False, False]  # ... or is padded to 2 clips


def test_a_sliding_window_model_refuses_the_static_cache_before_its_weights_load(tiny_models, tmp_path):
    model = tmp_path / "llm"
    shutil.copytree(tiny_models["llm"], model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "use_sliding_window": True, "sliding_window": 16,
                                                   "layer_types": ["sliding_attention", "full_attention"]}))
    for weights in model.glob("*.safetensors"):
        weights.unlink()  # the refusal comes from the config, before any weight is read
    with pytest.raises(ValueError, match="sliding-window .* use decode: dynamic"):
        TransformersEngine(EngineConfig(model=str(model), decode="static"))
    with pytest.raises(OSError, match="safetensors|weights|pytorch_model"):  # auto chose dynamic and went on to load
        TransformersEngine(EngineConfig(model=str(model)))


def test_decode_auto_compiles_only_audio_models_on_cuda(tiny_models):
    """The default decode is compiled for an ALM on CUDA (4.39 clips/s against 2.68 static on an H100); a text
    LLM's prompts vary in length (padded chunks, recompiles), so it decodes static; a CPU never compiles."""
    from captioner.engines import auto_decode

    assert EngineConfig(model="m").decode == "auto"
    assert auto_decode(full_attention=True, cuda=True, audio=True) == "compiled"
    assert auto_decode(full_attention=True, cuda=True, audio=False) == "static"
    assert auto_decode(full_attention=True, cuda=False, audio=True) == "static"
    assert auto_decode(full_attention=False, cuda=True, audio=True) == "dynamic"
    assert TransformersEngine(EngineConfig(model=str(tiny_models["alm"]))).cfg.decode == "static"


def test_audio_flamingo_3_captions_through_the_engine(tmp_path):
    """Audio Flamingo 3 (configs/caption/audioset-af3.yaml) loads and captions through the same engine: its audio
    encoder runs once per decode of same-length clips, and its static and dynamic decodes agree."""
    from captioner.tiny import write_tiny_af3

    model = write_tiny_af3(tmp_path / "af3")
    rng = np.random.default_rng(2)
    waves = [(0.3 * rng.standard_normal(int(16000 * s))).astype(np.float32) for s in (3, 3, 1.5)]
    requests = [Request("Describe.", w, seed=i, n=2) for i, w in enumerate(waves)]
    texts = {}
    for decode in ("dynamic", "static"):
        engine = TransformersEngine(EngineConfig(model=str(model), decode=decode,
                                                 sampling=SamplingConfig(n=2, max_new_tokens=6)))
        encoded: list[int] = []
        engine.model.model.audio_tower.register_forward_hook(lambda m, args, out, log=encoded: log.append(args[0].shape[0]))
        texts[decode] = engine.generate(requests)
        assert sorted(encoded) == [1, 2]  # the two 3-s clips share one encoder pass
    assert [len(t) for t in texts["static"]] == [2, 2, 2] and texts["static"] == texts["dynamic"]
    assert len({tuple(t) for t in texts["static"]}) == 3


def test_a_writer_keeps_an_engine_request_in_flight_while_it_scores_and_writes(corpus, tiny_models, tmp_path):
    """The engines caption chunk k+1 while CLAP scores chunk k: the ALM never waits for the writer's CLAP and I/O."""
    import threading
    import time

    from captioner.worker import CaptionWorker

    cfg = _config(corpus, tiny_models, tmp_path / "out", batch_clips=2, **{"ray.workers": 0})
    worker = CaptionWorker(cfg)
    events, lock = [], threading.Lock()

    def traced(name, fn, pause=0.0):
        def call(*args, **kwargs):
            with lock:
                events.append(f"{name} start")
            time.sleep(pause)
            out = fn(*args, **kwargs)
            with lock:
                events.append(f"{name} end")
            return out
        return call

    worker._alm_candidates = traced("alm", worker._alm_candidates)
    worker.clap.score_many = traced("clap", worker.clap.score_many, pause=0.5)
    items = partition(load_items(cfg.source), 6)[0]
    result = worker.process_unit(0, items, tmp_path / "out")
    assert result["samples"] > 0
    first_clap_end = events.index("clap end")
    assert events.index("alm start", events.index("alm end") + 1) < first_clap_end  # chunk 2 began before it


def test_sampling_is_seeded(alm):
    wave = (0.1 * np.random.default_rng(1).standard_normal(16000 * 2)).astype(np.float32)
    a = alm.generate([Request("Describe.", wave, seed=7, n=4)])
    assert a == alm.generate([Request("Describe.", wave, seed=7, n=4)])
    assert a != alm.generate([Request("Describe.", wave, seed=8, n=4)])


def test_vllm_request_building_and_output_parsing(alm):
    cfg = EngineConfig(kind="vllm", model="x", sampling=SamplingConfig(n=20, top_k=50, top_p=0.95, max_new_tokens=32))
    wave = np.zeros(16000, np.float32)
    prompts, params = build_vllm_requests(alm.processor, [Request("Describe.", wave, 3, 20), Request("Hi.", None, 4, 2)],
                                          cfg, 16000)
    assert "<|AUDIO|>" in prompts[0]["prompt"] and prompts[0]["prompt"].endswith("<|im_start|>assistant\n")
    assert prompts[0]["multi_modal_data"]["audio"][0][1] == 16000 and "multi_modal_data" not in prompts[1]
    assert params[0] == {"n": 20, "seed": 3, "top_k": 50, "top_p": 0.95, "temperature": 1.0, "max_tokens": 32}
    assert params[1]["n"] == 2
    fake = [SimpleNamespace(outputs=[SimpleNamespace(text="a"), SimpleNamespace(text="b")]),
            SimpleNamespace(outputs=[SimpleNamespace(text="c")])]
    assert parse_vllm_outputs(fake) == [["a", "b"], ["c"]]
    # tensor parallelism inside a Ray actor: vLLM's ray executor on the actor's placement group
    assert "distributed_executor_backend" not in vllm_engine_args(cfg)
    tp = EngineConfig(kind="vllm", model="x", vllm={"tensor_parallel_size": 2, "gpu_memory_utilization": 0.9})
    assert vllm_engine_args(tp) == {"model": "x", "trust_remote_code": False, "seed": 0, "tensor_parallel_size": 2,
                                    "gpu_memory_utilization": 0.9, "distributed_executor_backend": "ray"}
    mp = EngineConfig(kind="vllm", model="x", vllm={"tensor_parallel_size": 2, "distributed_executor_backend": "mp"})
    assert vllm_engine_args(mp)["distributed_executor_backend"] == "mp"  # an explicit choice is kept


def test_vllm_missing_gives_install_hint():
    from captioner.engines import make_engine

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    with pytest.raises(ImportError, match=r"capflow\[vllm\]"):
        make_engine(EngineConfig(kind="vllm", model="x"))
    with pytest.raises(ValueError, match="transformers"):
        make_engine(EngineConfig(kind="nope", model="x"))


def test_label_enrichment_prompt():
    strong = [{"label": "Car passing", "start": 1.5, "end": 4.0}, {"label": "Dog", "start": 0.0, "end": 2.3}]
    assert timeline(strong) == "0.0–2.3 s dog; 1.5–4.0 s car passing"
    cfg = LabelsConfig()
    assert "0.0–2.3 s dog; 1.5–4.0 s car passing" in enrichment_prompt(strong, ["Dog"], cfg)
    assert enrichment_prompt([], ["Dog"], cfg) is None
    assert "dog" in enrichment_prompt([], ["Dog"], LabelsConfig(use_weak=True))


# ---- CLAP ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clap(tiny_models):
    return ClapScorer(ClapConfig(model=str(tiny_models["clap"]), text_batch=4))


def test_clap_windows():
    short = np.arange(1, 4, dtype=np.float32)
    np.testing.assert_array_equal(clap_windows(short, 7), [[1, 2, 3, 1, 2, 3, 0]])  # LAION "repeatpad"
    long = np.arange(25, dtype=np.float32)
    w = clap_windows(long, 10)
    assert w.shape == (3, 10) and w[0, 0] == 0 and w[1, 0] == 7 and w[2, -1] == 24


def test_clap_log_mel_matches_the_feature_extractor(clap):
    wave = (0.3 * np.random.default_rng(0).standard_normal(clap.window)).astype(np.float32)
    ours = clap.log_mel(wave[None]).numpy()
    ref = clap.features([wave], sampling_rate=clap.sample_rate, truncation="rand_trunc", padding="repeatpad",
                        return_tensors="np")["input_features"]
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=2e-3)  # dB


def test_clap_scores_do_not_depend_on_batching(clap):
    rng = np.random.default_rng(0)
    wave = (0.2 * rng.standard_normal(48000 * 4)).astype(np.float32)
    texts = ["A dog barks.", "Rain falls.", "A siren wails twice.", "Birds chirping.", "Engine hums.", "Click."]
    together = clap.score(wave, texts)
    assert together == clap.score(wave, texts)  # deterministic
    one_by_one = [clap.score(wave, [t])[0] for t in texts]
    reversed_ = clap.score(wave, texts[::-1])[::-1]
    # scores are rounded to 6 decimals; a batch's matmul may differ from a single row's in the last float32 bit,
    # which can flip that rounding: one rounding unit apart at most
    np.testing.assert_allclose(one_by_one, together, rtol=0, atol=1.5e-6)
    np.testing.assert_allclose(reversed_, together, rtol=0, atol=1.5e-6)
    long = (0.2 * rng.standard_normal(48000 * 25)).astype(np.float32)
    assert clap.score(long, texts[:2]) == clap.score(long, texts[:2])
    assert all(-1.0 <= s <= 1.0 for s in together)


def test_keep_best():
    cands = [{"text": "a", "clap": 0.5}, {"text": "b", "clap": 0.3}, {"text": "c", "clap": 0.7}, {"text": "d", "clap": 0.45}]
    assert keep_best(cands, 0.4, 3) == ["c", "a", "d"]
    assert keep_best(cands, 0.4, 1) == ["c"]
    assert keep_best(cands, 0.9, 3) == []


# ---- the job on local Ray ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference_run(corpus, tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "shards"
    summary = run_caption_job(_config(corpus, tiny_models, out), progress=False)
    return out, summary


@pytest.mark.timeout(240)
def test_job_every_clip_once_and_failures_are_rows(reference_run, corpus):
    out, summary = reference_run
    assert summary["clips"] == 11 and summary["ok"] == 9 and summary["failures"] == {"missing": 1, "unreadable": 1}
    assert summary["failed_units"] == {} and summary["shards"] == 3
    assert validate(out) == []
    rows = [r for p in sorted(out.glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)) == 11
    assert {it.key for it in load_items(_source(corpus))} == set(keys)
    unreadable = next(r for r in rows if r["status"] == "unreadable")
    assert "unreadable audio" in unreadable["error"] and unreadable["id"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(r["num_candidates"] > 0 and len(r["captions"]) == min(3, r["num_candidates"]) for r in ok)
    assert (out / "config.yaml").is_file() and json.loads((out / "caption_summary.json").read_text())["ok"] == 9


@pytest.mark.timeout(240)
def test_rerun_skips_done_units_and_changed_config_refuses(reference_run, corpus, tiny_models):
    out, _ = reference_run
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    summary = run_caption_job(_config(corpus, tiny_models, out, **{"ray.workers": 1}), progress=False)  # ray may change
    assert summary["ok"] == 9 and {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == before
    with pytest.raises(ConfigMismatch, match=r"clap\.threshold: -1\.0 -> 0\.3"):
        run_caption_job(_config(corpus, tiny_models, out, **{"clap.threshold": 0.3}), progress=False)


@pytest.mark.timeout(300)
def test_killed_job_resumes_to_identical_shards(reference_run, corpus, tiny_models, tmp_path):
    ref, _ = reference_run
    out = tmp_path / "shards"
    cfg = _config(corpus, tiny_models, out, **{"ray.workers": 0})
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    proc = subprocess.Popen([sys.executable, "-m", "captioner", "caption", "--config", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not list(out.glob("*_stats.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = list(out.glob("*_stats.json"))
    assert 1 <= len(done) < 3, "the job should have been killed mid-run"
    summary = run_caption_job(_config(corpus, tiny_models, out), progress=False)  # resume on local Ray
    assert summary["ok"] == 9 and validate(out) == []
    for tar in sorted(ref.glob("*.tar")):
        assert (out / tar.name).read_bytes() == tar.read_bytes()
    assert not list(out.glob("*.tmp-*"))  # temporaries are NAME.tmp-HOST-PID-RAND


@pytest.mark.timeout(120)
def test_template_captions_come_from_the_labels_without_an_llm(corpus, tiny_models, tmp_path, monkeypatch):
    """labels.method template: one caption per clip from its strong labels in time order ("with" for an event
    that begins while the previous sounds), no LLM loaded; the demo's path to captions that name the sounds."""
    import captioner.worker as worker_module
    from captioner.labels import template_caption
    from captioner.synth import CLASSES

    strong = [{"label": "Chirp", "start": 3.0, "end": 5.0}, {"label": "Sine tone", "start": 0.5, "end": 2.0},
              {"label": "Hum", "start": 4.0, "end": 8.0}]
    assert template_caption(strong, []) == "Sine tone, then chirp with hum."
    assert template_caption([], ["Hum", "Clicking"]) is None
    assert template_caption([], ["Hum", "Clicking"], use_weak=True) == "Hum and clicking."
    monkeypatch.setattr(worker_module, "make_engine", lambda cfg: pytest.fail(f"loaded {cfg.model}"))
    cfg = _config(corpus, tiny_models, tmp_path / "out", alm=None, **{"labels.method": "template", "ray.workers": 0})
    assert run_caption_job(cfg, progress=False)["ok"] > 0
    from shards.reader import iter_tar_samples

    names, seen = {name.lower() for name in CLASSES.values()}, 0
    for tar in sorted((tmp_path / "out").glob("*.tar")):
        for _, members in iter_tar_samples(tar):
            meta = json.loads(members["json"])
            events = [e["label"].lower() for e in meta["strong_labels"]]  # time-ordered
            said = meta["captions"][0].lower().rstrip(".").replace(" with ", ", then ").split(", then ")
            assert len(meta["captions"]) == 1 and said == events and set(said) <= names, (meta["captions"], events)
            seen += 1
    assert seen >= 8


def test_human_captions_are_kept_for_sft(corpus, tiny_models, tmp_path):
    """AudioCaps-style manifest: one row per caption, rows of a clip merge; human captions are kept."""
    clips = sorted((corpus / "audio").glob("*.flac"))[2:4]
    rows = ["path,caption"] + [f"{clips[0].name},A tone plays.", f"{clips[0].name},A steady beep.",
                               f"{clips[1].name},Clicking sounds."]
    (tmp_path / "audiocaps.csv").write_text("\n".join(rows) + "\n")
    cfg = CaptionConfig.model_validate({
        "source": {"kind": "manifest", "manifest": str(tmp_path / "audiocaps.csv"), "audio_dir": str(corpus / "audio"),
                   "name": "audiocaps"},
        "output": str(tmp_path / "sft"), "alm": None, "labels": {"enabled": False},
        "clap": {"model": str(tiny_models["clap"]), "threshold": 0.99}, "ray": {"workers": 0}})
    summary = run_caption_job(cfg, progress=False)
    assert summary["ok"] == 2
    captions = sorted(tuple(r["captions"]) for r in pq.read_table(tmp_path / "sft" / "audio-000000.parquet").to_pylist())
    assert captions == [("A tone plays.", "A steady beep."), ("Clicking sounds.",)]


def test_failed_unit_is_retried_then_reported(corpus, tiny_models, tmp_path, monkeypatch):
    from captioner import job

    calls: dict[int, int] = {}
    original = job.CaptionWorker.process_unit

    def flaky(self, index, items, directory, extra_stats=None):
        calls[index] = calls.get(index, 0) + 1
        if index == 2 or (index == 1 and calls[index] == 1):  # unit 1 fails once, unit 2 always
            raise RuntimeError(f"simulated failure in unit {index}")
        return original(self, index, items, directory, extra_stats)

    monkeypatch.setattr(job.CaptionWorker, "process_unit", flaky)
    cfg = _config(corpus, tiny_models, tmp_path / "s", **{"ray.workers": 0, "ray.max_retries": 1})
    summary = run_caption_job(cfg, progress=False)
    assert calls == {0: 1, 1: 2, 2: 2}
    assert summary["failed_units"] == {"2": "RuntimeError: simulated failure in unit 2"} and summary["shards"] == 3
    # the exhausted unit is a shard of failed rows (FORMAT.md: one row per input item, failures included)
    rows = pq.read_table(tmp_path / "s" / "audio-000002.parquet").to_pylist()
    assert rows and all(r["status"] == "failed" and "simulated failure in unit 2" in r["error"] for r in rows)
    assert summary["failures"]["failed"] >= len(rows) and validate(tmp_path / "s") == []
    monkeypatch.setattr(job.CaptionWorker, "process_unit", original)  # a rerun redoes only the failed unit
    rerun = run_caption_job(cfg, progress=False)
    assert rerun["shards"] == 3 and rerun["failed_units"] == {} and "failed" not in rerun["failures"]


def test_a_lost_unit_fails_validate_and_release(reference_run, tmp_path):
    """A unit that wrote nothing (its shard deleted, the manifest rebuilt from what is on disk) is a problem
    for validate and a refusal for release, not a smaller data set."""
    from shards.manifest import write_manifest
    from shards.release import ReleaseError, release

    out = tmp_path / "set"
    shutil.copytree(reference_run[0], out)
    for path in out.glob("audio-000001*"):
        path.unlink()
    write_manifest(out)
    problems = [str(p) for p in validate(out)]
    assert any("1 of 3 planned units have no shard (units [1])" in p for p in problems), problems
    with pytest.raises(ReleaseError, match="planned units have no shard"):
        release(out, tmp_path / "release", progress=False)


def test_long_recordings_are_cut_into_clips_read_by_seeking(tiny_models, tmp_path):
    """source.segment_seconds: a 25-s file becomes clips [0, 10), [10, 20), [20, 25) keyed by start; a file of
    one clip keeps its key (a 10.4-s m4a is cut to 10 s, its 0.4-s tail under min_segment_seconds); a shorter
    file stays whole. Each clip's shard audio is that stretch of the file, decoded by seeking (soundfile) or
    by dropping what precedes it (PyAV)."""
    av = pytest.importorskip("av")
    import soundfile as sf

    from shards import audio
    from shards.reader import iter_tar_samples

    rng = np.random.default_rng(0)
    src = tmp_path / "audio"
    src.mkdir()
    long = (0.1 * rng.standard_normal((int(22050 * 25), 2))).astype(np.float32)  # within full scale
    sf.write(src / "long.wav", long, 22050, subtype="FLOAT")
    sf.write(src / "short.ogg", (0.3 * rng.standard_normal(16000 * 5)).astype(np.float32), 16000)
    with av.open(str(src / "mid.m4a"), "w") as out:
        stream = out.add_stream("aac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray((0.3 * rng.standard_normal((1, int(16000 * 10.4)))).astype(np.float32),
                                           format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    source = SourceConfig(kind="folder", audio_dir=str(src), segment_seconds=10.0)
    items = {it.key: it for it in load_items(source)}
    assert sorted(items) == ["folder-long_0", "folder-long_10000", "folder-long_20000", "folder-mid", "folder-short"]
    assert items["folder-long_20000"].span == (20.0, 25.0) and items["folder-short"].span is None
    assert items["folder-mid"].span == (0.0, 10.0)
    np.testing.assert_array_equal(audio.decode(src / "mid.m4a", span=(2.5, 7.0)).samples,
                                  audio.decode(src / "mid.m4a").samples[:, 40000:112000])

    cfg = CaptionConfig.model_validate({
        "source": source.model_dump(), "output": str(tmp_path / "out"), "unit_size": 8, "labels": {"enabled": False},
        "alm": {"model": str(tiny_models["alm"]), "sampling": {"n": 1, "max_new_tokens": 4}},
        "clap": {"model": str(tiny_models["clap"]), "threshold": -1.0}, "ray": {"workers": 0}})
    run_caption_job(cfg, progress=False)
    shards = sorted((tmp_path / "out").glob("*.tar"))
    clips = {key: sample for path in shards for key, sample in iter_tar_samples(path)}
    assert sorted(clips) == sorted(items)
    second = audio.decode(clips["folder-long_10000"]["flac"])
    assert second.sample_rate == 22050 and second.samples.shape == (2, 22050 * 10)
    np.testing.assert_allclose(second.samples, long[22050 * 10: 22050 * 20].T, atol=1e-4)  # 16-bit FLAC
    assert json.loads(clips["folder-long_20000"]["json"])["span"] == [20.0, 25.0]
    assert audio.decode(clips["folder-mid"]["flac"]).samples.shape == (1, 160000)


def test_units_hold_a_seeded_permutation_of_the_keys_not_one_class_each(tmp_path):
    """A folder laid out by class (dogs/, rain/) planned in key order gave shards of one class each; units are a
    seeded permutation of the keys (deterministic, the seed recorded in the job's identity)."""
    import numpy as np
    import soundfile as sf

    from captioner.config import CaptionConfig
    from captioner.job import plan_units

    for cls in ("dogs", "rain"):
        (tmp_path / "audio" / cls).mkdir(parents=True)
        for i in range(8):
            sf.write(tmp_path / "audio" / cls / f"{i:02d}.wav", np.zeros(1600), 16000)
    cfg = CaptionConfig.model_validate({"source": {"kind": "folder", "audio_dir": str(tmp_path / "audio")},
                                        "unit_size": 8})
    _, units, _, partitioning = plan_units(cfg)
    classes = [{it.id.split("/")[0] for it in unit} for unit in units]
    assert all(len(c) == 2 for c in classes), classes  # key order: {dogs}, {rain}
    assert plan_units(cfg)[1] == units and "seed 0" in partitioning["order"]
    other = plan_units(cfg.model_copy(update={"shuffle_seed": 1}))[1]
    assert [it.key for it in other[0]] != [it.key for it in units[0]]
    assert "shuffle_seed" in cfg.identity()
    assert [{it.id.split("/")[0] for it in u} for u in plan_units(cfg.model_copy(update={"shuffle_seed": None}))[1]] \
        == [{"dogs"}, {"rain"}]
