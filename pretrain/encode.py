"""`capflow encode --config C`: captioned audio shards -> latent shards (VAE latents + the original json).

Audio shard i becomes latent shard i (same done-marker rules, so a rerun skips finished shards). Clips are
padded/cropped to a fixed duration; `json.latent.valid_frames` says how many frames hold audio. Latents
are normalised per channel with statistics measured on the first clips (or given in the config) and stored
with the codec config in the manifest, so a training run and the exported model carry their normalisation.

Placement: static sharding by rank (RANK/WORLD_SIZE, as set by `accelerate launch` or torchrun): the job is
a stateless map whose cost is the VAE forward, so one process per GPU needs no scheduler.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from shards import audio
from shards import format as fmt
from shards.config import Strict, config_dict, config_hash, save_config
from shards.manifest import ConfigMismatch, done_shards, open_shard_set, read_manifest, write_manifest
from shards.reader import iter_tar_samples
from shards.writer import ShardWriter, write_json_atomic

from .codec import AudioCodec, CodecConfig, measure_stats

log = logging.getLogger(__name__)
STATS_NAME = "codec_normalization.json"  # not *_stats.json: that suffix marks finished shards


class CodecSpec(Strict):
    pretrained: str = "stabilityai/stable-audio-open-1.0"
    subfolder: str | None = "vae"
    sample_posterior: bool = False
    latent_mean: list[float] = []  # given: used as is; empty: measured on the first `stats_clips` clips
    latent_std: list[float] = []


class EncodeConfig(Strict):
    input: str  # audio shard set
    output: str  # latent shard set
    prefix: str = "latent"
    codec: CodecSpec = CodecSpec()
    duration: float = 10.0  # seconds per clip (EzAudio trains on 10 s)
    peak_normalize: bool = False  # each clip to peak 1 before the VAE (EzAudio's data_config.yml `norm: true`)
    batch_size: int = 16
    stats_clips: int = 256
    # a latent shard set or a T2A bundle whose normalisation to reuse (edit groups for an editor initialised
    # from that model must be normalised as its training latents were); empty: given above, else measured
    normalization_from: str | None = None
    device: str = "auto"

    def identity(self) -> dict:
        return config_dict(self) | {"device": None}


def _waves(samples: list[tuple[str, dict]], codec: AudioCodec, duration: float, peak_normalize: bool = False):
    """Decode a batch to (b, a, s) at the codec's rate and fixed length, one row per audio member (`flac`; an
    edit group's `x.flac`, `xa.flac`, `xb.flac`). Returns (key, member, sample, valid seconds) per row, the
    waves, and (key, sample, error) for the samples that did not decode (a sample fails as a whole).
    peak_normalize: each sample scaled to peak 1 (EzAudio's data_config `norm: true`), an edit group's members by
    one gain (the loudest's), so that X + A − A is still X."""
    good, waves, bad = [], [], []
    for key, sample in samples:
        rows = []
        try:
            members = fmt.audio_members(sample)
            if not members:
                raise KeyError(f"{key}: no audio member")
            for member in members:
                clip = audio.load(sample[member], sample_rate=codec.sample_rate, name=f"{key}.{member}")
                x = audio.fit_length(clip.samples, round(duration * codec.sample_rate))
                if x.shape[0] != codec.audio_channels:  # mono <-> stereo to what the VAE takes
                    x = np.repeat(x.mean(0, keepdims=True), codec.audio_channels, axis=0)
                rows.append(((key, member, sample, min(clip.duration, duration)), x))
        except (audio.AudioError, KeyError) as e:
            bad.append((key, sample, f"encode: {e}"))
            continue
        gain = 1.0 / (max(float(np.abs(x).max()) for _, x in rows) + 1e-9) if peak_normalize else 1.0
        good += [r for r, _ in rows]
        waves += [x * gain for _, x in rows]
    return good, torch.from_numpy(np.stack(waves)) if waves else None, bad


def _measure(cfg: EncodeConfig, codec: AudioCodec, shards: list[dict]) -> tuple[list[float], list[float]]:
    """Per-channel latent mean/std over the first `stats_clips` clips of the set."""
    samples = []
    for entry in shards:
        for item in iter_tar_samples(Path(cfg.input) / entry["tar"]):
            samples.append(item)
            if len(samples) == cfg.stats_clips:
                break
        if len(samples) == cfg.stats_clips:
            break
    raw = []
    for start in range(0, len(samples), cfg.batch_size):
        _, waves, _ = _waves(samples[start: start + cfg.batch_size], codec, cfg.duration, cfg.peak_normalize)
        if waves is not None:
            raw += list(codec.encode(waves.to(codec.mean.device), normalize=False).cpu())
    if not raw:
        raise ValueError(f"{cfg.input}: no decodable clip to measure latent statistics on")
    mean, std = measure_stats(raw)
    return mean.tolist(), std.tolist()


def _codec_config(cfg: EncodeConfig, shards: list[dict], device: str, rank: int) -> CodecConfig:
    """The codec config with normalisation: given, measured (rank 0), or read from what rank 0 measured."""
    spec = cfg.codec
    base = CodecConfig(spec.pretrained, spec.subfolder, spec.sample_posterior, spec.latent_mean, spec.latent_std)
    if spec.latent_mean and spec.latent_std:
        return base
    if cfg.normalization_from:
        ref = reference_normalization(cfg.normalization_from)
        return CodecConfig(spec.pretrained, spec.subfolder, spec.sample_posterior, ref["latent_mean"], ref["latent_std"])
    stats_path = Path(cfg.output) / STATS_NAME
    if not stats_path.exists() and rank == 0:
        codec = AudioCodec(base).to(device)
        mean, std = _measure(cfg, codec, shards)
        write_json_atomic(stats_path, {"latent_mean": mean, "latent_std": std, "clips": cfg.stats_clips})
    deadline = time.time() + 3600
    while not stats_path.exists():  # other ranks wait for rank 0's measurement
        if time.time() > deadline:
            raise TimeoutError(f"rank {rank}: no {stats_path} after an hour (did rank 0 fail?)")
        time.sleep(2)
    stats = json.loads(stats_path.read_text())
    return CodecConfig(spec.pretrained, spec.subfolder, spec.sample_posterior, stats["latent_mean"], stats["latent_std"])


def reference_normalization(path: str | Path) -> dict:
    """The codec config (latent_mean / latent_std) of a latent shard set (manifest) or a bundle (capflow.json)."""
    path = Path(path)
    if (path / "capflow.json").is_file():
        codec = json.loads((path / "capflow.json").read_text())["codec"]
    elif (path / fmt.MANIFEST_NAME).is_file():
        codec = read_manifest(path).get("extra", {}).get("codec") or {}
    else:
        raise ValueError(f"normalization_from: {path} is neither a latent shard set nor a T2A bundle")
    return codec  # empty mean/std: that model's latents are not normalised, and these will not be either


def _carry_failures(cfg: EncodeConfig, entry: dict, writer: ShardWriter) -> None:
    """Input items that already failed stay status rows here, so every input item keeps one row."""
    sidecar = Path(cfg.input) / (entry["shard"] + fmt.SIDECAR_SUFFIX)
    for row in pq.read_table(sidecar).to_pylist():
        if row["status"] != fmt.STATUS_OK:
            writer.add_failure(row["key"], row["status"], row["error"] or "", {"source": row["source"], "id": row["id"]})


@torch.no_grad()
def encode_shard(cfg: EncodeConfig, codec: AudioCodec, entry: dict, index: int, bar=None) -> dict:
    frame_rate = codec.frame_rate
    provenance = {"job_hash": config_hash(cfg.identity()), "input_sha256": entry["sha256"]}  # checked on resume
    with ShardWriter(cfg.output, cfg.prefix, index, extra_stats=provenance) as writer:
        _carry_failures(cfg, entry, writer)
        pending: list[tuple[str, dict]] = []

        def flush():
            good, waves, bad = _waves(pending, codec, cfg.duration, cfg.peak_normalize)
            for key, sample, error in bad:
                writer.add_failure(key, "failed", error, json.loads(sample.get(fmt.META, b"{}")))
            if good:
                latents = codec.encode(waves.to(codec.mean.device)).cpu().to(torch.float16).numpy()  # (b, c, n)
                out: dict[str, dict] = {}
                for (key, member, sample, seconds), z in zip(good, latents):
                    entry = out.setdefault(key, {fmt.META: json.loads(sample[fmt.META])})
                    entry[fmt.META]["latent"] = {"frames": int(z.shape[-1]), "frame_rate": frame_rate,
                                                 "valid_frames": int(np.ceil(seconds * frame_rate)),
                                                 "codec": codec.config.pretrained}
                    entry[fmt.latent_member(member)] = z
                for key, members in out.items():
                    writer.write(key, members)
            if bar is not None:
                bar.update(len(pending))
            pending.clear()

        for key, sample in iter_tar_samples(Path(cfg.input) / entry["tar"]):
            pending.append((key, sample))
            if len(pending) == cfg.batch_size:
                flush()
        flush()
        return writer.close()


def run_encode(cfg: EncodeConfig, progress: bool = True) -> dict:
    """Encode every unfinished input shard that belongs to this rank; rank 0 writes the manifest."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    source = read_manifest(cfg.input)
    shards = source["shards"]
    out = Path(cfg.output)
    partitioning = {"input": cfg.input, "input_config_hash": source["config_hash"], "shards": len(shards)}
    check_done_shards(cfg, out, shards)
    if rank == 0:
        kind = "edit-latent" if source.get("kind") == "edit" else "latent"  # edit groups keep their roles
        open_shard_set(out, cfg.identity(), partitioning=partitioning, kind=kind)
        save_config(cfg, out)
    codec_cfg = _codec_config(cfg, shards, device, rank)
    codec = AudioCodec(codec_cfg).to(device)
    mine = [(i, e) for i, e in enumerate(shards) if i % world == rank
            and not (out / (fmt.shard_name(cfg.prefix, e["index"]) + fmt.STATS_SUFFIX)).exists()]
    bar = tqdm(total=sum(e["rows"] for _, e in mine), unit="clip", desc=f"encoding (rank {rank})", disable=not progress)
    for _, entry in mine:
        encode_shard(cfg, codec, entry, entry["index"], bar)
    bar.close()
    if rank != 0:
        return {}
    deadline = time.time() + 24 * 3600
    expected = {fmt.shard_name(cfg.prefix, e["index"]) for e in shards}
    while not all((out / (name + fmt.STATS_SUFFIX)).exists() for name in expected):
        if time.time() > deadline:
            raise TimeoutError("other ranks did not finish their shards")
        time.sleep(2)
    extra = {"codec": codec_cfg.to_dict(), "duration": cfg.duration, "frame_rate": codec.frame_rate,
             "latent_channels": codec.latent_channels, "sample_rate": codec.sample_rate, "hop": codec.hop}
    return write_manifest(out, partitioning=partitioning, extra=extra)


def check_done_shards(cfg: EncodeConfig, out: Path, shards: list[dict]) -> None:
    """Refuse to resume when a finished latent shard was encoded with another config or from another input
    tar (the input set was swapped): checked against each shard's own done marker."""
    job_hash, by_index = config_hash(cfg.identity()), {e["index"]: e for e in shards}
    problems = []
    for name, stats in done_shards(out).items():
        source = by_index.get(stats["index"])
        if stats.get("job_hash") != job_hash:
            problems.append(f"{name}: encoded with another config")
        elif source is None or stats.get("input_sha256") != source["sha256"]:
            problems.append(f"{name}: its input shard changed since it was encoded (another input set?)")
    if problems:
        raise ConfigMismatch(f"{out} holds latent shards of another encode job; refusing to resume:\n  "
                             + "\n  ".join(problems[:5]) + "\nUse a new output directory.")
