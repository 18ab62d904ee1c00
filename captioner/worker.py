"""One captioning worker: processes whole work units into shards.

Per unit, `batch_clips` clips at a time: decode every clip (bad ones become status rows), ask the ALM for
n captions per prompt and, at the same time, the LLM for time-ordered captions from strong labels (one
engine call per chunk, so vLLM can batch it), clean and de-duplicate, score every candidate with CLAP
against its clip (one call per chunk), keep the best, write the shard.

The engines are local (the `combined` layout and in-process runs) or proxies of Ray actor pools (the
`pools` layout, captioner/pools.py); the worker does not care which.

Failure policy: a clip that an engine or CLAP fails on becomes a `failed` row with the error and the unit
goes on (a failing batch is retried clip by clip to find the culprit). Infrastructure errors (a dead
actor, out of memory, I/O) and an engine that fails on every clip of a chunk propagate, so the unit is
retried and then reported.
"""

from __future__ import annotations

import time
import zlib
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from shards import audio
from shards.faults import is_infrastructure
from shards.format import AUDIO, META
from shards.writer import ShardWriter

from .clap import ClapScorer, keep_best
from .config import CaptionConfig
from .engines import Request, clean_caption, dedupe, make_engine
from .labels import enrichment_prompt, template_caption
from .sources import Item


def error_text(stage: str, error: BaseException) -> str:
    """One line for a status row: the stage and the original error (Ray wraps it in a traceback)."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    return f"{stage}: {last if ':' in last else f'{type(error).__name__}: {last}'}"


def clip_seed(base: int, key: str, stream: int) -> int:
    """A per-clip, per-prompt seed that depends only on the key (not on scheduling)."""
    return (base * 1_000_003 + zlib.crc32(key.encode()) * 97 + stream) % (2**31 - 1)


class CaptionWorker:
    def __init__(self, cfg: CaptionConfig | dict, alm=None, llm=None, clap=None):
        """Local engines from the config, or the given ones (Ray pool proxies with the same methods)."""
        self.cfg = cfg if isinstance(cfg, CaptionConfig) else CaptionConfig.model_validate(cfg)
        self.alm = alm or (make_engine(self.cfg.alm) if self.cfg.alm else None)
        self.llm = llm or (make_engine(self.cfg.labels.engine) if self.cfg.labels.uses_llm else None)
        self.clap = clap or ClapScorer(self.cfg.clap)
        # Pool proxies run the ALM and the LLM call at the same time; local engines run one after the other
        # (they seed torch's process-wide RNG per request, so overlapping them would mix their streams).
        self.overlap = llm is not None
        self.timings: dict[str, float] = defaultdict(float)

    def _decode(self, items: list[Item]) -> tuple[list[tuple[Item, audio.Audio, bytes]], list[tuple]]:
        """Decoded clips with their shard audio bytes, and (item, status, error) for those that failed."""
        clips, failures = [], []
        for item in items:
            start = time.perf_counter()
            if not item.path.is_file():
                failures.append((item, "missing", f"no audio file {item.path}"))
                continue
            try:
                clip = audio.decode(item.path, span=item.span)
            except audio.AudioError as e:
                failures.append((item, "unreadable", str(e)))
                continue
            # FLAC sources go into the shard byte for byte; anything else (a clip cut from a file too) is encoded once.
            whole_flac = item.path.suffix.lower() == ".flac" and item.span is None
            flac = item.path.read_bytes() if whole_flac else audio.encode_flac(clip)
            clips.append((item, clip, flac))
            self.timings["decode"] += time.perf_counter() - start
        return clips, failures

    def _alm_candidates(self, clips) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = defaultdict(list)
        if not self.alm or not clips:
            return out
        start = time.perf_counter()
        requests, owners = [], []
        max_samples = int(self.cfg.max_seconds * self.alm.sample_rate)
        for item, clip, _ in clips:
            wave = audio.resample(audio.to_mono(clip), self.alm.sample_rate).samples[0][:max_samples]
            for p, prompt in enumerate(self.cfg.alm.prompts):
                seed = clip_seed(self.cfg.seed, item.key, p)
                requests.append(Request(prompt, wave, seed, self.cfg.alm.sampling.n))
                owners.append((item.key, prompt, seed))
        self.timings["resample"] += time.perf_counter() - start
        for (key, prompt, seed), texts in zip(owners, self.alm.generate(requests)):
            out[key] += [{"text": clean_caption(t), "kind": "alm", "engine": self.alm.name, "prompt": prompt,
                          "seed": seed} for t in texts]
        return out

    def _label_candidates(self, clips) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = defaultdict(list)
        labels = self.cfg.labels
        if labels.enabled and labels.method == "template":
            for item, _, _ in clips:
                if text := template_caption(item.strong, item.labels, labels.use_weak):
                    out[item.key].append({"text": text, "kind": "labels", "engine": "template"})
            return out
        if not self.llm:
            return out
        requests, owners = [], []
        for item, _, _ in clips:
            prompt = enrichment_prompt(item.strong, item.labels, self.cfg.labels)
            if prompt:
                seed = clip_seed(self.cfg.seed, item.key, 1000)
                requests.append(Request(prompt, None, seed, self.cfg.labels.engine.sampling.n))
                owners.append((item.key, prompt, seed))
        for (key, prompt, seed), texts in zip(owners, self.llm.generate(requests) if requests else []):
            out[key] += [{"text": clean_caption(t), "kind": "labels", "engine": self.llm.name, "prompt": prompt,
                          "seed": seed} for t in texts]
        return out

    def _isolate(self, stage: str, fn, clips) -> tuple[dict, dict[str, str]]:
        """fn(clips); if it raises, fn clip by clip: (results by key, error line by failed key)."""
        try:
            return fn(clips), {}
        except Exception as e:  # noqa: BLE001  (classified below)
            if is_infrastructure(e) or not clips:
                raise
            first = e
        out, failed = defaultdict(list), {}
        for clip in clips:
            try:
                out.update(fn([clip]))
            except Exception as e:  # noqa: BLE001
                if is_infrastructure(e):
                    raise
                failed[clip[0].key] = error_text(stage, e)
        if len(clips) > 1 and len(failed) == len(clips):
            raise first  # every clip fails alone too: the engine is broken, not the clips
        return out, failed

    def _caption(self, chunk: list[Item], helper: ThreadPoolExecutor) -> tuple:
        """Decode a chunk and run the caption engines on it (the label LLM beside the ALM when they are separate
        pools): (clips, decode failures, ALM candidates, label candidates, failed clips)."""
        clips, failures = self._decode(chunk)
        if self.overlap:
            labels_call = helper.submit(self._isolate, "labels", self._label_candidates, clips)
        alm, failed = self._isolate("alm", self._alm_candidates, clips)
        labels, label_failed = (labels_call.result() if self.overlap
                                else self._isolate("labels", self._label_candidates, clips))
        return clips, failures, alm, labels, failed | label_failed

    def _write_clip(self, writer: ShardWriter, item: Item, clip: audio.Audio, flac: bytes,
                    candidates: list[dict], scores: list[float]) -> int:
        """Keep the best scored candidates and write the sample; returns the kept count."""
        for c, score in zip(candidates, scores):
            c["clap"] = score
        # human captions (SFT data such as AudioCaps) are kept whatever their score; generated ones
        # compete for the remaining top-k places above the threshold
        humans = [c["text"] for c in candidates if c["kind"] == "human"]
        generated = [c for c in candidates if c["kind"] != "human"]
        kept = humans + keep_best(generated, self.cfg.clap.threshold, max(0, self.cfg.clap.top_k - len(humans)))
        start = time.perf_counter()
        meta = item.meta() | {"duration": round(clip.duration, 6), "sample_rate": clip.sample_rate,
                              "channels": clip.channels, "candidates": candidates, "captions": kept}
        writer.write(item.key, {AUDIO: flac, META: meta})
        self.timings["write"] += time.perf_counter() - start
        return len(kept)

    def process_unit(self, index: int, items: list[Item], directory: str | Path, extra_stats: dict | None = None) -> dict:
        """Write shard `index` for `items` (extra_stats: recorded in its done marker, e.g. the job identity);
        returns its stats plus caption counts and stage timings.
        Clips go through the engines `batch_clips` at a time, so memory stays flat for any unit size."""
        self.timings.clear()
        for engine in (self.alm, self.llm, self.clap):
            if engine is not None:
                engine.timings.clear()
        kept = candidates = 0
        chunks = [items[i: i + self.cfg.batch_clips] for i in range(0, len(items), self.cfg.batch_clips)]
        # The next chunk is decoded and captioned by the engines in a helper thread while this one is scored by
        # CLAP and written (soundfile, soxr and Ray calls release the GIL): each writer keeps an engine request
        # in flight while it does CLAP and I/O, so the ALM GPUs do not wait on the writers.
        with (ShardWriter(directory, self.cfg.prefix, index, extra_stats=extra_stats) as writer,
              ThreadPoolExecutor(max_workers=1) as ahead, ThreadPoolExecutor(max_workers=1) as helper):
            pending = ahead.submit(self._caption, chunks[0], helper) if chunks else None
            for k in range(len(chunks)):
                clips, failures, alm, labels, failed = pending.result()
                if k + 1 < len(chunks):
                    pending = ahead.submit(self._caption, chunks[k + 1], helper)
                for item, status, error in failures:
                    writer.add_failure(item.key, status, error, item.meta())
                scored = []
                for item, clip, flac in clips:
                    if item.key in failed:
                        writer.add_failure(item.key, "failed", failed[item.key], item.meta())
                        continue
                    human = [{"text": clean_caption(t), "kind": "human", "engine": "human", "prompt": None,
                              "seed": None} for t in item.extra.get("human_captions", [])]
                    scored.append((item, clip, flac, dedupe(human + alm[item.key] + labels[item.key])))
                start = time.perf_counter()
                waves = [audio.resample(audio.to_mono(clip), self.clap.sample_rate).samples[0]
                         for _, clip, _, _ in scored]
                self.timings["resample"] += time.perf_counter() - start
                scores = self.clap.score_many([(w, [c["text"] for c in u]) for w, (_, _, _, u) in zip(waves, scored)])
                for (item, clip, flac, unique), clip_scores in zip(scored, scores):
                    if isinstance(clip_scores, str):
                        writer.add_failure(item.key, "failed", clip_scores, item.meta())
                        continue
                    kept += self._write_clip(writer, item, clip, flac, unique, clip_scores)
                    candidates += len(unique)
            stats = writer.close()
        timings = dict(self.timings)
        for name, engine in (("alm", self.alm), ("llm", self.llm), ("clap", self.clap)):
            if engine is not None:
                for stage, seconds in engine.timings.items():
                    timings[f"{name}_{stage}" if name != "clap" else stage] = seconds
        return {**stats, "captions_kept": kept, "candidates": candidates, "timings": timings}
