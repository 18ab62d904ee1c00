"""Editing data (finetune/edit_data.py, shards/mix.py): sample-exact mixing, recorded SNRs, splits by clip,
resume and identity, status rows, encoding and reading triplets, stats."""

import json
from collections import Counter

import numpy as np
import pytest

from captioner.synth import synth_captioned_set
from finetune.clips import scan_set
from finetune.config import EditDataConfig
from finetune.edit_data import EditDataWorker, read_clip, run_edit_data
from finetune.groups import GroupPlan, check_splits
from shards import audio
from shards import format as fmt
from shards.audio import conform
from shards.manifest import ConfigMismatch, open_shard_set, read_manifest
from shards.mix import MixConfig, active_span, loudness_db, place, snr_db
from shards.reader import iter_tar_samples
from shards.validate import validate


@pytest.fixture
def captioned(tmp_path):
    return synth_captioned_set(tmp_path / "audio")


def _cfg(inputs, out, tiny_models, **kw) -> EditDataConfig:
    base = dict(inputs=[str(p) for p in inputs], output=str(out), unit_size=4, llm=None,
                clap={"model": str(tiny_models["clap"])}, splits={"valid": 0.0, "test": 0.0}, groups_per_background=2)
    return EditDataConfig.model_validate(base | kw)


def test_placed_event_has_the_recorded_snr_for_both_loudness_measures(rng):
    sr = 16000
    background = (rng.standard_normal((2, 3 * sr)) * 0.05).astype(np.float32)
    event = np.repeat(np.sin(np.linspace(0, 2000, sr // 2))[None].astype(np.float32), 2, 0)
    for method in ("rms", "lufs"):
        placed, placement = place(background, event, 7.5, rng, sr, method)
        assert abs(snr_db(background + placed, background, sr, method) - 7.5) < 0.1
        assert 0 <= placement.onset <= background.shape[-1] - event.shape[-1]
    quiet = np.zeros_like(background)
    quiet[:, sr: sr + 100] = 1.0
    assert active_span(quiet, sr)[0] == sr // 800 * 800 and np.isinf(loudness_db(np.zeros((1, sr)), sr))


def test_group_mix_is_sample_exact_and_flac_keeps_it_within_24_bit(captioned, tiny_models, tmp_path):
    cfg = _cfg([captioned], tmp_path / "edit", tiny_models, sample_rate=16000, mix=MixConfig(snr={"kind": "uniform",
                                                                                                  "low": 20, "high": 25}))
    worker = EditDataWorker(cfg)
    summary = run_edit_data(cfg, progress=False, clap=worker.clap)
    assert summary["ok"] > 0
    manifest = read_manifest(tmp_path / "edit")
    assert manifest["kind"] == "edit" and manifest["schema_version"] == fmt.SCHEMA_VERSION
    key, sample = next(iter_tar_samples(tmp_path / "edit" / manifest["shards"][0]["tar"]))
    meta = json.loads(sample[fmt.META])
    # recompute the float mix from the same clips: the remove target is the background, to the last sample
    refs = {c.key: c.ref() for c in scan_set(captioned)}
    x, a, b = (refs[meta["clips"][r]] for r in ("x", "a", "b"))
    made = worker.mix(GroupPlan(key, meta["split"], x, a, b), {"x": read_clip(x), "a": read_clip(a), "b": read_clip(b)})
    w = made["waves"]
    x_clip = read_clip(x)
    background = conform(x_clip, 16000, x_clip.channels)[..., : round(cfg.duration * 16000)]
    np.testing.assert_array_equal(w["x"], (made["mix"]["gain"] * background).astype(np.float32))
    for e, role in (("a", "xa"), ("b", "xb")):
        assert abs(snr_db(w[role], w["x"], 16000) - meta["mix"][e]["snr_db"]) < 0.1
        assert meta["mix"][e] == made["mix"][e]  # what is recorded is what was drawn
        decoded = audio.decode(sample[f"{role}.{fmt.AUDIO}"]).samples
        assert np.abs(decoded - w[role]).max() <= 2.0**-23 + 1e-9  # 24-bit FLAC
    assert np.abs(audio.decode(sample[f"x.{fmt.AUDIO}"]).samples - w["x"]).max() <= 2.0**-23 + 1e-9
    assert max(np.abs(v).max() for v in w.values()) <= cfg.mix.peak + 1e-6
    assert set(meta["instructions"]) == {"add_a", "add_b", "remove_a", "remove_b", "replace_ab", "replace_ba"}
    assert all(len(v) == cfg.instructions.variants for v in meta["instructions"].values())
    assert meta["events"]["a"] not in meta["events"]["x"] and meta["events"]["b"] not in meta["events"]["x"]
    assert meta["events"]["a"] != meta["events"]["b"]
    assert set(meta["clap"]) == set(fmt.EDIT_ROLES) and meta["count_method"]["x"] == "strong"


def test_no_clip_crosses_splits_and_validate_catches_a_leak(captioned, tiny_models, tmp_path):
    out = tmp_path / "edit"
    run_edit_data(_cfg([captioned], out, tiny_models), progress=False)
    assert validate(out) == []
    metas = [json.loads(s[fmt.META]) for e in read_manifest(out)["shards"]
             for _, s in iter_tar_samples(out / e["tar"])]
    assert {m["split"] for m in metas} == {"train", "test"}
    assert check_splits((m["split"], m["clips"].values()) for m in metas) == []
    leaked = [("train", ["c1", "c2"]), ("test", ["c3", "c2"])]
    assert check_splits(leaked) == ["clip c2 is in a train group and a test group"]
    # a group rewritten to claim another split is reported by `shards validate`
    from tests.helpers import rewrite_tar

    entry = read_manifest(out)["shards"][0]
    key, sample = next(iter_tar_samples(out / entry["tar"]))
    meta = json.loads(sample[fmt.META])
    other = next(m for m in metas if m["split"] != meta["split"])
    meta["clips"]["a"] = other["clips"]["x"]
    rewrite_tar(out / entry["tar"], {f"{key}.json": json.dumps(meta).encode()})
    assert any("splits leak" in str(p) for p in validate(out, check_hashes=False))


def test_resume_skips_done_units_and_refuses_a_changed_identity(captioned, tiny_models, tmp_path):
    out = tmp_path / "edit"
    cfg = _cfg([captioned], out, tiny_models)
    first = run_edit_data(cfg, progress=False)
    stats = sorted(out.glob("*_stats.json"))
    (stats[-1]).unlink()  # one unfinished unit
    mtimes = {p: p.stat().st_mtime_ns for p in stats[:-1]}
    second = run_edit_data(cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"num_cpus": 0.25})}), progress=False)
    assert second["ok"] == first["ok"] and all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    with pytest.raises(ConfigMismatch, match="seed"):
        run_edit_data(cfg.model_copy(update={"seed": 1}), progress=False)


def test_missing_or_corrupt_input_clip_becomes_a_status_row(captioned, tiny_models, tmp_path):
    cfg = _cfg([captioned], tmp_path / "edit", tiny_models)
    from finetune.clips import index_clips
    from finetune.groups import plan_groups

    groups = plan_groups(index_clips(cfg.resolved(), progress=False), cfg)[:3]
    gone = dict(groups[0].x, tar=str(tmp_path / "gone.tar"))
    broken = dict(groups[1].a, size=groups[1].a["size"] // 2)  # a truncated FLAC
    groups = [GroupPlan(groups[0].key, "train", gone, groups[0].a, groups[0].b),
              GroupPlan(groups[1].key, "train", groups[1].x, broken, groups[1].b), groups[2]]
    open_shard_set(tmp_path / "edit", {"t": 1}, kind="edit")
    result = EditDataWorker(cfg).process_unit(0, groups, tmp_path / "edit")
    assert result["rows"] == 3 and result["samples"] == 1
    import pyarrow.parquet as pq

    rows = pq.read_table(next((tmp_path / "edit").glob("*.parquet"))).to_pylist()
    status = {r["key"]: (r["status"], r["error"]) for r in rows}
    assert status[groups[0].key][0] == "missing" and "gone.tar" in status[groups[0].key][1]
    assert status[groups[1].key][0] == "unreadable" and status[groups[2].key][0] == "ok"


def test_encode_edit_groups_and_read_balanced_triplets(captioned, tiny_models, tmp_path):
    from finetune.triplets import TripletDecoder, triplet_pipeline
    from pretrain.encode import EncodeConfig, run_encode
    from shards.stats import compute_stats

    edit, latent = tmp_path / "edit", tmp_path / "latent"
    run_edit_data(_cfg([captioned], edit, tiny_models, max_groups=6), progress=False)
    run_encode(EncodeConfig(input=str(edit), output=str(latent), duration=4.0, batch_size=4,
                            codec={"pretrained": str(tiny_models["oobleck"]), "subfolder": None}), progress=False)
    manifest = read_manifest(latent)
    assert manifest["kind"] == "edit-latent" and validate(latent) == []
    assert {"x.npy", "xa.npy", "xb.npy", "json"} <= set(manifest["shards"][0]["members"])
    ops = Counter()
    for seed in range(30):
        for s in triplet_pipeline(latent, decoder=TripletDecoder(min_clap=None, seed=seed)):
            ops[s["triplet"]["op"]] += 1
            assert s["source"].shape == s["target"].shape and s["triplet"]["instruction"]
    assert set(ops) == {"add", "remove", "replace"} and min(ops.values()) > 0.2 * sum(ops.values())
    # the read-time filter: a threshold no tiny-CLAP score reaches keeps nothing
    assert list(triplet_pipeline(latent, decoder=TripletDecoder(min_clap=0.99))) == []
    stats = compute_stats(edit)["edit"]
    assert stats["triplets"]["add"] == 2 * stats["groups"] and stats["snr_db"]["count"] == 2 * stats["groups"]
    assert all(stats["kept_triplets"][op] <= stats["triplets"][op] for op in stats["triplets"])
    assert compute_stats(edit, min_clap=-1.0)["edit"]["kept_triplets"] == stats["triplets"]


class FakeLLM:
    """The label LLM's interface: names two events for a caption, rewords an instruction."""

    def __init__(self):
        self.prompts = []

    def generate(self, requests):
        self.prompts += [r.prompt for r in requests]
        return [["- dog barking\n- Rain."] if "sound events" in r.prompt else ["Please " + r.prompt.split(": ")[-1]]
                for r in requests]


def test_clips_without_labels_are_counted_by_the_llm_and_paraphrases_are_added(tmp_path, tiny_models):
    from finetune.clips import index_clips, parse_events

    assert parse_events("1. Dog barking.\n2) rain\n- dog barking\n") == ["dog barking", "rain"]
    captioned = synth_captioned_set(tmp_path / "audio")
    from tests.helpers import rewrite_tar

    entry = read_manifest(captioned)["shards"][0]
    key, sample = next(iter_tar_samples(captioned / entry["tar"]))
    meta = json.loads(sample[fmt.META]) | {"labels": [], "strong_labels": []}
    rewrite_tar(captioned / entry["tar"], {f"{key}.json": json.dumps(meta).encode()})
    llm = FakeLLM()
    cfg = _cfg([captioned], tmp_path / "edit", tiny_models, instructions={"variants": 2, "paraphrase": 1})
    clip = next(c for c in index_clips(cfg, llm=llm, progress=False) if c.key == key)
    assert clip.count_method == "llm" and clip.events == ["dog barking", "rain"]
    run_edit_data(cfg, progress=False, llm=llm)
    edit = tmp_path / "edit"
    metas = [json.loads(s[fmt.META]) for e in read_manifest(edit)["shards"] for _, s in iter_tar_samples(edit / e["tar"])]
    assert all(len(m["instructions"]["add_a"]) == 3 and m["instructions"]["add_a"][-1].startswith("Please")
               for m in metas)
    # without an LLM the label-less clip is left out
    assert key not in {c.key for c in index_clips(cfg.model_copy(update={"llm": None}), progress=False)}


@pytest.mark.timeout(240)
def test_edit_data_on_local_ray_writes_the_same_shards_as_in_process(tmp_path, tiny_models):
    captioned = synth_captioned_set(tmp_path / "audio")
    local = _cfg([captioned], tmp_path / "local", tiny_models, max_groups=8)
    on_ray = local.model_copy(update={"output": str(tmp_path / "ray"),
                                      "ray": local.ray.model_copy(update={"workers": 2, "num_cpus": 0.5})})
    import ray

    try:
        run_edit_data(local, progress=False)
        summary = run_edit_data(on_ray, progress=False)
    finally:
        ray.shutdown()
    assert summary["ok"] == 8 and summary["failed_units"] == {}
    tars = {p: [e["sha256"] for e in read_manifest(tmp_path / p)["shards"]] for p in ("local", "ray")}
    assert tars["local"] == tars["ray"]  # deterministic: byte-identical shards wherever they are made
