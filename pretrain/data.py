"""Training batches from latent shards: an endless, deterministic, resumable stream per rank.

The stream is cut into segments of `segment_steps` batches; segment k draws shards with replacement from a
seed made of (seed, rank, k). Resuming at batch s rebuilds segment s // S and skips s % S batches, so an
interrupted run sees exactly the batches an uninterrupted one would, and the skip is bounded.
Captions are chosen per sample among those the read-time filter keeps, with caption dropout.
Shape legend: b batch, c latent channels, n latent frames.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Iterator

import numpy as np
import torch
import webdataset as wds

from shards.reader import SampleDecoder, make_pipeline, shard_urls

from .config import PretrainConfig


class LatentDecoder(SampleDecoder):
    """Latent sample -> {key, latent (c, n), valid_frames, caption}; the caption is drawn deterministically.
    A latent of another shape than the set's (`shape`, (c, n)) or with a non-finite value is a bad sample: it
    raises, so the pipeline counts and names it and the batch is filled with the next sample (strict: the
    error stops the run). Letting it through would break collation or drop its whole micro-batch every time
    it is drawn."""

    def __init__(self, min_clap, top_k, caption_dropout: float, seed: int, shape: tuple[int, int] | None = None):
        super().__init__(decode_audio=False, min_clap=min_clap, top_k=top_k)
        self.caption_dropout, self.seed, self.shape = caption_dropout, seed, shape

    def __call__(self, sample: dict) -> dict:
        out = super().__call__(sample)
        if "latent" not in out:
            raise ValueError(f"{sample.get('__url__')}: sample {out['key']} has no latent (npy) member; "
                             "train on shards written by `capflow encode`")
        latent = out["latent"]
        check_latent(out["key"], latent, self.shape)
        rng = random.Random(zlib.crc32(f"{self.seed}/{out['key']}".encode()))
        captions = out["captions"]
        caption = "" if not captions or rng.random() < self.caption_dropout else rng.choice(captions)
        valid = int(out["meta"].get("latent", {}).get("valid_frames", latent.shape[-1]))
        return {"key": out["key"], "latent": latent, "valid_frames": valid, "caption": caption,
                "captioned": bool(captions), "split": out["meta"].get("split")}


def check_latent(key: str, latent: np.ndarray, shape: tuple[int, ...] | None) -> None:
    """Raise ValueError naming the sample when a latent has another shape than its set's or a non-finite value."""
    if shape is not None and tuple(latent.shape) != tuple(shape):
        raise ValueError(f"sample {key}: latent of shape {tuple(latent.shape)}, the set's latents are {tuple(shape)}")
    if not np.isfinite(latent).all():
        raise ValueError(f"sample {key}: non-finite values in its latent")


def set_latent_shape(latent_info: dict) -> tuple[int, int] | None:
    """(channels, frames) of a latent set's samples from its manifest facts (frames: ceil(duration · frame rate),
    as `capflow encode` pads every clip to the duration); None when the facts do not say."""
    if not {"latent_channels", "duration", "frame_rate"} <= set(latent_info):
        return None
    return int(latent_info["latent_channels"]), math.ceil(float(latent_info["duration"]) * float(latent_info["frame_rate"]))


class LatentBatches:
    def __init__(self, cfg: PretrainConfig, rank: int = 0, start: int = 0, latent_shape: tuple[int, int] | None = None):
        self.cfg, self.rank, self.position, self.latent_shape = cfg, rank, start, latent_shape
        self.urls = [u for source in cfg.data.shards for u in shard_urls(source)]
        self._skipped: dict[tuple[int, int], int] = {}  # (segment, worker) -> bad samples skipped there

    # a stream of other samples (the editor's triplets, separation mixtures) overrides these
    def decoder(self, seed: int):
        d = self.cfg.data
        return LatentDecoder(d.min_clap, d.top_k, d.caption_dropout if self.cfg.stage != "mask" else 1.0, seed,
                             self.latent_shape)

    def select(self):
        captioned, holdout = self.cfg.stage != "mask", self.cfg.data.holdout_split
        if not captioned and holdout is None:
            return None
        return lambda s: (s["captioned"] or not captioned) and (holdout is None or s["split"] != holdout)

    def to_batch(self, batch: dict) -> dict:
        return to_training_batch(batch)

    def batches(self, collated: Iterator[dict]) -> Iterator[dict]:
        """Collated samples -> training batches (a stream that needs more than one draw per batch overrides it)."""
        for batch in collated:
            yield self.to_batch(batch)

    def samples_per_batch(self) -> int:
        return self.cfg.data.micro_batch_size

    def _segment(self, k: int) -> Iterator[dict]:
        d = self.cfg.data
        seed = zlib.crc32(f"{self.cfg.seed}/{self.rank}/{k}".encode())
        pipeline = make_pipeline(self.urls, batch_size=self.samples_per_batch(), resampled=True, seed=seed,
                                 shuffle=d.shuffle, strict=d.strict, decoder=self.decoder(seed), select=self.select(),
                                 partial=False)
        errors = pipeline.errors
        # The training batch (a separation stream's mixing, say) is made where the samples are read, in the loader
        # workers, off the training process. Bad samples are counted there too: each batch carries that worker's
        # running count, so the main process can report the total.
        pipeline.append(lambda src: ({**b, "skipped": (_worker_id(), errors.skipped)} for b in self.batches(src)))
        # its own generator: creating a loader must not draw from the global RNG that resume restores
        # pinned batches copy to the GPU without blocking the host (compute_loss copies them non_blocking)
        loader = wds.WebLoader(pipeline, batch_size=None, num_workers=d.num_workers, pin_memory=torch.cuda.is_available(),
                               generator=torch.Generator().manual_seed(seed))
        return iter(loader)

    def __iter__(self) -> Iterator[dict]:
        steps = self.cfg.data.segment_steps
        while True:
            segment, offset = divmod(self.position, steps)
            batches = self._segment(segment)
            for _ in range(offset):  # bounded skip to the resume position
                next(batches)
            for _ in range(steps - offset):
                batch = next(batches)
                self.position += 1
                worker, count = batch.pop("skipped")
                self._skipped[(segment, worker)] = count
                yield batch

    @property
    def skipped(self) -> int:
        """Bad samples counted and skipped so far (since this process started)."""
        return sum(self._skipped.values())


def _worker_id() -> int:
    info = torch.utils.data.get_worker_info()
    return info.id if info is not None else -1


def to_training_batch(batch: dict) -> dict:
    """Collated samples -> latent (b, c, n) float32, valid (b, n) bool, captions, keys."""
    latent = batch["latent"].float()  # (b, c, n)
    n = latent.shape[-1]
    valid = torch.arange(n)[None, :] < torch.as_tensor(batch["valid_frames"])[:, None]  # (b, n)
    return {"latent": latent, "valid": valid, "caption": list(batch["caption"]), "key": list(batch["key"])}

