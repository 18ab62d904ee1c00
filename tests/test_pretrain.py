import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import CHANNELS, FRAMES, latent_set, rewrite_tar
from safetensors.torch import load_file

from pretrain.checkpoint import list_checkpoints
from pretrain.config import PretrainConfig
from pretrain.dit import EzAudioDiT
from pretrain.encode import CodecSpec, EncodeConfig, run_encode
from pretrain.train import Trainer, compute_loss
from shards.config import ConfigError, apply_override, load_config
from shards.manifest import ConfigMismatch, open_shard_set, write_manifest
from shards.validate import validate

ROOT = Path(__file__).resolve().parents[1]


def _cfg(tmp_path, shards, **overrides) -> PretrainConfig:
    data = {"stage": "mask", "output_dir": str(tmp_path / "run"), "model": {"preset": "tiny"},
            "data": {"shards": [str(shards)], "micro_batch_size": 4, "num_workers": 0, "shuffle": 8, "segment_steps": 3},
            "optim": {"lr": 2e-3, "warmup_steps": 1, "schedule": "constant"}, "ema": {"decay": 0.9},
            "validation": {"every": 0}, "steps": 4, "batch_size": 4, "log_every": 1, "save_every": 2,
            "keep_last": 10, "tensorboard": False}
    for key, value in overrides.items():
        apply_override(data, f"{key}={json.dumps(value)}")  # JSON is YAML
    return PretrainConfig.model_validate(data)


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    return latent_set(tmp_path_factory.mktemp("latents") / "set")


def test_config_errors_before_any_work(tmp_path, latents):
    with pytest.raises(ValueError, match="init_from"):
        _cfg(tmp_path, latents, stage="align")
    with pytest.raises(ValueError, match="multiple of data.micro_batch_size"):
        _cfg(tmp_path, latents, batch_size=6)
    cfg = _cfg(tmp_path, latents, batch_size=8)
    with pytest.raises(ValueError, match="not divisible by micro_batch_size × processes"):
        cfg.accumulation(3)
    assert cfg.accumulation(2) == 1 and cfg.accumulation(1) == 2
    (tmp_path / "bad.yaml").write_text("stage: mask\ndata: {shards: [x], micro_batch: 4}\n")
    with pytest.raises(ConfigError, match="data.micro_batch"):
        load_config(PretrainConfig, tmp_path / "bad.yaml")


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "pretrain").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_pretrain_configs_validate(path):
    cfg = load_config(PretrainConfig, path)
    assert cfg.batch_size % cfg.data.micro_batch_size == 0


def test_tiny_model_learns(tmp_path, latents):
    cfg = _cfg(tmp_path, latents, steps=150, save_every=1000, log_every=50, **{"optim.lr": 3e-3, "masking.ratio": [1.0, 1.0]})
    trainer = Trainer(cfg)
    batch = next(iter(trainer.stream))

    def fixed_loss():
        torch.manual_seed(123)
        with torch.no_grad():
            trainer.model.eval()
            value = float(np.mean([trainer.loss(batch).item() for _ in range(8)]))
            trainer.model.train()
        return value

    before = fixed_loss()
    trainer.train()
    after = fixed_loss()
    assert after < 0.5 * before, (before, after)


def _adamw_steps(trainer) -> int:
    """How many updates AdamW applied (its own step count, which a skipped step leaves alone)."""
    return int(trainer.optimizer.optimizer.state[next(iter(trainer.trainable()))]["step"])


@pytest.mark.parametrize("implementation", ["fused", "foreach"])
def test_nan_batch_skips_its_step_and_is_counted(tmp_path, latents, implementation):
    """fused: the skip is decided on the device (found_inf); foreach: on the host. Either way the step counts,
    AdamW applies nothing, and the weights stay finite."""
    trainer = Trainer(_cfg(tmp_path, latents, steps=3, save_every=100, **{"optim.implementation": implementation}))
    assert trainer.sync_free == (implementation == "fused")
    clean = trainer.batches

    def poisoned():
        for i, batch in enumerate(clean):
            if i == 1:
                batch["latent"][0, 0, 0] = float("nan")
            yield batch

    trainer.batches = poisoned()
    trainer.train()
    assert trainer.state.nan_skipped == 1 and trainer.state.step == 3 and trainer.state.micro == 3
    assert _adamw_steps(trainer) == 2
    assert all(torch.isfinite(p).all() for p in trainer.unwrapped.parameters())

    trainer = Trainer(_cfg(tmp_path / "b", latents, steps=3, max_nan_in_row=2))
    trainer.batches = ({**b, "latent": b["latent"] * float("nan")} for b in clean)
    with pytest.raises(RuntimeError, match="2 non-finite losses or gradients in a row at step 2"):
        trainer.train()


class HostReads(torch.overrides.TorchFunctionMode):
    """Records each read of a tensor's value by the host (on a GPU, each is a sync that drains its queue)."""

    READS = {"item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__"}

    def __init__(self):
        super().__init__()
        self.where, self.reads = "outside", []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", None) in self.READS and self.where != "loader":
            self.reads.append(self.where)
        return func(*args, **(kwargs or {}))


def test_a_step_reads_nothing_back_and_a_nan_loss_skips_its_window(tmp_path, latents):
    """A step leaves its numbers on the device (the loss and gradient norm checks included), so the host never
    waits for the GPU; they are read at the log. A NaN loss anywhere in an accumulation window skips that
    optimizer step, counted once. The loader is left out: on a real run it works in its own processes."""
    trainer = Trainer(_cfg(tmp_path, latents, steps=4, save_every=100, log_every=2, batch_size=8))  # 2 micro-batches
    assert trainer.sync_free
    reads, step, clean = HostReads(), trainer.step, trainer.batches

    def draw():
        for i in itertools.count():
            outer, reads.where = reads.where, "loader"
            batch = next(clean)
            reads.where = outer
            yield {**batch, "latent": batch["latent"] * float("nan")} if i == 2 else batch

    def stepping():
        reads.where = "step"
        try:
            return step()
        finally:
            reads.where = "outside"

    trainer.batches, trainer.step = draw(), stepping
    with reads:
        trainer.train()
    assert "step" not in reads.reads and "outside" in reads.reads  # the logs and the save read them
    assert trainer.state.nan_skipped == 1 and trainer.state.step == 4 and trainer.state.micro == 8
    assert _adamw_steps(trainer) == 3
    assert all(torch.isfinite(p).all() for p in trainer.unwrapped.parameters())
    assert all(torch.isfinite(p).all() for p in trainer.ema.shadow_params)


def _nan_gradient(loss: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """The loss plus a term worth 0 whose gradient is NaN: sqrt(u) at u = 0 has slope inf, times du = 1 − 1."""
    p = next(model.parameters())
    return loss + torch.sqrt(p.sum() - p.sum())


def test_fp16_overflow_lets_the_loss_scaler_skip_the_step_and_lower_its_scale(tmp_path, latents, monkeypatch):
    """fp16 on CUDA: an overflowing gradient is the GradScaler's to handle. Skipped without telling it, its scale
    never dropped and the next step's unscale_ raised ("unscale_() has already been called ..."). accelerate gives
    no scaler on a CPU, so the test puts a real torch GradScaler where accelerate keeps its own."""
    from accelerate.optimizer import AcceleratedOptimizer

    trainer = Trainer(_cfg(tmp_path, latents, steps=3, save_every=100))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    monkeypatch.setattr(type(trainer.acc), "mixed_precision", property(lambda self: "fp16"))
    trainer.acc.native_amp, trainer.acc.scaler = True, scaler
    trainer.optimizer = AcceleratedOptimizer(trainer.optimizer.optimizer, scaler=scaler)
    trainer.acc._optimizers = [trainer.optimizer]
    loss, calls = trainer.loss, []

    def overflowing(batch):  # the second micro-batch's gradient is not finite
        calls.append(1)
        return _nan_gradient(loss(batch), trainer.model) if len(calls) == 2 else loss(batch)

    trainer.loss = overflowing
    trainer.train()
    assert trainer.state.step == 3 and trainer.state.nan_skipped == 1
    assert scaler.get_scale() == 2.0**9  # halved once, by the scaler itself
    assert all(torch.isfinite(p).all() for p in trainer.unwrapped.parameters())


def test_nan_gradient_with_a_finite_loss_skips_the_step_and_is_never_saved(tmp_path, latents):
    trainer = Trainer(_cfg(tmp_path, latents, steps=3, save_every=1))
    loss, calls = trainer.loss, []

    def poisoned(batch):
        calls.append(1)
        return _nan_gradient(loss(batch), trainer.model) if len(calls) == 2 else loss(batch)

    trainer.loss = poisoned
    trainer.train()
    assert trainer.state.nan_skipped == 1 and trainer.state.step == 3 and trainer.state.micro == 3
    assert _adamw_steps(trainer) == 2
    assert all(torch.isfinite(p).all() for p in trainer.unwrapped.parameters())
    assert all(torch.isfinite(p).all() for p in trainer.ema.shadow_params)
    for ckpt in list_checkpoints(tmp_path / "run"):
        assert all(torch.isfinite(v).all() for v in load_file(ckpt / "dit_raw" / "model.safetensors").values())
    # weights that are non-finite anyway (a poisoned resume, a bad init) are never written
    with torch.no_grad():
        next(trainer.unwrapped.parameters()).fill_(float("nan"))
    with pytest.raises(RuntimeError, match="non-finite weights at step 3: not saved"):
        trainer.save()


def test_wrong_shape_and_nan_latents_are_named_skips(tmp_path, caplog):
    """One (8, 30) latent among (8, 40) ones and one with a NaN: each a counted skip naming its sample, not a
    collate crash or a micro-batch dropped each time the sample is drawn."""
    import io

    shards = latent_set(tmp_path / "set", n=8)
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["extra"]["duration"] = FRAMES / manifest["extra"]["frame_rate"]
    (shards / "manifest.json").write_text(json.dumps(manifest))
    short, nan = io.BytesIO(), io.BytesIO()
    np.save(short, np.zeros((CHANNELS, 30), np.float16))
    poisoned = np.zeros((CHANNELS, FRAMES), np.float16)
    poisoned[3, 7] = np.nan
    np.save(nan, poisoned)
    rewrite_tar(shards / "latent-000000.tar", {"syn-001.npy": short.getvalue(), "syn-002.npy": nan.getvalue()})
    trainer = Trainer(_cfg(tmp_path / "ok", shards, steps=8, save_every=100, **{"data.shuffle": 0}))
    with caplog.at_level("WARNING"):
        trainer.train()
    assert trainer.stream.skipped >= 2 and trainer.state.step == 8 and trainer.state.nan_skipped == 0
    assert "syn-001: latent of shape (8, 30), the set's latents are (8, 40)" in caplog.text
    assert "syn-002: non-finite values in its latent" in caplog.text


def _class_latents(directory: Path, n: int = 60) -> Path:
    """Latents whose content its caption names: class k of 3 has its own channel pattern (plus noise); every
    4th clip is in the eval split, which training holds out."""
    rng = np.random.default_rng(0)
    names, t = ["Hum", "Chirp", "Clicking"], np.arange(FRAMES) / FRAMES
    patterns = [np.sin(2 * np.pi * (k + 1) * t + np.arange(CHANNELS)[:, None] * (k + 1)) for k in range(3)]
    open_shard_set(directory, {"class_latents": n}, kind="latent")
    from shards.writer import ShardSetWriter

    with ShardSetWriter(directory, prefix="latent", max_count=16) as w:
        for i in range(n):
            k = i % 3
            z = (patterns[k] + 0.3 * rng.standard_normal((CHANNELS, FRAMES))).astype(np.float16)
            w.write(f"cls-{i:03d}", {"npy": z, "json": {
                "key": f"cls-{i:03d}", "captions": [f"{names[k]}."], "split": "eval" if i % 4 == 3 else "train",
                "strong_labels": [{"label": names[k], "start": 0.0, "end": 4.0}],
                "latent": {"frames": FRAMES, "valid_frames": FRAMES}}})
    codec = {"pretrained": "unused", "subfolder": None, "sample_posterior": False,
             "latent_mean": [0.0] * CHANNELS, "latent_std": [1.0] * CHANNELS}
    write_manifest(directory, extra={"codec": codec, "frame_rate": 10.0, "latent_channels": CHANNELS})
    return directory


def test_text_conditioning_learns_a_held_out_caption_margin(tmp_path, tiny_models):
    """Stage align on latents whose class its caption names: on the held-out (eval) clips, which training never
    draws, the flow loss with the clip's own caption falls clearly below the loss with another class's; at the
    align start (zero-initialised cross-attention) both are exactly equal, so an untrained model fails the bar."""
    from types import SimpleNamespace

    from capflow.learning import caption_margin, single_class_latents

    shards = _class_latents(tmp_path / "classes")
    mask = Trainer(_cfg(tmp_path / "m", shards, steps=2, save_every=2)).train()
    trainer = Trainer(_cfg(tmp_path / "a", shards, stage="align", init_from=str(mask), steps=150, save_every=150,
                           log_every=50, text_encoder={"pretrained": str(tiny_models["flan-t5"])},
                           **{"optim.lr": 3e-3, "masking.full_mask_prob": 0.75, "data.holdout_split": "eval",
                              "data.micro_batch_size": 8, "batch_size": 8}))
    drawn = [key for batch in itertools.islice(iter(trainer.stream), 10) for key in batch["key"]]
    assert drawn and not any(int(key[-3:]) % 4 == 3 for key in drawn)  # no eval clip is trained on
    latents, labels, _ = single_class_latents(shards)
    assert len(labels) == 15
    model = SimpleNamespace(objective=trainer.objective, dit=trainer.unwrapped.eval(), text_encoder=trainer.text_encoder)
    before = caption_margin(model, latents, labels, sorted(set(labels)))
    assert before["right"] == before["wrong"] and before["right_lower_share"] == 0.0
    trainer.train()
    model.dit = trainer.unwrapped.eval()
    after = caption_margin(model, latents, labels, sorted(set(labels)))
    assert after["right"] < 0.9 * after["wrong"] and after["right_lower_share"] >= 0.8, after


def test_mask_export_then_align_init_from(tmp_path, latents, tiny_models):
    mask_cfg = _cfg(tmp_path / "m", latents, steps=2)
    export = Trainer(mask_cfg).train()
    assert (export / "capflow.json").is_file() and (export / "README.md").is_file()
    card = (export / "README.md").read_text()
    assert "stage `mask`" in card and "| steps | 2 (8 samples) |" in card
    from huggingface_hub import ModelCard

    data = ModelCard(card).data
    assert data.license == "apache-2.0" and data.pipeline_tag is None and "ignores prompts" in card
    assert str(tmp_path) not in card  # no local paths on a public card
    mask_model = EzAudioDiT.from_pretrained(export / "dit").eval()
    assert not mask_model.has_text

    align_cfg = _cfg(tmp_path / "a", latents, stage="align", init_from=str(export),
                     text_encoder={"pretrained": str(tiny_models["flan-t5"])}, **{"masking.full_mask_prob": 0.75})
    trainer = Trainer(align_cfg)
    assert trainer.unwrapped.has_text
    batch = next(iter(trainer.stream))
    trainer.model.eval()
    torch.manual_seed(7)
    with torch.no_grad():
        first_align = trainer.loss(batch)
    torch.manual_seed(7)
    with torch.no_grad():
        recomputed = compute_loss(mask_model, batch, align_cfg, trainer.span, None, "cpu")
    torch.testing.assert_close(first_align, recomputed, rtol=0, atol=0)


def test_single_process_resume_matches_uninterrupted(tmp_path, latents):
    full = Trainer(_cfg(tmp_path / "full", latents, steps=4, save_every=2))
    full.train()
    part = Trainer(_cfg(tmp_path / "part", latents, steps=2, save_every=2))
    part.train()
    resumed = Trainer(_cfg(tmp_path / "part", latents, steps=4, save_every=2), resume="latest")
    assert resumed.state.step == 2 and resumed.state.micro == 2
    resumed.train()
    a = load_file(list_checkpoints(tmp_path / "full" / "run")[-1] / "dit_raw" / "model.safetensors")
    b = load_file(list_checkpoints(tmp_path / "part" / "run")[-1] / "dit_raw" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def _launch(tmp_path: Path, cfg: PretrainConfig, launcher: list[str], resume: bool) -> str:
    """Run `-m pretrain` under a multi-process launcher; returns its log (stderr)."""
    path = tmp_path / f"{Path(cfg.output_dir).parent.name}-{cfg.steps}.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    cmd = [sys.executable, "-m", *launcher, "-m", "pretrain", "--config", str(path)] + (["--resume", "latest"] if resume else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc.stderr


def _logged_lrs(log: str, steps: int) -> dict[int, float]:
    return {int(m.group(1)): float(m.group(2)) for m in re.finditer(rf"step (\d+)/{steps} \| .*? \| lr ([0-9.e+-]+)", log)}


def _assert_resume_exact(tmp_path: Path, cfg: PretrainConfig, launch) -> tuple[Path, str]:
    """An uninterrupted 4-step run and a run stopped at step 2 then resumed reach the same weights, on an LR
    schedule that the log follows in optimizer steps. Returns the resumed run's last checkpoint."""
    from pretrain.train import lr_lambda

    full_log = launch(cfg.model_copy(update={"output_dir": str(tmp_path / "full" / "run")}), False)
    part = cfg.model_copy(update={"output_dir": str(tmp_path / "part" / "run")})
    launch(part.model_copy(update={"steps": 2}), False)
    launch(part, True)
    lrs = _logged_lrs(full_log, 4)
    assert sorted(lrs) == [1, 2, 3, 4], full_log[-2000:]
    for step, lr in lrs.items():  # the rate step s ran at: the schedule after s − 1 optimizer steps
        assert lr == pytest.approx(cfg.optim.lr * lr_lambda(cfg)(step - 1), rel=1e-2, abs=1e-9), step
    full_ckpt = list_checkpoints(tmp_path / "full" / "run")[-1]
    part_ckpt = list_checkpoints(tmp_path / "part" / "run")[-1]
    assert full_ckpt.name == part_ckpt.name == "step-000004"
    for ckpt in (full_ckpt, part_ckpt):
        state = json.loads((ckpt / "trainer_state.json").read_text())
        assert state["step"] == 4 and state["micro"] == 8 and state["samples"] == 64  # 4 × (4 × 2 × 2)
        assert not list(ckpt.glob("custom_checkpoint_*"))  # the loop's own state is never pickled
    for name in ("dit_raw", "dit_ema"):
        a, b = (load_file(c / name / "model.safetensors") for c in (full_ckpt, part_ckpt))
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{name}/{k}")
    return part_ckpt, full_log


# A warmup that spans the resume point: the LR then depends on the optimizer-step count only (a cosine would
# also depend on `steps`, which the interrupted run sets to 2).
ACCUMULATION_2 = dict(steps=4, batch_size=16, save_every=2, **{"optim.schedule": "constant", "optim.warmup_steps": 3})


@pytest.mark.timeout(420)
def test_two_process_deepspeed_zero2_bf16_accumulation_resume(tmp_path, latents):
    """accelerate launch, 2 CPU processes, DeepSpeed ZeRO-2 in bf16 (the EMA over the fp32 master partitions),
    batch 16 = 4 × 2 × accumulation 2: the optimizer steps once per trainer step (DeepSpeed's own counter says 4
    after 4 steps, not 8), the LR follows the schedule, and a run stopped at step 2 and resumed is bit-identical to
    an uninterrupted one, its EMA included (restored into the partitions it follows)."""
    ds = tmp_path / "ds.json"
    ds.write_text((ROOT / "configs" / "deepspeed" / "zero2.json").read_text())
    launcher = ["accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1", "--use_deepspeed",
                "--mixed_precision", "bf16", "--dynamo_backend", "no", "--main_process_port", "0"]
    cfg = _cfg(tmp_path, latents, deepspeed=str(ds), mixed_precision="bf16", **ACCUMULATION_2)
    ckpt, _ = _assert_resume_exact(tmp_path, cfg, lambda c, resume: _launch(tmp_path, c, launcher, resume))
    engine = torch.load(next(ckpt.glob("pytorch_model/mp_rank_00_model_states.pt")), weights_only=False)
    assert engine["global_steps"] == 4 and engine["global_samples"] == 64


@pytest.mark.timeout(420)
def test_two_process_ddp_accumulation_resume(tmp_path, latents):
    """torchrun, 2 CPU processes, plain DDP, accumulation 2: AdamW steps once per trainer step, the LR
    schedule counts optimizer steps (not steps × processes), resume is bit-exact, the run exports."""
    launcher = ["torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cfg = _cfg(tmp_path, latents, **ACCUMULATION_2)
    ckpt, _ = _assert_resume_exact(tmp_path, cfg, lambda c, resume: _launch(tmp_path, c, launcher, resume))
    optim = torch.load(ckpt / "optimizer.bin", weights_only=True)
    assert {float(s["step"]) for s in optim["state"].values()} == {4.0}
    assert (tmp_path / "part" / "run" / "export" / "capflow.json").is_file()


def test_encode_latents_resumable_with_provenance(tmp_path, tiny_models, corpus):
    from captioner.sources import SourceConfig, load_items
    from shards import audio
    from shards.writer import ShardSetWriter as Writer

    audio_dir = tmp_path / "audio_shards"
    open_shard_set(audio_dir, {"t": 1})
    with Writer(audio_dir, prefix="audio", max_count=4) as w:
        for item in load_items(SourceConfig(kind="folder", audio_dir=str(corpus / "audio")))[:6]:
            try:
                clip = audio.decode(item.path)
            except audio.AudioError as e:
                w.add_failure(item.key, "unreadable", str(e), item.meta())
                continue
            w.write(item.key, {"flac": audio.encode_flac(clip), "json": item.meta() | {"duration": clip.duration,
                                                                                     "captions": ["a tone"]}})
    write_manifest(audio_dir)
    cfg = EncodeConfig(input=str(audio_dir), output=str(tmp_path / "latent"), duration=1.0, batch_size=3,
                       codec=CodecSpec(pretrained=str(tiny_models["oobleck"]), subfolder=None), stats_clips=8)
    manifest = run_encode(cfg, progress=False)
    assert manifest["kind"] == "latent" and manifest["num_samples"] == 5 and validate(tmp_path / "latent") == []
    extra = manifest["extra"]
    assert extra["frame_rate"] == 50.0 and len(extra["codec"]["latent_mean"]) == 8
    from shards.reader import SampleDecoder, make_pipeline

    samples = list(make_pipeline(tmp_path / "latent", decoder=SampleDecoder(decode_audio=False)))
    assert all(s["latent"].shape == (8, 50) and s["latent"].dtype == np.float16 for s in samples)
    assert all(s["meta"]["captions"] == ["a tone"] and s["meta"]["latent"]["valid_frames"] <= 50 for s in samples)
    import pyarrow.parquet as pq

    statuses = [r["status"] for p in sorted((tmp_path / "latent").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert sorted(statuses) == ["ok"] * 5 + ["unreadable"]  # the input's failure row is carried over
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "latent").glob("*.tar")}
    run_encode(cfg, progress=False)  # rerun: every shard is done, nothing is rewritten
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "latent").glob("*.tar")} == before
    (tmp_path / "latent" / "manifest.json").unlink()  # the done markers alone still refuse a swapped input
    first = sorted(audio_dir.glob("*.tar"))[0]
    rewrite_tar(first, {})  # same samples, other bytes: as if another set had been written at this path
    stats_path = first.with_name(first.stem + "_stats.json")
    stats = json.loads(stats_path.read_text())
    stats["sha256"] = "0" * 64  # the input set's record of that shard changed
    stats_path.write_text(json.dumps(stats))
    write_manifest(audio_dir)
    with pytest.raises(ConfigMismatch, match="input shard changed"):
        run_encode(cfg, progress=False)


def test_bad_sample_counted_or_raised_in_strict_mode(tmp_path):
    shards = latent_set(tmp_path / "set", n=8)
    rewrite_tar(shards / "latent-000000.tar", {"syn-001.npy": b"\x93NUMPY garbage"})
    trainer = Trainer(_cfg(tmp_path / "ok", shards, steps=6, save_every=100, **{"data.shuffle": 0}))
    trainer.train()
    assert trainer.stream.skipped >= 1 and trainer.state.step == 6
    strict = Trainer(_cfg(tmp_path / "strict", shards, steps=6, save_every=100, **{"data.strict": True}))
    with pytest.raises(ValueError):
        strict.train()


def test_counters_and_silent_choices(tmp_path, latents):
    """samples counts every step once whatever log_every is; stage mask refuses full_mask_prob; weight decay
    spares norms, biases, the mask embedding and the AdaLN tables; the EMA warmup is the configured one."""
    trainer = Trainer(_cfg(tmp_path, latents, steps=10, log_every=5, save_every=100, **{"optim.weight_decay": 0.1,
                                                                                          "ema.warmup": "power"}))
    trainer.train()
    assert trainer.state.samples == 40
    assert trainer.ema.use_ema_warmup and trainer.ema.power == pytest.approx(2 / 3)
    names = {id(p): n for n, p in trainer.unwrapped.named_parameters()}
    decayed, spared = ({names[id(p)] for p in g["params"]} for g in trainer.optimizer.param_groups)
    assert trainer.optimizer.param_groups[0]["weight_decay"] == 0.1 and trainer.optimizer.param_groups[1]["weight_decay"] == 0
    assert "mask_embed" in spared and "in_blocks.0.adaln.table" in spared and "norm_out.weight" in spared
    assert "proj_out.bias" in spared and "in_blocks.0.attn.qkv.weight" in decayed and not decayed & spared
    with pytest.raises(ValueError, match="full_mask_prob is for stages align/sft"):
        _cfg(tmp_path, latents, **{"masking.full_mask_prob": 0.5})


def test_resume_is_pickle_free_and_keeps_the_ema_on_the_model_device(tmp_path, latents, monkeypatch):
    Trainer(_cfg(tmp_path, latents, steps=2, save_every=2)).train()
    ckpt = list_checkpoints(tmp_path / "run")[-1]
    # each tensor once: the trained weights in dit_raw, the EMA's in dit_ema; accelerate keeps optimizer and RNG
    assert (ckpt / "dit_raw").is_dir() and (ckpt / "dit_ema").is_dir() and (ckpt / "optimizer.bin").is_file()
    assert not list(ckpt.glob("model*.safetensors")) and not (ckpt / "ema.safetensors").exists()
    assert not list(ckpt.glob("custom_checkpoint_*"))
    unsafe = []
    real_load = torch.load

    def spy(*args, **kwargs):
        if kwargs.get("weights_only") is False:
            unsafe.append(args[0])
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    resumed = Trainer(_cfg(tmp_path, latents, steps=4, save_every=2), resume="latest")
    assert unsafe == []  # nothing of the loop's state is unpickled with weights_only=False
    assert resumed.ema.optimization_step == 2 and resumed.state.step == 2
    model_devices = {p.device for p in resumed.unwrapped.parameters()}
    assert {p.device for p in resumed.ema.shadow_params} == model_devices
    optim_devices = {v.device for s in resumed.optimizer.state.values() for v in s.values()
                     if torch.is_tensor(v) and v.dim() > 0}
    assert optim_devices == model_devices  # every state object sits where the model is
    saved = load_file(ckpt / "dit_ema" / "model.safetensors")
    for (name, _), shadow in zip(resumed.unwrapped.named_parameters(), resumed.ema.shadow_params):
        assert torch.equal(shadow, saved[name]), name


def test_ema_state_loads_into_the_devices_it_lives_on(tmp_path):
    """The EMA is restored in place: on a GPU run its tensors stay on the GPU (here: the meta device stands
    for 'not the CPU', where a state dict loaded with map_location='cpu' would otherwise leave them)."""
    from diffusers.training_utils import EMAModel

    from pretrain.checkpoint import load_loop_state, save_loop_state
    from pretrain.train import TrainState

    model = EzAudioDiT(preset_tiny())
    ema = EMAModel(model.parameters(), decay=0.9)
    ema.optimization_step = 7
    save_loop_state(tmp_path, TrainState(step=7, micro=9), ema)
    values = [p.clone() for p in ema.shadow_params]  # as read from dit_ema
    with torch.device("meta"):
        elsewhere = EMAModel(EzAudioDiT(preset_tiny()).parameters(), decay=0.9)
    state = TrainState()
    load_loop_state(tmp_path, state, elsewhere, values)
    assert state.step == 7 and state.micro == 9 and elsewhere.optimization_step == 7
    assert all(p.device.type == "meta" for p in elsewhere.shadow_params)
    restored = EMAModel(EzAudioDiT(preset_tiny()).parameters(), decay=0.9)
    load_loop_state(tmp_path, TrainState(), restored, values)
    for a, b in zip(ema.shadow_params, restored.shadow_params):
        assert torch.equal(a, b)


@pytest.mark.parametrize("warmup", [True, False])
def test_lerp_ema_follows_diffusers_ema(warmup):
    """LerpEMA's in-place update gives diffusers' EMAModel's values, decay schedule and counters."""
    from diffusers.training_utils import EMAModel

    from pretrain.ema import LerpEMA

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(64, 32)), torch.nn.Parameter(torch.randn(32))]
    kw = {"decay": 0.99, "use_ema_warmup": warmup, "power": 0.75, "foreach": True}
    ours, theirs = LerpEMA(params, **kw), EMAModel(params, **kw)
    for _ in range(5):
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn_like(p))
        with pytest.MonkeyPatch.context() as patch:  # the lerp itself, not a fallback to diffusers' update
            patch.setattr(EMAModel, "step", lambda *a: pytest.fail("LerpEMA fell back to EMAModel.step"))
            ours.step(params)
        theirs.step(params)
    assert ours.optimization_step == theirs.optimization_step == 5 and ours.cur_decay_value == theirs.cur_decay_value
    for a, b, p in zip(ours.shadow_params, theirs.shadow_params, params):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        assert not torch.allclose(a, p)  # an average, not a copy


def preset_tiny():
    from pretrain.dit import preset

    return preset("tiny", text_dim=None)


@pytest.mark.timeout(420)
def test_deepspeed_bf16_checkpoints_hold_fp32_master_weights(tmp_path, latents):
    """DeepSpeed bf16 (2 CPU processes, ZeRO-2) runs the module in bf16 and keeps fp32 master weights in its
    optimizer: dit_raw, dit_ema and the export carry float32 values from those (equal to DeepSpeed's own fp32
    reconstruction of the checkpoint), not the module's bf16 rounding, so the next stage starts from them."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    ds = tmp_path / "ds.json"
    ds.write_text((ROOT / "configs" / "deepspeed" / "zero2.json").read_text())
    launcher = ["accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1", "--use_deepspeed",
                "--mixed_precision", "bf16", "--dynamo_backend", "no", "--main_process_port", "0"]
    cfg = _cfg(tmp_path, latents, deepspeed=str(ds), mixed_precision="bf16", steps=2, batch_size=8, save_every=2,
               **{"ema.decay": 0.0})  # the EMA is then the last step's weights: the fp32 masters, to the bit
    _launch(tmp_path, cfg, launcher, False)
    ckpt = list_checkpoints(tmp_path / "run")[-1]
    master = get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag="pytorch_model")
    raw, ema = (load_file(ckpt / name / "model.safetensors") for name in ("dit_raw", "dit_ema"))
    export = load_file(tmp_path / "run" / "export" / "dit" / "model.safetensors")
    for weights in (raw, ema, export):
        assert {v.dtype for v in weights.values()} == {torch.float32}
    rounded = [k for k, v in raw.items() if v.numel() > 16 and torch.equal(v, v.bfloat16().float())]
    assert not rounded, rounded[:5]  # trained matrices off the bf16 grid: the master copy, not the module
    for k, v in master.items():
        torch.testing.assert_close(raw[k], v.float(), rtol=0, atol=0, msg=k)
        torch.testing.assert_close(ema[k], v.float(), rtol=0, atol=0, msg=k)  # not bf16(master): an EMA of masters


def test_encode_peak_normalises_clips_and_edit_groups_by_one_gain(tiny_models):
    """EzAudio trains on peak-normalised clips (data_config `norm: true`); an edit group's three audios share
    one gain, so that the remove target is still the background in the source."""
    from pretrain.codec import AudioCodec, CodecConfig
    from pretrain.encode import _waves
    from shards import audio
    from shards import format as fmt

    codec = AudioCodec(CodecConfig(str(tiny_models["oobleck"])))
    rng = np.random.default_rng(0)
    x = (0.01 * rng.standard_normal((1, 24000))).astype(np.float32)
    a = (0.2 * rng.standard_normal((1, 24000))).astype(np.float32)

    def flac(w):
        return audio.encode_flac(audio.Audio(w, 24000), bits=24)

    samples = [("clip", {fmt.META: b"{}", fmt.AUDIO: flac(x)}),
               ("group", {fmt.META: b"{}", "x.flac": flac(x), "xa.flac": flac(x + a), "xb.flac": flac(x)})]
    _, plain, _ = _waves(samples, codec, 1.0)
    good, waves, _ = _waves(samples, codec, 1.0, peak_normalize=True)
    assert waves[0].abs().max() == pytest.approx(1.0, abs=1e-4) and plain[0].abs().max() < 0.1
    rows = {m: w for (_, m, _, _), w in zip(good, waves)}
    gain = float(waves[2].abs().max() / plain[2].abs().max())  # the loudest member (X + A) at peak 1
    assert rows["xa.flac"].abs().max() == pytest.approx(1.0, abs=1e-4)
    torch.testing.assert_close(rows["x.flac"], plain[1] * gain, rtol=1e-4, atol=1e-6)  # X by the same gain
