"""The captioning job as a cluster operator runs it: paths, input identity, formats, per-clip failures,
scheduling knobs, AudioSet's label files, stale writers, and the pools placement (with fake engines)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import yaml
from ray import cloudpickle

from captioner import pools
from captioner.config import CaptionConfig, PoolConfig
from captioner.job import NoClipsCaptioned, run_caption_job
from captioner.pools import actor_options, plan_pools
from captioner.sources import SourceConfig, load_items
from captioner.worker import clip_seed
from shards.manifest import ConfigMismatch, write_manifest
from shards.validate import validate
from shards.writer import ShardSetWriter, ShardWriter, sweep_stale_tmp

ROOT = Path(__file__).resolve().parents[1]


def _data(corpus: Path, models: dict, out, **ray) -> dict:
    return {
        "source": {"kind": "audioset", "audio_dir": str(corpus / "audio"),
                   "segments": [str(corpus / "balanced_train_segments.csv")],
                   "class_labels": str(corpus / "class_labels_indices.csv"),
                   "strong": [str(corpus / "audioset_train_strong.tsv")]},
        "output": str(out), "unit_size": 4,
        "alm": {"model": str(models["alm"]), "sampling": {"n": 2, "max_new_tokens": 6}},
        "labels": {"engine": {"model": str(models["llm"]), "prompts": [], "sampling": {"n": 1, "max_new_tokens": 6}}},
        "clap": {"model": str(models["clap"]), "threshold": -1.0},
        "ray": {"workers": 0, **ray},
    }


def _copy_corpus(corpus: Path, dst: Path) -> Path:
    shutil.copytree(corpus, dst)
    return dst


def _decodes(path: Path) -> bool:
    try:
        sf.info(path)
        return True
    except Exception:  # noqa: BLE001
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(300)
def test_relative_paths_with_a_ray_head_started_elsewhere(corpus, tiny_models, tmp_path):
    """`ray start --head` in dir A, the job submitted from dir B with relative paths: the shards land in B
    and hold every clip (workers resolve nothing against their own working directory)."""
    head_dir, job_dir = tmp_path / "A", tmp_path / "B"
    head_dir.mkdir()
    job_dir.mkdir()
    (job_dir / "corpus").symlink_to(corpus)
    (job_dir / "models").symlink_to(Path(tiny_models["alm"]).parent)
    models = {k: Path("models") / Path(v).name for k, v in tiny_models.items()}
    data = _data(Path("corpus"), models, "out", workers=1, **{"num_cpus": 0.25})
    (job_dir / "job.yaml").write_text(yaml.safe_dump(data))
    port = _free_port()
    # the head has none of the driver's HF_* settings (they reach the workers through the job's runtime_env);
    # Ray's token authentication is off on this throwaway local cluster
    head_env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    head_env["RAY_AUTH_MODE"] = "disabled"
    ray_bin = str(Path(sys.executable).parent / "ray")
    # `--block` keeps the head in this process group, so the test stops the cluster it started and no other
    # (`ray stop` would kill every Ray on a shared machine)
    head = subprocess.Popen([ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
                             "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"], cwd=head_dir,
                            env=head_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:  # the head is up when its GCS port answers
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline and head.poll() is None, "the Ray head did not start"
                time.sleep(1)
        proc = subprocess.run([sys.executable, "-m", "captioner", "caption", "--config", "job.yaml",
                               "--ray-address", f"127.0.0.1:{port}"], cwd=job_dir, capture_output=True, text=True,
                              timeout=240, env={**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"})
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        # the head's address file, which `ray stop` would remove: a later `ray.init()` must not try to join it
        current = Path("/tmp/ray/ray_current_cluster")
        if current.is_file() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((job_dir / "out" / "caption_summary.json").read_text())
    assert summary["ok"] == 9 and summary["shards"] == 3
    assert not (head_dir / "out").exists() and validate(job_dir / "out") == []


def test_appended_rows_refuse_to_resume_and_duplicates_fail_validation(corpus, tiny_models, tmp_path):
    src = _copy_corpus(corpus, tmp_path / "corpus")
    cfg = CaptionConfig.model_validate(_data(src, tiny_models, tmp_path / "out", **{"max_retries": 0}))
    cfg = cfg.model_copy(update={"unit_size": 6})
    run_caption_job(cfg, progress=False)
    segments = src / "balanced_train_segments.csv"
    first = [line for line in segments.read_text().splitlines() if line and not line.startswith("#")][0]
    segments.write_text(segments.read_text() + first.replace(first.split(",")[0], "AAAAAAAAAAA", 1) + "\n")
    with pytest.raises(ConfigMismatch, match="source list changed"):
        run_caption_job(cfg, progress=False)
    (tmp_path / "out" / "manifest.json").unlink()  # the done markers still say what they hold
    with pytest.raises(ConfigMismatch, match="audio-000000"):
        run_caption_job(cfg.model_copy(update={"seed": 1}), progress=False)

    dup = tmp_path / "dup"
    with ShardSetWriter(dup, prefix="audio", max_count=1) as w:
        for _ in range(2):
            w.write("s-same", {"json": {"duration": 1.0}})
    write_manifest(dup)
    assert any("duplicate key: also in audio-000000" in str(p) for p in validate(dup))


def test_any_audio_extension_is_found_and_empty_sources_fail(corpus, tmp_path):
    src = _copy_corpus(corpus, tmp_path / "corpus")
    clips = [p for p in sorted((src / "audio").glob("*.flac")) if _decodes(p)]
    for path, suffix in zip(clips[:3], [".WAV", ".ogg", ".Flac"]):
        data, rate = sf.read(path)
        fmt = {".WAV": "WAV", ".ogg": "OGG", ".Flac": "FLAC"}[suffix]
        sf.write(path.with_suffix(suffix), data, rate, format=fmt)
        path.unlink()
    items = load_items(SourceConfig.model_validate(_data(src, {"alm": "", "llm": "", "clap": ""}, "x")["source"]))
    assert sum(it.path.is_file() for it in items) == 10  # the three converted clips are found too
    assert {it.path.suffix for it in items if it.path.is_file()} >= {".WAV", ".ogg", ".Flac", ".flac"}
    folder = load_items(SourceConfig(kind="folder", audio_dir=str(src / "audio")))
    assert len(folder) == 10
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=f"no audio files under {empty} matching source.glob"):
        load_items(SourceConfig(kind="folder", audio_dir=str(empty)))
    source = SourceConfig.model_validate(_data(src, {"alm": "", "llm": "", "clap": ""}, "x")["source"])
    with pytest.raises(FileNotFoundError, match=r"no audio file for any of the 11 AudioSet segments under .*empty"):
        load_items(source.model_copy(update={"audio_dir": str(empty)}))


def test_a_job_with_no_ok_clip_exits_non_zero(corpus, tiny_models, tmp_path):
    src = _copy_corpus(corpus, tmp_path / "corpus")
    for path in sorted((src / "audio").glob("*.flac")):
        path.write_bytes(b"not audio")
    data = _data(src, tiny_models, tmp_path / "out")
    with pytest.raises(NoClipsCaptioned, match="no clip was captioned"):
        run_caption_job(CaptionConfig.model_validate(data), progress=False)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(data))
    proc = subprocess.run([sys.executable, "-m", "captioner", "caption", "--config", str(tmp_path / "job.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "no clip was captioned" in proc.stderr


def test_a_model_error_on_one_clip_is_a_failed_row(corpus, tiny_models, tmp_path, monkeypatch):
    from captioner.engines import TransformersEngine

    cfg = CaptionConfig.model_validate(_data(corpus, tiny_models, tmp_path / "out"))
    victim = next(it for it in load_items(cfg.source)[1:] if _decodes(it.path))
    bad_seed = clip_seed(cfg.seed, victim.key, 0)
    original = TransformersEngine.generate

    def generate(self, requests):
        if any(r.seed == bad_seed for r in requests):
            raise ValueError("the model choked on this clip")
        return original(self, requests)

    monkeypatch.setattr(TransformersEngine, "generate", generate)
    summary = run_caption_job(cfg, progress=False)
    assert summary["ok"] == 8 and summary["failures"]["failed"] == 1 and not summary["failed_units"]
    rows = [r for p in sorted((tmp_path / "out").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    failed = [r for r in rows if r["status"] == "failed"]
    assert [r["key"] for r in failed] == [victim.key]
    assert failed[0]["error"] == "alm: ValueError: the model choked on this clip"

    def broken(self, requests):  # not the clip's fault: OSError is infrastructure, the unit is retried
        raise OSError("disk gone")

    monkeypatch.setattr(TransformersEngine, "generate", broken)
    with pytest.raises(NoClipsCaptioned):
        run_caption_job(cfg.model_copy(update={"output": str(tmp_path / "out2")}), progress=False)
    assert json.loads((tmp_path / "out2" / "caption_summary.json").read_text())["failed_units"]


def test_scheduling_knobs_are_not_identity():
    base = CaptionConfig.model_validate({"alm": {"kind": "vllm", "vllm": {"gpu_memory_utilization": 0.5,
                                                                          "max_model_len": 4096}}})
    retuned = base.model_copy(update={"batch_clips": 8,
                                      "clap": base.clap.model_copy(update={"text_batch": 4, "device": "cuda:1"}),
                                      "alm": base.alm.model_copy(update={"device": "cuda:0", "decode": "compiled",
                                                                         "clips_per_decode": 2, "vllm": {
                                          "gpu_memory_utilization": 0.8, "max_model_len": 4096}}),
                                      "ray": base.ray.model_copy(update={"workers": 3})})
    assert retuned.identity() == base.identity()
    longer = base.model_copy(update={"alm": base.alm.model_copy(update={"vllm": {"max_model_len": 8192}})})
    assert longer.identity() != base.identity()  # what the model reads is identity
    assert base.model_copy(update={"seed": 3}).identity() != base.identity()


def test_strong_labels_honour_present_and_keys_follow_segment_ids(tmp_path):
    (tmp_path / "audio").mkdir()
    sf.write(tmp_path / "audio" / "abcdefghijk_0.flac", np.zeros(1600), 16000)
    (tmp_path / "seg.csv").write_text('# header\nabcdefghijk, 0.000, 10.000, "/m/a"\n')
    (tmp_path / "strong.tsv").write_text("segment_id\tstart_time_seconds\tend_time_seconds\tlabel\tpresent\n"
                                         "abcdefghijk_0\t0.0\t1.0\t/m/a\tPRESENT\n"
                                         "abcdefghijk_0\t2.0\t3.0\t/m/b\tNOT_PRESENT\n")
    items = load_items(SourceConfig(audio_dir=str(tmp_path / "audio"), segments=[str(tmp_path / "seg.csv")],
                                    strong=[str(tmp_path / "strong.tsv")]))
    assert items[0].key == "audioset-abcdefghijk_0" and items[0].extra["segment_id"] == "abcdefghijk_0"
    assert [e["label"] for e in items[0].strong] == ["/m/a"]


def test_a_stale_writer_cannot_clobber_a_finished_shard(tmp_path):
    stale, fresh = ShardWriter(tmp_path, "audio", 0), ShardWriter(tmp_path, "audio", 0)
    stale.write("s-a", {"json": {"duration": 1.0, "who": "stale"}})
    fresh.write("s-a", {"json": {"duration": 1.0, "who": "fresh"}})
    fresh_stats = fresh.close()
    assert stale.close() == fresh_stats  # the second to finish finds the shard done and discards its own
    write_manifest(tmp_path)
    assert validate(tmp_path) == [] and not list(tmp_path.glob("*.tmp-*"))

    live = ShardWriter(tmp_path, "audio", 1)
    live.write("s-b", {"json": {"duration": 1.0}})
    (tmp_path / "audio-000002.tar.tmp-deadhost-1-abc").write_bytes(b"left by a killed writer")
    assert sweep_stale_tmp(tmp_path) == 1
    assert len(list(tmp_path.glob("*.tmp-*"))) == 1  # the live writer's is kept
    live.close()


# ---- pools placement (vLLM cannot be installed here: fake engines stand in for it) ----------------------

def test_pool_plan_from_the_cluster_size():
    cfg = CaptionConfig.model_validate({"alm": {"kind": "vllm"}, "labels": {"engine": {"kind": "vllm"}}})
    plan = plan_pools(cfg, 64)
    assert (plan.llm, plan.clap, plan.writers) == (2, 16, 64) and plan.alm == 64 - 2 - 4
    assert plan.gpus() == 64 and plan.alm_gpus == 1 and plan.clap_gpus == 0.25
    no_labels = cfg.model_copy(update={"labels": cfg.labels.model_copy(update={"enabled": False})})
    assert plan_pools(no_labels, 8).llm == 0 and plan_pools(no_labels, 8).alm == 7
    tp = cfg.model_copy(update={"alm": cfg.alm.model_copy(update={"vllm": {"tensor_parallel_size": 2}})})
    assert plan_pools(tp, 16).alm_gpus == 2 and plan_pools(tp, 16).alm == (16 - 1 - 1) // 2
    cpu = plan_pools(CaptionConfig(), 0)
    assert (cpu.alm, cpu.llm, cpu.clap, cpu.writers, cpu.gpus()) == (1, 1, 1, 2, 0)
    too_many = cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"llm": PoolConfig(actors=10)})})
    with pytest.raises(ValueError, match="need .* GPUs"):
        plan_pools(too_many, 8)


@pytest.mark.timeout(120)
def test_actor_options_whole_gpus_fractions_and_placement_groups():
    import ray

    cfg = CaptionConfig.model_validate({"alm": {"kind": "vllm", "vllm": {"tensor_parallel_size": 2}}})
    plan = plan_pools(cfg, 8)
    assert actor_options("clap", plan, cfg)["num_gpus"] == 0.25
    assert actor_options("llm", plan, cfg)["num_gpus"] == 1.0
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never a running cluster
    opts = actor_options("alm", plan, cfg)
    group = opts["scheduling_strategy"].placement_group
    assert opts["num_gpus"] == opts["num_cpus"] == 0 and group.bundle_specs == [{"GPU": 1.0, "CPU": 1.0}] * 2
    ray.util.remove_placement_group(group)


class FakeEngineActor:
    """Stands in for a vLLM engine actor: answers with its own id, so the shards show the routing."""

    def __init__(self, spec: dict):
        import uuid

        self.id, self.model = uuid.uuid4().hex[:6], spec["model"]

    def info(self) -> dict:
        return {"name": f"fake:{self.model}:{self.id}", "sample_rate": 16000}

    def generate(self, requests):
        return [[f"{'heard' if r.audio is not None else 'labelled'} by {self.id} {k}" for k in range(r.n)]
                for r in requests]


class FakeClapActor:
    def __init__(self, spec: dict):
        pass

    def info(self) -> dict:
        return {"sample_rate": 48000}

    def score_many(self, jobs):
        return [[round(0.5 - 0.01 * i, 6) for i in range(len(texts))] for _, texts in jobs]


FAULT_DIR: Path | None = None  # set by the fault test; the fake actors are pickled by value, with it


class FaultyEngineActor(FakeEngineActor):
    """The first ALM actor to start is the faulty one (its Ray actor id is stable across restarts): it serves one
    request, then dies (`os._exit`) or hangs on every later call, in every incarnation Ray restarts."""

    def __init__(self, spec: dict):
        import ray

        super().__init__(spec)
        me = ray.get_runtime_context().get_actor_id()
        claim = FAULT_DIR / f"faulty-{self.model}"
        try:
            with open(claim, "x") as f:
                f.write(me)
        except FileExistsError:
            pass
        self.faulty = self.model == "alm-model" and claim.read_text() == me

    def generate(self, requests):
        if self.faulty:
            served = FAULT_DIR / "served"
            if served.exists():
                (FAULT_DIR / f"fault-{os.getpid()}").write_text("")
                mode = (FAULT_DIR / "mode").read_text()
                if mode == "dies":
                    os._exit(1)
                if mode == "freezes":  # the whole process stops (SIGSTOP): its probes get no answer either
                    os.kill(os.getpid(), signal.SIGSTOP)
                time.sleep(3600)
            served.write_text("")
        return super().generate(requests)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", ["dies", "hangs", "freezes"])
def test_an_engine_actor_lost_for_good_mid_job_leaves_the_routing(corpus, tmp_path, monkeypatch, mode):
    """Two ALM actors; one serves a request, then dies on every call (even after Ray restarts it), hangs past
    the call deadline, or freezes (SIGSTOP on its process) in every incarnation. The job finishes on the live
    one: every clip exactly once, no unit lost, none a failed row."""
    global FAULT_DIR
    (tmp_path / "faults").mkdir()
    (tmp_path / "faults" / "mode").write_text(mode)
    monkeypatch.setattr(sys.modules[__name__], "FAULT_DIR", tmp_path / "faults")
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setattr(pools, "EngineActor", FaultyEngineActor)
    monkeypatch.setattr(pools, "ClapActor", FakeClapActor)
    data = _data(corpus, {"alm": "alm-model", "llm": "llm-model", "clap": "clap-model"}, tmp_path / "out",
                 workers=2, num_cpus=0.25, alm={"actors": 2, "num_cpus": 0.1}, llm={"num_cpus": 0.1},
                 clap={"num_cpus": 0.1}, max_restarts=1, call_timeout=20.0, start_timeout=60.0, max_retries=1)
    data["unit_size"], data["batch_clips"] = 2, 1
    try:
        summary = run_caption_job(CaptionConfig.model_validate(data), progress=False)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert list((tmp_path / "faults").glob("fault-*")), "the faulty actor was never called again"
    plan = json.loads((tmp_path / "out" / "manifest.json").read_text())["partitioning"]
    assert summary["ok"] == 9 and summary["failed_units"] == {} and summary["shards"] == plan["units"]
    lost = {"dies": "actors_restarting", "hangs": "actors_suspect", "freezes": "actors_suspect"}[mode]
    assert summary["faults"].get(lost, 0) >= 1, summary["faults"]  # the summary says what the actors went through
    assert validate(tmp_path / "out") == []  # no key twice, every planned unit a shard, every item a row
    rows = [r for p in sorted((tmp_path / "out").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert len(rows) == len({r["key"] for r in rows}) == plan["items"]


@pytest.mark.timeout(120)
def test_an_unreachable_cluster_is_one_line_and_nothing_is_written(corpus, tiny_models, tmp_path):
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(_data(corpus, tiny_models, tmp_path / "out", workers=1)))
    proc = subprocess.run([sys.executable, "-m", "captioner", "caption", "--config", str(tmp_path / "job.yaml"),
                           "--ray-address", f"127.0.0.1:{_free_port()}"], capture_output=True, text=True, timeout=100)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-3000:]
    assert "cannot join the Ray cluster" in proc.stderr and "RAY_AUTH_MODE" not in proc.stderr.split(":")[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.timeout(240)
def test_pools_route_requests_to_every_engine_actor(corpus, tmp_path, monkeypatch):

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setattr(pools, "EngineActor", FakeEngineActor)
    monkeypatch.setattr(pools, "ClapActor", FakeClapActor)
    data = _data(corpus, {"alm": "alm-model", "llm": "llm-model", "clap": "clap-model"}, tmp_path / "out",
                 workers=2, num_cpus=0.25, alm={"actors": 2, "num_cpus": 0.1}, llm={"num_cpus": 0.1},
                 clap={"num_cpus": 0.1})
    data["unit_size"], data["batch_clips"] = 2, 1
    try:
        summary = run_caption_job(CaptionConfig.model_validate(data), progress=False)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert summary["ok"] == 9 and validate(tmp_path / "out") == []
    from shards.reader import SampleDecoder, make_pipeline

    metas = [s["meta"] for s in make_pipeline(tmp_path / "out", decoder=SampleDecoder(decode_audio=False))]
    served_by = {c["text"].split()[2] for m in metas for c in m["candidates"] if c["kind"] == "alm"}
    assert len(served_by) == 2  # both ALM actors served chunks ("Heard by ID k.")
    for m in metas:
        labelled = [c for c in m["candidates"] if c["kind"] == "labels"]
        assert all(c["engine"].startswith("fake:llm-model") and c["text"].startswith("Labelled") for c in labelled)
        assert bool(labelled) == bool(m["strong_labels"])  # the LLM pool sees only clips with strong labels
        assert all(c["engine"].startswith("fake:alm-model") for c in m["candidates"] if c["kind"] == "alm")
    assert len(metas) == 9


@pytest.mark.timeout(120)
def test_joining_ray_keeps_the_drivers_logging():
    """The driver's INFO lines (the demo's steps, training's step line) survive starting Ray."""
    code = ("import logging; logging.basicConfig(level=logging.INFO)\n"
            "from captioner.config import CaptionConfig; from shards.units import init_ray\n"
            "init_ray(CaptionConfig().ray.env_vars, None)\n"
            "print('LEVEL', logging.getLogger().getEffectiveLevel())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=100)
    assert "LEVEL 20" in proc.stdout, proc.stdout + proc.stderr[-2000:]
