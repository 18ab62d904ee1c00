import json
import subprocess
import sys

import numpy as np
import pytest
import webdataset as wds
from helpers import rewrite_tar

from shards import audio
from shards.format import InvalidKey, make_key
from shards.manifest import ConfigMismatch, open_shard_set, write_manifest
from shards.reader import SampleDecoder, make_pipeline, select_captions
from shards.release import release
from shards.stats import write_stats
from shards.validate import validate
from shards.writer import ShardSetWriter, ShardWriter


def _sample(i: int, rng):
    clip = audio.Audio((0.1 * rng.standard_normal((1, 1600))).astype(np.float32), 16000)
    cands = [{"text": f"sound {i} v{j}", "clap": 0.2 + 0.1 * j, "kind": "alm", "engine": "t", "prompt": "p", "seed": j}
             for j in range(4)]
    meta = {"key": f"src-item{i}", "source": "src", "id": f"item{i}", "duration": 0.1, "sample_rate": 16000,
            "channels": 1, "labels": ["Dog"], "candidates": cands, "captions": [c["text"] for c in cands if c["clap"] >= 0.4],
            "split": "dev" if i % 5 == 4 else "train", "ytid": f"yt{i}", "start": 0.0, "end": 0.1}
    return f"src-item{i}", {"flac": audio.encode_flac(clip), "json": meta,
                            "npy": rng.standard_normal((8, 5)).astype(np.float16)}


def _write_set(directory, n=10, max_count=4, seed=0, failures=True):
    rng = np.random.default_rng(seed)
    open_shard_set(directory, {"test": True})
    with ShardSetWriter(directory, prefix="t", max_count=max_count) as w:
        for i in range(n):
            key, members = _sample(i, rng)
            w.write(key, members)
        if failures:
            w.add_failure("src-missing1", "missing", "no audio file /x/missing1.flac", {"source": "src", "id": "missing1"})
    return write_manifest(directory)


def test_round_trip_every_member(tmp_path):
    manifest = _write_set(tmp_path / "s")
    assert manifest["num_samples"] == 10 and manifest["num_shards"] == 3
    rng = np.random.default_rng(0)
    expected = dict(_sample(i, rng) for i in range(10))
    got = list(make_pipeline(tmp_path / "s", decoder=SampleDecoder(sample_rate=16000)))
    assert sorted(s["key"] for s in got) == sorted(expected)
    for s in got:
        exp = expected[s["key"]]
        assert s["meta"] == exp["json"]
        np.testing.assert_array_equal(s["latent"], exp["npy"])
        assert s["latent"].dtype == np.float16
        np.testing.assert_allclose(s["audio"], audio.decode(exp["flac"]).samples)
        assert s["captions"] == exp["json"]["captions"]
    assert validate(tmp_path / "s") == []


def test_tars_are_byte_identical(tmp_path):
    _write_set(tmp_path / "a")
    _write_set(tmp_path / "b")
    for name in ("t-000000.tar", "t-000001.tar", "t-000002.tar"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_rollover_by_bytes(tmp_path):
    rng = np.random.default_rng(0)
    with ShardSetWriter(tmp_path, prefix="b", max_count=100, max_bytes=20_000) as w:
        for i in range(12):
            w.write(*_sample(i, rng))
    assert len(w.stats) > 1 and sum(s["samples"] for s in w.stats) == 12


def test_sidecar_rows_include_failures(tmp_path):
    import pyarrow.parquet as pq

    _write_set(tmp_path / "s", n=3, max_count=10)
    rows = pq.read_table(tmp_path / "s" / "t-000000.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["ok"] * 3 + ["missing"]
    assert rows[-1]["error"].startswith("no audio file") and rows[0]["caption_scores"] == pytest.approx([0.4, 0.5])


def test_keys_are_checked():
    assert make_key("audioset", "YTID_30.000") == "audioset-YTID_30000"
    with pytest.raises(InvalidKey, match="audioset-YTID_30000"):
        ShardWriter.__new__(ShardWriter)._claim("audioset-YTID_30.000")


def _corrupt_and_validate(tmp_path, mutate):
    d = tmp_path / "s"
    _write_set(d)
    mutate(d)
    problems = validate(d)
    assert problems, "validate accepted a damaged shard set"
    return [str(p) for p in problems]


def test_validate_truncated_tar(tmp_path):
    def truncate(d):
        data = (d / "t-000001.tar").read_bytes()
        (d / "t-000001.tar").write_bytes(data[: len(data) // 2])
    lines = _corrupt_and_validate(tmp_path, truncate)
    assert all(line.startswith("t-000001") for line in lines)
    assert any("truncated" in line for line in lines)


def test_validate_missing_member(tmp_path):
    def drop_json(d):
        rewrite_tar(d / "t-000000.tar", {"src-item1.json": None})
    lines = _corrupt_and_validate(tmp_path, drop_json)
    assert "t-000000: sample src-item1: missing member 'json'" in lines


def test_validate_checksum_mismatch(tmp_path):
    def flip(d):
        data = bytearray((d / "t-000002.tar").read_bytes())
        data[700] ^= 0xFF
        (d / "t-000002.tar").write_bytes(bytes(data))
    lines = _corrupt_and_validate(tmp_path, flip)
    assert any(line.startswith("t-000002") and "sha256" in line for line in lines)


def test_validate_cli_exit_code(tmp_path):
    _write_set(tmp_path / "s")
    ok = subprocess.run([sys.executable, "-m", "shards", "validate", str(tmp_path / "s")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    (tmp_path / "s" / "t-000000.parquet").unlink()
    bad = subprocess.run([sys.executable, "-m", "shards", "validate", str(tmp_path / "s")], capture_output=True, text=True)
    assert bad.returncode == 1 and "t-000000: missing file(s): t-000000.parquet" in bad.stdout


def test_resume_refuses_changed_config(tmp_path):
    open_shard_set(tmp_path, {"a": 1, "b": {"c": 2}})
    open_shard_set(tmp_path, {"a": 1, "b": {"c": 2}})  # same config resumes
    with pytest.raises(ConfigMismatch, match=r"b\.c: 2 -> 3"):
        open_shard_set(tmp_path, {"a": 1, "b": {"c": 3}})


def test_read_time_filter_and_batches(tmp_path):
    _write_set(tmp_path / "s")
    meta = {"candidates": [{"text": "a", "clap": 0.3}, {"text": "b", "clap": 0.6}, {"text": "c", "clap": 0.5}],
            "captions": ["b"]}
    assert select_captions(meta) == ["b"]
    assert select_captions(meta, min_clap=0.45) == ["b", "c"]
    assert select_captions(meta, min_clap=0.0, top_k=1) == ["b"]
    pipe = make_pipeline(tmp_path / "s", batch_size=4, decoder=SampleDecoder(decode_audio=False, min_clap=0.35))
    batches = list(pipe)
    assert [len(b["key"]) for b in batches] == [4, 4, 2]
    assert batches[0]["latent"].shape == (4, 8, 5)
    assert all(caps == ["sound {} v3".format(k.removeprefix("src-item")), "sound {} v2".format(k.removeprefix("src-item"))]
               for b in batches for k, caps in zip(b["key"], b["captions"]))


def test_error_policy_counts_or_raises(tmp_path):
    d = tmp_path / "s"
    _write_set(d, failures=False)
    rewrite_tar(d / "t-000000.tar", {"src-item2.json": b"{not json"})  # the tar itself stays well-formed
    pipe = make_pipeline(d, decoder=SampleDecoder(decode_audio=False))
    assert len(list(pipe)) == 9 and pipe.errors.skipped == 1
    with pytest.raises(json.JSONDecodeError):
        list(make_pipeline(d, decoder=SampleDecoder(decode_audio=False), strict=True))


def test_resampled_stream_is_endless(tmp_path):
    _write_set(tmp_path / "s")
    pipe = make_pipeline(tmp_path / "s", batch_size=3, resampled=True, decoder=SampleDecoder(decode_audio=False))
    it = iter(pipe)
    assert all(len(next(it)["key"]) == 3 for _ in range(8))  # more than one pass over 10 samples


def test_plain_webdataset_reads_shards(tmp_path):
    _write_set(tmp_path / "s")
    ds = wds.WebDataset(str(tmp_path / "s" / "t-{000000..000002}.tar"), shardshuffle=False)
    samples = list(ds)
    assert len(samples) == 10 and all({"flac", "json", "npy"} <= set(s) for s in samples)


def test_stats_and_release_load_back(tmp_path):
    import datasets
    from huggingface_hub import DatasetCard

    d = tmp_path / "s"
    _write_set(d)
    stats = write_stats(d)
    assert stats["samples"] == 10 and stats["status"] == {"ok": 10, "missing": 1}
    assert stats["captions_kept"] == 20 and stats["kept_clap"]["mean"] == pytest.approx(0.45)
    assert stats["candidates_by_kind"] == {"alm": 40}
    assert {"clap_scores.png", "status.png", "top_labels.png", "candidates_by_kind.png"} <= set(stats["plots"])
    assert (d / "stats" / "clap_scores.png").stat().st_size > 1000
    out = release(d, tmp_path / "rel", license="cc-by-4.0", progress=False)
    ds = datasets.load_dataset(str(out))
    assert sorted(ds) == ["dev", "train"] and len(ds["train"]) + len(ds["dev"]) == 10
    row = ds["train"][0]
    assert set(row["captions"]) <= {c["text"] for c in row["candidates"]} and "ytid" in row
    card = DatasetCard((out / "README.md").read_text())
    assert card.data.license == "cc-by-4.0" and card.data.annotations_creators == ["machine-generated"]
    assert card.data.task_categories == ["text-to-audio"] and card.data.language == ["en"]
    assert "checksums.json" in card.text and (out / "checksums.json").is_file()
    out2 = release(d, tmp_path / "rel_audio", with_audio=True, license="other", license_name="mine",
                   license_link="https://example.org/l", progress=False)
    ds2 = datasets.load_dataset(str(out2), split="train").cast_column("audio", datasets.Audio(decode=False))
    from shards.hf import decode_audio_column, load_shards

    samples, rate = decode_audio_column(ds2[0]["audio"])
    assert rate == 16000 and samples.shape == (1, 1600)
    assert "rights belong" in (out2 / "README.md").read_text() or "keeps the rights" in (out2 / "README.md").read_text()
    direct = load_shards(d)  # the shards themselves, without torchcodec
    assert len(direct) == 10 and decode_audio_column(direct[0]["audio"])[1] == 16000


def test_release_is_resumable_checked_and_never_mixed(tmp_path, monkeypatch):
    from shards import release as rel

    d = tmp_path / "s"
    _write_set(d, n=10, max_count=4)
    with pytest.raises(ValueError, match="not a Hub license id"):
        release(d, tmp_path / "r", license="CC BY 4.0 lol")
    with pytest.raises(ValueError, match="--license-name"):
        release(d, tmp_path / "r", license="other")
    real = rel._SplitWriter.close
    calls = []

    def crash_on_second(self):
        calls.append(self.shard)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(self)

    monkeypatch.setattr(rel._SplitWriter, "close", crash_on_second)
    with pytest.raises(RuntimeError, match="killed"):
        release(d, tmp_path / "r", license="mit", progress=False)
    assert not (tmp_path / "r" / "data").exists()  # nothing loadable is left by a failed run
    monkeypatch.setattr(rel._SplitWriter, "close", real)
    release(d, tmp_path / "r", license="mit", progress=False)  # resumes: shard 0 is not redone
    assert len(calls) == 2
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "data").mkdir()
    (tmp_path / "other" / "data" / "train-00000-of-00001.parquet").write_bytes(b"old")
    with pytest.raises(ValueError, match="holds no capflow release"):
        release(d, tmp_path / "other", license="mit")
    with pytest.raises(ValueError, match="release of other shards or options"):
        release(d, tmp_path / "r", license="mit", with_audio=True)

    rewrite_tar(d / "t-000001.tar", {"src-item5.flac": None})  # a sample without its audio
    write_manifest(d)
    with pytest.raises(ValueError, match=r"t-000001: sample src-item5 lacks member\(s\) \['flac'\]"):
        release(d, tmp_path / "r2", license="mit", with_audio=True)
    path = d / "t-000002.tar"
    path.write_bytes(path.read_bytes()[:1500])  # truncated
    write_manifest(d)
    with pytest.raises(ValueError, match="t-000002: .*(truncated|bytes the manifest records)"):
        release(d, tmp_path / "r3", license="mit")


def test_push_to_hub_up_to_the_http_call(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    from shards.card import publish

    d = tmp_path / "s"
    _write_set(d)
    out = release(d, tmp_path / "rel", license="mit", progress=False)
    files = publish(out, "me/data", dry_run=True, private=True)
    printed = capsys.readouterr().out
    assert "README.md" in files and not any(f.startswith(".") for f in files) and "--private" in printed
    sent = {}

    class FakeApi:
        def create_repo(self, repo_id, **kw):
            sent["create"] = (repo_id, kw)

        def upload_folder(self, **kw):
            sent["upload"] = kw

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    publish(out, "me/data", private=True)
    assert sent["create"] == ("me/data", {"repo_type": "dataset", "private": True, "exist_ok": True})
    assert sent["upload"]["folder_path"] == str(out) and ".*" in sent["upload"]["ignore_patterns"]


def test_reader_rejects_unsafe_names_and_incomplete_samples(tmp_path):
    d = tmp_path / "s"
    _write_set(d, n=4, failures=False)
    rewrite_tar(d / "t-000000.tar", {"src-item1.flac": None, "src-item1.npy": None})  # no audio, no latents
    import io
    import tarfile

    path = d / "t-000000.tar"
    with tarfile.open(path, "a") as tar:
        data = json.dumps({"duration": 1.0}).encode()
        info = tarfile.TarInfo("../evil.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    pipe = make_pipeline(d, batch_size=2, decoder=SampleDecoder())
    batches = list(pipe)
    assert sorted(k for b in batches for k in b["key"]) == ["src-item0", "src-item2", "src-item3"]
    assert pipe.errors.skipped == 2  # counted, before collate ever sees them
    with pytest.raises(ValueError, match="unsafe or invalid sample name|neither audio"):
        list(make_pipeline(d, batch_size=2, decoder=SampleDecoder(), strict=True))


def test_ontology_relates_ancestors_and_descendants_and_collapses_weak_labels(tmp_path):
    from shards.ontology import Ontology

    # a piece of AudioSet's ontology.json (ids and names as there; Guitar has two paths up to Music)
    nodes = [{"id": "/m/09x0r", "name": "Speech", "child_ids": ["/m/05zppz", "/m/02zsn"]},
             {"id": "/m/05zppz", "name": "Male speech, man speaking", "child_ids": []},
             {"id": "/m/02zsn", "name": "Female speech, woman speaking", "child_ids": []},
             {"id": "/m/04rlf", "name": "Music", "child_ids": ["/m/04szw"]},
             {"id": "/m/04szw", "name": "Musical instrument", "child_ids": ["/m/0fx80y"]},
             {"id": "/m/0fx80y", "name": "Plucked string instrument", "child_ids": ["/m/0342h"]},
             {"id": "/m/0342h", "name": "Guitar", "child_ids": []}]
    path = tmp_path / "ontology.json"
    path.write_text(json.dumps(nodes))
    o = Ontology.load(path)
    assert o.related("speech", "Male speech, man speaking") and o.related("Male speech, man speaking", "Speech")
    assert not o.related("Male speech, man speaking", "Female speech, woman speaking")  # siblings are two sounds
    assert o.related("Guitar", "Music") and not o.related("Guitar", "Speech")
    assert o.collapse(["Music", "Guitar", "Musical instrument", "Speech"]) == ["guitar", "speech"]
    assert o.collapse(["Music"]) == ["music"]
    assert Ontology.load(None).collapse(["Music", "Guitar"]) == ["guitar", "music"]  # no ontology: strings
    assert not Ontology.load(None).related("speech", "male speech, man speaking")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="ontology.json"):
        Ontology.load(tmp_path / "bad.json")


def test_every_tar_reader_refuses_an_unsafe_member_and_a_cut_tar(tmp_path):
    """validate, release and the index readers group tar members by key with one iterator
    (format.tar_samples): each refuses a path-like member and a tar whose last member ends past the file."""
    import io
    import tarfile

    from shards.reader import iter_tar_index

    d = tmp_path / "s"
    _write_set(d, n=4, failures=False)
    path = d / "t-000000.tar"
    clean = path.read_bytes()
    with tarfile.open(path, "a") as tar:
        info = tarfile.TarInfo("sub/evil.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    write_manifest(d)
    assert any("unsafe or unexpected tar member 'sub/evil.json'" in str(p) for p in validate(d))
    with pytest.raises(ValueError, match="t-000000: unsafe or unexpected tar member 'sub/evil.json'; refusing"):
        release(d, tmp_path / "r", license="mit", progress=False)
    with pytest.raises(ValueError, match="unsafe or unexpected tar member"):
        list(iter_tar_index(path))
    cut = tmp_path / "cut.tar"
    cut.write_bytes(clean[:len(clean) // 2])
    with pytest.raises(EOFError, match="ends at byte"):
        list(iter_tar_index(cut))
