"""`capflow edit-data --config C`: captioned audio shards -> edit-group shards (RFM-Editing §3.1).

Driver: index the input sets' clips (json members only), plan the groups deterministically, cut them into
units of `unit_size` groups (unit i -> shard i), and run the units in this process or on Ray actors with the
captioning job's rules: a done marker per shard, the job's identity and each unit's groups checked on
resume, a failed unit retried then reported. Worker: per batch of `batch_groups` groups (a unit's memory),
decode X, A, B straight from their tars, cut A and B to their event spans (strong label or activity detection,
found at indexing), mix at the recorded SNRs and onsets with one gain, write captions and instructions,
CLAP-score the three audios and store them as 24-bit FLAC. A group whose clip is missing or does not decode
is a status row.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from captioner.clap import ClapScorer
from captioner.config import unit_deadline
from captioner.engines import make_engine
from shards import audio
from shards import format as fmt
from shards.audio import conform
from shards.config import JobFailed
from shards.faults import dispatch_units
from shards.mix import group_gain, place, seeded_rng
from shards.units import run_unit_job, worker_count
from shards.writer import ShardWriter, write_json_atomic

from .clips import index_clips, read_clip
from .config import EditDataConfig
from .groups import GroupPlan, check_splits, plan_groups
from .instructions import instructions, llm_captions, paraphrase, target_caption, where

log = logging.getLogger(__name__)
SUMMARY_NAME = "edit_summary.json"


class EditDataWorker:
    """Makes the groups of one unit into one shard. Holds the CLAP model (and the LLM when used)."""

    def __init__(self, cfg: EditDataConfig | dict, clap=None, llm=None):
        self.cfg = cfg if isinstance(cfg, EditDataConfig) else EditDataConfig.model_validate(cfg)
        self.clap = clap or ClapScorer(self.cfg.clap)
        uses_llm = self.cfg.instructions.paraphrase or self.cfg.instructions.target_captions == "llm"
        self.llm = llm or (make_engine(self.cfg.llm) if uses_llm and self.cfg.llm else None)
        if uses_llm and self.llm is None:
            raise ValueError("instructions.paraphrase / target_captions: llm need an LLM; set llm.model")

    def _event(self, ref: dict, clip: audio.Audio, sample_rate: int, channels: int) -> tuple[np.ndarray, list[float]]:
        """The event clip at the group's rate and channels, cut to its span (found at indexing)."""
        x = conform(clip, sample_rate, channels)
        start, end = 0, x.shape[-1]
        if self.cfg.mix.trim and ref["spans"]:
            s, e = next(iter(ref["spans"].values()))
            start, end = int(s * sample_rate), min(end, int(np.ceil(e * sample_rate)))
        return x[..., start:end], [round(start / sample_rate, 6), round(end / sample_rate, 6)]

    def mix(self, group: GroupPlan, clips: dict[str, audio.Audio]) -> dict:
        """The three float audios of a group and everything drawn for it (seeded by the group key)."""
        cfg = self.cfg
        x_clip = clips["x"]
        sr = cfg.sample_rate or x_clip.sample_rate
        background = conform(x_clip, sr, cfg.channels or x_clip.channels)[..., : round(cfg.duration * sr)]
        rng = seeded_rng(cfg.seed, "mix", group.key)
        placed, mix = {}, {}
        for e, ref in (("a", group.a), ("b", group.b)):
            event, trim = self._event(ref, clips[e], sr, background.shape[0])
            placed[e], placement = place(background, event, cfg.mix.snr.sample(rng), rng, sr, cfg.mix.loudness)
            mix[e] = placement.to_json(sr) | {"trim_s": trim, "clip": ref["key"]}
        gain = group_gain(background, background + placed["a"], background + placed["b"], peak=cfg.mix.peak)
        x = (gain * background).astype(np.float32)
        waves = {"x": x, "xa": x + (gain * placed["a"]).astype(np.float32), "xb": x + (gain * placed["b"]).astype(np.float32)}
        mix |= {"gain": gain, "loudness": cfg.mix.loudness}
        return {"waves": waves, "mix": mix, "sample_rate": sr, "duration": x.shape[-1] / sr}

    def _texts(self, group: GroupPlan, made: dict) -> tuple[dict, dict]:
        cfg, mix, dur = self.cfg, made["mix"], made["duration"]
        events = {"a": group.a["events"][0], "b": group.b["events"][0]}
        caption = group.x["caption"]
        captions = {"x": caption, **{f"x{e}": target_caption(caption, events[e], mix[e], dur) for e in ("a", "b")}}
        rng = seeded_rng(cfg.seed, "instructions", group.key)
        return captions, instructions(events, mix, dur, rng, cfg.instructions.variants)

    def _llm_texts(self, made: list[dict]) -> None:
        """LLM target captions and paraphrases for a unit's groups, in two batched calls (in place)."""
        cfg = self.cfg.instructions
        if cfg.target_captions == "llm" and made:
            jobs = [(m["captions"]["x"], m["events"][e], where(m["mix"][e], m["duration"])) for m in made for e in "ab"]
            written = iter(llm_captions(self.llm, jobs, self.cfg.seed))
            for m in made:
                for e in "ab":
                    m["captions"][f"x{e}"] = next(written)
        if cfg.paraphrase and made:
            firsts = [(m, name, words[0]) for m in made for name, words in m["instructions"].items()
                      for _ in range(cfg.paraphrase)]
            for (m, name, _), text in zip(firsts, paraphrase(self.llm, [t for _, _, t in firsts], self.cfg.seed)):
                if text not in m["instructions"][name]:
                    m["instructions"][name].append(text)

    def process_unit(self, index: int, groups: list, directory: str | Path, extra_stats: dict | None = None) -> dict:
        timings: Counter[str] = Counter()
        groups = [g if isinstance(g, GroupPlan) else GroupPlan(**g) for g in groups]
        with ShardWriter(directory, self.cfg.prefix, index, extra_stats=extra_stats) as writer:
            for start in range(0, len(groups), self.cfg.batch_groups):
                self._batch(groups[start: start + self.cfg.batch_groups], writer, timings)
            stats = writer.close()
        return {"rows": len(groups), "samples": stats["samples"], "timings": dict(timings)}

    def _batch(self, groups: list[GroupPlan], writer: ShardWriter, timings: Counter) -> None:
        """Mix, describe, score and write a batch of groups (their audio is all a unit holds at once)."""
        made = []
        for group in groups:
            start = time.perf_counter()
            try:
                clips = {r: read_clip(ref) for r, ref in (("x", group.x), ("a", group.a), ("b", group.b))}
            except FileNotFoundError as e:
                writer.add_failure(group.key, "missing", f"edit-data: {e}", {"split": group.split})
                continue
            except audio.AudioError as e:
                writer.add_failure(group.key, "unreadable", f"edit-data: {e}", {"split": group.split})
                continue
            timings["decode"] += time.perf_counter() - start
            start = time.perf_counter()
            try:
                m = self.mix(group, clips)
            except ValueError as e:  # a silent background or event: no SNR can be set
                writer.add_failure(group.key, "failed", f"edit-data: {e}", {"split": group.split})
                continue
            m["captions"], m["instructions"] = self._texts(group, m)
            m["events"], m["group"] = {"a": group.a["events"][0], "b": group.b["events"][0]}, group
            timings["mix"] += time.perf_counter() - start
            made.append(m)
        start = time.perf_counter()
        self._llm_texts(made)
        timings["llm"] += time.perf_counter() - start
        start = time.perf_counter()
        jobs = [(self._clap_wave(m["waves"][r], m["sample_rate"]), [m["captions"][r]]) for m in made
                for r in fmt.EDIT_ROLES]
        scores = self.clap.score_many(jobs)
        timings["clap"] += time.perf_counter() - start
        for i, m in enumerate(made):
            group = m["group"]
            clap = scores[3 * i: 3 * i + 3]
            if any(isinstance(s, str) for s in clap):
                writer.add_failure(group.key, "failed", next(s for s in clap if isinstance(s, str)),
                                   {"split": group.split})
                continue
            start = time.perf_counter()
            members = {f"{r}.{fmt.AUDIO}": audio.encode_flac(audio.Audio(m["waves"][r], m["sample_rate"]),
                                                             bits=self.cfg.flac_bits) for r in fmt.EDIT_ROLES}
            timings["flac"] += time.perf_counter() - start
            members[fmt.META] = self._meta(m, {r: s[0] for r, s in zip(fmt.EDIT_ROLES, clap)})
            writer.write(group.key, members)

    def _clap_wave(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        return audio.resample(audio.Audio(wave.mean(0, keepdims=True), sample_rate), self.clap.sample_rate).samples[0]

    def _meta(self, m: dict, clap: dict) -> dict:
        group: GroupPlan = m["group"]
        x = group.x
        return {
            "key": group.key, "source": "edit", "id": group.key, "split": group.split,
            "duration": round(m["duration"], 4), "sample_rate": m["sample_rate"], "channels": int(m["waves"]["x"].shape[0]),
            "clips": {"x": x["key"], "a": group.a["key"], "b": group.b["key"]},
            "events": {"x": x["events"], **m["events"]},
            "count_method": {"x": x["count_method"], "a": group.a["count_method"], "b": group.b["count_method"]},
            "span_method": {"a": group.a.get("span_method"), "b": group.b.get("span_method")},
            "identities": dict(zip(("x", "a", "b"), group.identities)),
            "labels": sorted({*x["events"], *m["events"].values()}),
            "mix": m["mix"], "caption": m["captions"], "captions": [m["captions"][r] for r in fmt.EDIT_ROLES],
            "clap": clap, "instructions": m["instructions"],
        }


def group_unit_hash(groups: list[GroupPlan]) -> str:
    """A unit's identity: its groups and the clips each is made of."""
    text = "\n".join(f"{g.key}:{g.a['key']}:{g.b['key']}" for g in groups)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_edit_data(cfg: EditDataConfig, ray_address: str | None = None, progress: bool = True,
                  clap=None, llm=None) -> dict:
    """Build the edit-group shard set `cfg.output`; returns the summary (also edit_summary.json).
    `clap` / `llm` replace the configured models in the in-process path (tests)."""
    cfg = cfg.resolved()
    clips = index_clips(cfg, llm=llm, progress=progress)
    groups = plan_groups(clips, cfg)
    if problems := check_splits((g.split, g.identities) for g in groups):
        raise AssertionError("edit groups cross splits (a bug): " + "; ".join(problems[:5]))
    if not groups:
        raise JobFailed(f"no edit group can be made from {len(clips)} clips of {cfg.inputs}: backgrounds need a "
                        f"caption and at most {cfg.background_max_events} events, and two single-event clips of "
                        "events the background lacks must exist in the same split")
    units = [groups[i: i + cfg.unit_size] for i in range(0, len(groups), cfg.unit_size)]
    hashes = [group_unit_hash(u) for u in units]
    splits = Counter(g.split for g in groups)
    partitioning = {"clips": len(clips), "groups": len(groups), "unit_size": cfg.unit_size, "units": len(units),
                    "splits": dict(splits), "unit_hashes": hashes}
    out = Path(cfg.output)

    def on_ray(todo, extras, on_done, on_failed):
        import ray

        Worker = ray.remote(num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus)(EditDataWorker)
        count = worker_count(cfg.ray.workers)  # "auto": one per GPU, as captioning
        cfg_dict = cfg.model_dump(mode="json")
        ray_units = [[asdict(g) for g in u] for u in units]
        # a unit's deadline, as captioning's: its model load, then calls per batch (a hung worker never blocks)
        deadline = unit_deadline(cfg.ray, cfg.unit_size, cfg.batch_groups)
        return dispatch_units(lambda k: Worker.remote(cfg_dict), count, ray_units, todo, out, extras, on_done,
                              cfg.ray.max_retries, on_failed, deadline)

    manifest, failed, timings, seconds = run_unit_job(
        cfg, ray_address, cfg.identity(), partitioning, units, hashes,
        rows=lambda i: [(g.key, {"split": g.split}) for g in units[i]],
        local_worker=lambda: EditDataWorker(cfg, clap=clap, llm=llm), on_ray=on_ray,
        plan=f"{len(clips)} clips -> {len(groups)} groups ({', '.join(f'{k} {v}' for k, v in sorted(splits.items()))})",
        kind="edit", unit="group", desc="edit groups", progress=progress)
    summary = summarize(out, manifest, failed, seconds, timings)
    write_json_atomic(out / SUMMARY_NAME, summary)
    if summary["ok"] == 0:
        raise JobFailed(f"no edit group was written into {out}: statuses {summary['failures'] or '{}'}, failed "
                        f"units {len(failed)}; see {out / SUMMARY_NAME} and the parquet sidecars' errors")
    return summary


def summarize(out: Path, manifest: dict, failed_units: dict, seconds: float, timings: dict) -> dict:
    status: Counter[str] = Counter()
    splits: Counter[str] = Counter()
    for shard in manifest["shards"]:
        table = pq.read_table(out / (shard["shard"] + fmt.SIDECAR_SUFFIX), columns=["status", "split"])
        for s, split in zip(table.column("status").to_pylist(), table.column("split").to_pylist()):
            status[s] += 1
            if s == fmt.STATUS_OK:
                splits[split] += 1
    return {"groups": sum(status.values()), "ok": status.get(fmt.STATUS_OK, 0), "splits": dict(splits),
            "failures": {k: v for k, v in status.items() if k != fmt.STATUS_OK},
            "failed_units": {str(k): v for k, v in failed_units.items()}, "shards": manifest["num_shards"],
            "seconds": round(seconds, 2), "stage_seconds": {k: round(v, 3) for k, v in timings.items()}}
