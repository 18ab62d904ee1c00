"""Training-side shard reader: a webdataset pipeline over shard URLs with decoding, read-time caption
filtering, shuffling, batching into dicts and an explicit error policy.

URLs are local paths today; webdataset's gopen also takes `pipe:` and fsspec URLs, so the same code reads
from object stores.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from . import format as fmt
from .audio import Audio, fit_length, load
from .manifest import read_manifest

log = logging.getLogger(__name__)


class ErrorPolicy:
    """webdataset handler: counts and skips bad samples, or re-raises when strict."""

    def __init__(self, strict: bool = False, max_logged: int = 5):
        self.strict = strict
        self.max_logged = max_logged
        self.counts: Counter[str] = Counter()

    def __call__(self, exn: Exception) -> bool:
        if self.strict:
            raise exn
        self.counts[type(exn).__name__] += 1
        if sum(self.counts.values()) <= self.max_logged:
            log.warning("skipping a bad sample: %s: %s", type(exn).__name__, exn)
        return True  # continue

    @property
    def skipped(self) -> int:
        return sum(self.counts.values())


def shard_urls(source: str | Path | list) -> list[str]:
    """Shard URLs from a shard-set directory (its manifest), a list, or a brace pattern / single URL."""
    if isinstance(source, (list, tuple)):
        return [str(u) for u in source]
    path = Path(source)
    if path.is_dir():
        manifest = read_manifest(path)
        urls = [str(path / s["tar"]) for s in manifest["shards"]]
        if not urls:
            raise ValueError(f"{path}: the manifest lists no finished shards")
        return urls
    return list(wds.shardlists.expand_urls(str(source)))


def iter_tar_samples(path: Path):
    """(key, {ext: bytes}) for each sample of a tar, read as a stream."""
    with tarfile.open(path, "r|") as tar:
        yield from fmt.tar_samples(tar, lambda info: tar.extractfile(info).read())


def iter_tar_index(path: Path):
    """(key, meta, {ext: (byte offset, size)}) per sample of a tar: only the json members are read, the others
    are seeked over, so indexing a shard set costs its metadata, not its audio."""
    with tarfile.open(path, "r:") as tar:
        def member(info):
            meta = json.loads(tar.extractfile(info).read()) if info.name.endswith("." + fmt.META) else None
            return (info.offset_data, info.size), meta

        for key, members in fmt.tar_samples(tar, member, size=path.stat().st_size):
            yield key, members.get(fmt.META, (None, None))[1], {ext: span for ext, (span, _) in members.items()}


def read_member(path: str | Path, span: tuple[int, int]) -> bytes:
    """The bytes of one tar member from its (offset, size) in `iter_tar_index`."""
    with open(path, "rb") as f:
        f.seek(span[0])
        data = f.read(span[1])
    if len(data) != span[1]:
        raise EOFError(f"{path} is shorter than its index says (rewritten since?)")
    return data


def select_captions(meta: dict, min_clap: float | None = None, top_k: int | None = None) -> list[str]:
    """Captions kept at read time. Without thresholds: the ones the writer kept; with them: re-ranked
    candidates with CLAP >= min_clap, best first, at most top_k."""
    if min_clap is None and top_k is None:
        return list(meta.get("captions") or [])
    scored = [c for c in meta.get("candidates") or [] if c.get("clap") is not None]
    scored = [c for c in scored if min_clap is None or c["clap"] >= min_clap]
    scored.sort(key=lambda c: -c["clap"])
    texts = list(dict.fromkeys(c["text"] for c in scored))
    return texts[:top_k] if top_k is not None else texts


class SampleDecoder:
    """Raw tar sample (bytes per member) -> dict with key, meta, captions, audio and/or latent."""

    def __init__(self, sample_rate: int | None = None, mono: bool = True, duration: float | None = None,
                 decode_audio: bool = True, min_clap: float | None = None, top_k: int | None = None,
                 crop_seed: int | None = None):
        """`duration`: audio cut (or zero-padded) to this many seconds, from the start, or from an offset drawn
        per clip from (crop_seed, key) when crop_seed is set (training crops that cover the whole clip)."""
        self.sample_rate, self.mono, self.duration = sample_rate, mono, duration
        self.decode_audio, self.min_clap, self.top_k, self.crop_seed = decode_audio, min_clap, top_k, crop_seed

    def __call__(self, sample: dict) -> dict:
        """Raises ValueError (counted and skipped, or raised in strict mode) for a member name that is not a
        valid key (`../evil`, an absolute path) and for a sample without the members it must have."""
        key = sample["__key__"]
        if not fmt.KEY_RE.match(key):
            raise ValueError(f"{sample.get('__url__')}: unsafe or invalid sample name {key!r} (keys are [A-Za-z0-9_-])")
        if fmt.META not in sample:
            raise ValueError(f"{sample.get('__url__')}: sample {key!r} has no {fmt.META} member")
        if self.decode_audio and fmt.AUDIO not in sample and fmt.LATENT not in sample:
            raise ValueError(f"{sample.get('__url__')}: sample {key!r} has neither audio ({fmt.AUDIO}) nor latents "
                             f"({fmt.LATENT}); members: {sorted(k for k in sample if not k.startswith('__'))}")
        meta = json.loads(sample[fmt.META])
        out = {"key": key, "meta": meta, "captions": select_captions(meta, self.min_clap, self.top_k)}
        if self.decode_audio and fmt.AUDIO in sample:
            random_crop = self.crop_seed is not None and self.duration is not None
            audio = load(sample[fmt.AUDIO], sample_rate=self.sample_rate, mono=self.mono,
                         duration=None if random_crop else self.duration, name=f"{key}.{fmt.AUDIO}")
            if random_crop:
                n = round(self.duration * audio.sample_rate)
                spare = max(0, audio.samples.shape[-1] - n)
                offset = zlib.crc32(f"{self.crop_seed}/crop/{key}".encode()) % (spare + 1)
                audio = Audio(fit_length(audio.samples[..., offset:], n), audio.sample_rate)
            out["audio"] = audio.samples
            out["sample_rate"] = audio.sample_rate
        if fmt.LATENT in sample:
            out["latent"] = np.load(io.BytesIO(sample[fmt.LATENT]), allow_pickle=False)
        return out


def collate(samples: list[dict]) -> dict:
    """List of sample dicts -> dict of batched values: same-shape arrays become one tensor, else lists."""
    batch = {}
    for name in samples[0]:
        values = [s[name] for s in samples]
        if isinstance(values[0], np.ndarray) and all(v.shape == values[0].shape for v in values):
            batch[name] = torch.from_numpy(np.stack(values))
        else:
            batch[name] = values
    return batch


def make_pipeline(
    source,
    batch_size: int | None = None,
    *,
    decoder: SampleDecoder | None = None,
    shuffle: int = 0,
    resampled: bool = False,
    seed: int = 0,
    select=None,
    strict: bool = False,
    partial: bool = True,
) -> wds.DataPipeline:
    """A webdataset pipeline of decoded samples (batched into dicts when batch_size is set).

    resampled=True draws shards with replacement forever (multi-node training: every rank gets an endless
    independent stream); otherwise shards are split by node and by dataloader worker. The pipeline's
    `errors` attribute counts what was skipped; strict=True raises instead.
    """
    urls = shard_urls(source)
    errors = ErrorPolicy(strict=strict)
    stages: list = [wds.ResampledShards(urls, seed=seed, deterministic=True)] if resampled else [
        wds.SimpleShardList(urls), wds.split_by_node, wds.split_by_worker]
    stages.append(wds.tarfile_to_samples(handler=errors))
    if shuffle > 1:
        stages.append(wds.shuffle(shuffle, seed=seed))
    stages.append(wds.map(decoder or SampleDecoder(), handler=errors))
    if select is not None:  # a predicate on decoded samples, e.g. lambda s: bool(s["captions"])
        stages.append(wds.select(select))
    if batch_size:
        stages.append(wds.batched(batch_size, collation_fn=collate, partial=partial))
    pipeline = wds.DataPipeline(*stages)
    pipeline.errors = errors
    return pipeline
