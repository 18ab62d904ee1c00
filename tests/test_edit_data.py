"""Editing data (finetune/edit_data.py, shards/mix.py): sample-exact mixing, recorded SNRs, splits by clip,
resume and identity, status rows, encoding and reading triplets, stats."""

import json
from collections import Counter

import numpy as np
import pytest

from captioner.synth import synth_captioned_set
from finetune.config import EditDataConfig
from finetune.edit_data import EditDataWorker, run_edit_data
from finetune.groups import GroupPlan, check_splits
from shards import audio
from shards import format as fmt
from shards.manifest import ConfigMismatch, open_shard_set, read_manifest
from shards.mix import MixConfig, active_span, loudness_db, place, snr_db
from shards.reader import iter_tar_samples
from shards.validate import validate


@pytest.fixture
def captioned(tmp_path):
    return synth_captioned_set(tmp_path / "audio")


def _cfg(inputs, out, tiny_models, **kw) -> EditDataConfig:
    base = dict(inputs=[str(p) for p in inputs], output=str(out), unit_size=4, llm=None,
                clap={"model": str(tiny_models["clap"])}, splits={"valid": 0.0, "test": 0.0}, groups_per_background=2,
                min_background_seconds=2.0)
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
    summary = run_edit_data(cfg, progress=False)
    assert summary["ok"] > 0
    manifest = read_manifest(tmp_path / "edit")
    assert manifest["kind"] == "edit" and manifest["schema_version"] == fmt.SCHEMA_VERSION
    # checked against the input clips as stored (16-kHz mono ones: no resampling between them and the mix)
    sources = {key: s for e in read_manifest(captioned)["shards"] for key, s in iter_tar_samples(captioned / e["tar"])}
    checked = 0
    for _, sample in (kv for e in manifest["shards"] for kv in iter_tar_samples(tmp_path / "edit" / e["tar"])):
        meta = json.loads(sample[fmt.META])
        clips = {r: audio.decode(sources[meta["clips"][r]][fmt.AUDIO]) for r in "xab"}
        stored = {r: audio.decode(sample[f"{r}.{fmt.AUDIO}"]).samples for r in fmt.EDIT_ROLES}
        lsb = 2.0**-23 + 1e-9  # 24-bit FLAC
        assert max(np.abs(v).max() for v in stored.values()) <= cfg.mix.peak + lsb
        if any(c.sample_rate != 16000 or c.channels != 1 for c in clips.values()):
            continue
        gain = meta["mix"]["gain"]
        # the remove target is the background times the group gain, to the last sample
        np.testing.assert_allclose(stored["x"], gain * clips["x"].samples[:, : stored["x"].shape[1]], atol=lsb, rtol=0)
        for e, role in (("a", "xa"), ("b", "xb")):
            m = meta["mix"][e]
            onset, n = round(m["onset_s"] * 16000), round(m["duration_s"] * 16000)
            start = round(m["trim_s"][0] * 16000)
            added = stored[role] - stored["x"]
            # X+A - X is zero outside the event and the trimmed event clip at its recorded gains inside
            assert np.abs(np.delete(added, np.s_[onset: onset + n], axis=1)).max() <= 2 * lsb
            event = clips[e].samples[:, start: start + n]
            np.testing.assert_allclose(added[:, onset: onset + n], gain * m["gain"] * event, atol=3 * lsb, rtol=0)
            assert abs(snr_db(stored[role], stored["x"], 16000) - m["snr_db"]) < 0.1
        checked += 1
        assert set(meta["instructions"]) == {"add_a", "add_b", "remove_a", "remove_b", "replace_ab", "replace_ba"}
        assert all(len(v) == cfg.instructions.variants for v in meta["instructions"].values())
        assert meta["events"]["a"] not in meta["events"]["x"] and meta["events"]["b"] not in meta["events"]["x"]
        assert meta["events"]["a"] != meta["events"]["b"]
        assert set(meta["clap"]) == set(fmt.EDIT_ROLES) and meta["count_method"]["x"] == "strong"
    assert checked > 0


def test_no_clip_crosses_splits_and_validate_catches_a_leak(captioned, tiny_models, tmp_path):
    out = tmp_path / "edit"
    run_edit_data(_cfg([captioned], out, tiny_models), progress=False)
    assert validate(out) == []
    metas = [json.loads(s[fmt.META]) for e in read_manifest(out)["shards"]
             for _, s in iter_tar_samples(out / e["tar"])]
    assert {m["split"] for m in metas} == {"train", "test"}
    assert check_splits((m["split"], m["identities"].values()) for m in metas) == []
    leaked = [("train", ["c1", "c2"]), ("test", ["c3", "c2"])]
    assert check_splits(leaked) == ["clip c2 is in a train group and a test group"]
    # a group rewritten to claim another split is reported by `shards validate`
    from tests.helpers import rewrite_tar

    entry = read_manifest(out)["shards"][0]
    key, sample = next(iter_tar_samples(out / entry["tar"]))
    meta = json.loads(sample[fmt.META])
    other = next(m for m in metas if m["split"] != meta["split"])
    meta["identities"]["a"] = other["identities"]["x"]
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


@pytest.fixture
def audioset_like(tmp_path):
    """AudioSet's label structure: weak labels only for most clips (with their parents from the ontology),
    events over whole clips, and the last clips' audio again under AudioCaps keys in the train split."""
    from captioner.synth import ontology_nodes

    (tmp_path / "ontology.json").write_text(json.dumps(ontology_nodes()))
    return synth_captioned_set(tmp_path / "audio", num_clips=32, clips_per_shard=8, eval_share=0.25, weak_share=0.75,
                               duplicates=4), tmp_path / "ontology.json"


def _audio_hashes(captioned) -> dict[str, str]:
    """key -> hash of the decoded samples, computed here (not with the product's identity function)."""
    import hashlib

    return {key: hashlib.md5(audio.decode(s[fmt.AUDIO]).samples.tobytes()).hexdigest()
            for e in read_manifest(captioned)["shards"] for key, s in iter_tar_samples(captioned / e["tar"])}


def test_groups_on_audioset_labels_follow_the_ontology_splits_by_audio_and_isolated_events(audioset_like, tiny_models,
                                                                                           tmp_path):
    from shards.ontology import Ontology
    from shards.stats import compute_stats

    captioned, ontology_path = audioset_like
    out = tmp_path / "edit"
    cfg = _cfg([captioned], out, tiny_models, ontology=str(ontology_path), splits={"valid": 0.0, "test": 0.2},
               groups_per_background=3)
    run_edit_data(cfg, progress=False)
    assert validate(out) == []
    metas = [json.loads(s[fmt.META]) for e in read_manifest(out)["shards"] for _, s in iter_tar_samples(out / e["tar"])]
    assert len(metas) >= 10
    ontology = Ontology.load(ontology_path)
    inputs = {json.loads(s[fmt.META])["key"]: json.loads(s[fmt.META]) for e in read_manifest(captioned)["shards"]
              for _, s in iter_tar_samples(captioned / e["tar"])}
    for m in metas:
        # a "remove" removes every sound of its kind: A and B are unrelated to X's events (its most specific
        # labels: a weak label's parent is implied by it), above or below them
        x_labels = {label.lower() for label in inputs[m["clips"]["x"]]["labels"]}
        x_events = {label for label in x_labels if not any(label in ontology.ancestors(o) - {o} for o in x_labels)}
        for e in "ab":
            assert not any(ontology.related(label, m["events"][e]) for label in x_events), (m["key"], e)
            # every label of the A/B clip is the event or an ancestor of it: one event, parents collapsed
            assert {label.lower() for label in inputs[m["clips"][e]]["labels"]} <= ontology.ancestors(m["events"][e])
        assert not ontology.related(m["events"]["a"], m["events"]["b"])
    # one audio (same decoded samples under another key) never in two splits
    hashes, split_of = _audio_hashes(captioned), {}
    for m in metas:
        for key in m["clips"].values():
            assert split_of.setdefault(hashes[key], m["split"]) == m["split"], key
    # weak-labelled events are cut to their detected span; a clip whose event fills it is never an A or B
    spans = Counter()
    for m in metas:
        for e in "ab":
            clip = inputs[m["clips"][e]]
            start, end = m["mix"][e]["trim_s"]
            assert end - start <= cfg.max_event_fraction * clip["duration"] + 0.05, (m["key"], e, start, end)
            spans[m["span_method"][e]] += 1
    assert spans["activity"] > 0 and set(spans) <= {"strong", "activity"}
    assert compute_stats(out)["edit"]["event_spans"] == dict(spans)


def test_planning_refuses_short_backgrounds_and_unmeasurable_events(tiny_models, tmp_path):
    from finetune.clips import Clip
    from finetune.groups import plan_groups

    def clip(key, events, duration, spans=None):
        return Clip(key, "t.tar", 0, 1, duration, "a caption", events, "strong",
                    spans or {events[0]: (0.0, duration)}, identity=key, span_method="strong")

    events = [clip("a", ["bark"], 3.0), clip("b", ["siren"], 3.0), clip("c", ["bell"], 3.0, {"bell": (1.0, 1.2)}),
              clip("d", ["horn"], 3.0)]
    cfg = _cfg([tmp_path], tmp_path / "edit", tiny_models, min_background_seconds=2.0, min_event_seconds=0.3)
    short, long = clip("short", ["rain"], 0.8), clip("long", ["rain"], 8.0)
    groups = plan_groups([short, long, *events], cfg)
    assert {g.x["key"] for g in groups} == {"long", "a", "b", "c", "d"}  # every background of 2 s or more
    assert all(g.a["key"] != "c" and g.b["key"] != "c" for g in groups)  # a 0.2-s event is too short
    with pytest.raises(ValueError, match="0.4 s"):
        _cfg([tmp_path], tmp_path / "edit", tiny_models, mix={"loudness": "lufs"}, min_event_seconds=0.3)


def test_segments_of_a_recording_are_distinct_clips_in_one_split(tmp_path, tiny_models):
    """A 30-s AudioSet item or file cut into three 10-s clips (`segment_seconds`): each clip is its own identity
    (recording, span) — three, not one kept and two dropped as repeats — and the three share one split, decided
    per recording (a file's segments were hashed one by one and spread over train and test)."""
    from finetune.clips import index_clips
    from shards.manifest import write_manifest
    from shards.writer import ShardWriter

    rng = np.random.default_rng(0)
    directory = tmp_path / "set"
    open_shard_set(directory, {"segments": 1})
    metas = []
    for i, span in enumerate([(0, 10), (10, 20), (20, 30)]):
        metas.append({"key": f"as-Yabc_{i}", "source": "audioset", "id": f"Yabc_30000_{span[0] * 1000}",
                      "ytid": "Yabc", "start": 30.0, "span": list(span), "labels": ["Dog"]})
        metas.append({"key": f"folder-long_{i}", "source": "folder", "id": f"long_{span[0] * 1000}",
                      "path": "/data/long.wav", "span": list(span), "labels": ["Rain"]})
    metas += [{"key": f"folder-other{i}", "source": "folder", "id": f"other{i}", "path": f"/data/o{i}.wav",
               "labels": ["Bell"]} for i in range(6)]
    with ShardWriter(directory, "audio", 0) as w:
        for meta in metas:
            clip = audio.Audio((0.1 * rng.standard_normal((1, 16000))).astype(np.float32), 16000)
            meta |= {"duration": 1.0, "sample_rate": 16000, "channels": 1, "captions": [f"{meta['labels'][0]}."],
                     "candidates": []}
            w.write(meta["key"], {fmt.META: meta, fmt.AUDIO: audio.encode_flac(clip)})
    write_manifest(directory)
    cfg = _cfg([directory], tmp_path / "edit", tiny_models, splits={"valid": 0.3, "test": 0.3})
    clips = {c.key: c for c in index_clips(cfg, progress=False)}
    assert {f"as-Yabc_{i}" for i in range(3)} <= set(clips) and {f"folder-long_{i}" for i in range(3)} <= set(clips)
    for prefix in ("as-Yabc_", "folder-long_"):
        assert len({clips[f"{prefix}{i}"].split for i in range(3)}) == 1
        assert len({clips[f"{prefix}{i}"].identity for i in range(3)}) == 3
    assert len({c.split for c in clips.values()}) > 1  # the splits are drawn, not all one
