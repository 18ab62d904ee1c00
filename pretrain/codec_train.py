"""`capflow train-codec`: an Oobleck VAE (the codec class every bundle loads, `oobleck_class()`) trained on audio
shards through pretrain's one loop, as stable-audio-tools trains its autoencoders (training/autoencoders.py,
configs/model_configs/autoencoders/stable_audio_2_0_vae.json): a multi-resolution STFT loss (auraloss's, spectral
convergence + log magnitude, FFT 2048 ... 32, hop a quarter), an optional L1 on the waveform ("time", 0 there),
the VAE bottleneck's KL (1e-4) and, optionally, an adversarial and a feature-matching loss against a
multi-scale STFT discriminator (0.1 and 5 there; the separation stage's discriminator, stepped by the loop's
discriminator hook). The export is a codec folder (`config.json` + weights, and `capflow.json`) that
`capflow encode` (`codec.pretrained`) and every bundle load. Shape legend: b batch, a audio channels, s samples.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import model_validator

from shards.config import Strict, config_hash, save_config
from shards.manifest import read_manifest
from shards.outputs import MARKER, staged_dir
from shards.reader import SampleDecoder

from .checkpoint import STATE_NAME, checkpoint_weights, list_checkpoints
from .codec import oobleck_class
from .config import PretrainConfig, ValidationConfig
from .data import LatentBatches
from .train import Trainer

log = logging.getLogger("capflow.pretrain")
CODEC_FORMAT = "capflow-codec"


class CodecArchitecture(Strict):
    """The VAE's shape (stable-audio-tools' Oobleck: `channels`, `c_mults`, `strides`, `latent_dim`)."""

    channels: int = 16  # stable-audio-tools `channels` (EzAudio: 128)
    c_mults: list[int] = [1, 1, 2, 2]  # (EzAudio: 1, 2, 4, 8)
    strides: list[int] = [2, 4, 6, 10]  # hop = product (EzAudio: 2, 4, 6, 10 -> 480, 50 frames/s at 24 kHz)
    latent_dim: int = 8  # latent channels (EzAudio: 128)
    sample_rate: int = 24000
    audio_channels: int = 1

    def vae_config(self) -> dict:
        """oobleck_class()'s arguments."""
        return {"encoder_hidden_size": self.channels, "downsampling_ratios": self.strides,
                "channel_multiples": self.c_mults, "decoder_channels": self.channels,
                "decoder_input_channels": self.latent_dim, "encoder_output_channels": 2 * self.latent_dim,
                "audio_channels": self.audio_channels, "sampling_rate": self.sample_rate}


class CodecLoss(Strict):
    """Weights as stable-audio-tools' stable_audio_2_0_vae.json unless said."""

    fft_sizes: list[int] = [2048, 1024, 512, 256, 128, 64, 32]  # hop fft/4, window fft
    perceptual_weighting: bool = False  # stable-audio-tools: true (an A-weighting FIR; needs scipy)
    stft: float = 1.0
    l1: float = 0.0  # "time" loss
    kl: float = 1e-4
    adversarial: float = 0.0  # stable-audio-tools: 0.1 (0: no discriminator)
    feature_matching: float = 0.0  # stable-audio-tools: 5.0
    disc_ffts: list[int] = [256, 512, 1024]
    disc_channels: int = 16
    disc_lr: float = 1e-4


class CodecSection(Strict):
    architecture: CodecArchitecture = CodecArchitecture()
    loss: CodecLoss = CodecLoss()
    chunk: float = 1.0  # seconds per training crop, cut at a random offset of each clip (stable-audio-tools: 65536 samples)
    holdout_split: str | None = "eval"  # clips of this split are never trained on (the reconstruction report's clips)
    report_clips: int = 16  # held-out clips the export's reconstruction report scores (0: no report)
    report_seconds: float = 4.0  # of each, from its start


class CodecTrainConfig(PretrainConfig):
    stage: Literal["codec"] = "codec"
    codec: CodecSection = CodecSection()
    validation: ValidationConfig = ValidationConfig(every=0)

    @model_validator(mode="after")
    def _check_codec(self) -> CodecTrainConfig:
        if self.validation.every:
            raise ValueError(f"validation.every: {self.validation.every} would be ignored: a codec is checked by the "
                             "held-out reconstruction report at the end of training (codec.report_clips); set "
                             "validation.every: 0")
        if self.init_from:
            raise ValueError("init_from: a codec trains from scratch here; resume a run with --resume latest")
        return self


class AudioCrops(LatentBatches):
    """Batches of {audio (b, a, s)}: crops of `codec.chunk` seconds at random offsets, at the codec's rate."""

    def decoder(self, seed: int):
        a = self.cfg.codec.architecture
        return SampleDecoder(sample_rate=a.sample_rate, mono=a.audio_channels == 1, duration=self.cfg.codec.chunk,
                             decode_audio=True, crop_seed=seed)

    def select(self):
        holdout = self.cfg.codec.holdout_split
        return (lambda s: s["meta"].get("split") != holdout) if holdout else None

    def batches(self, collated: Iterator[dict]) -> Iterator[dict]:
        for batch in collated:
            yield {"audio": torch.as_tensor(np.asarray(batch["audio"]), dtype=torch.float32), "key": list(batch["key"])}


def fit(wave: torch.Tensor, n: int) -> torch.Tensor:
    """A decode cut or zero-padded to n samples (an odd stride's transposed conv gives one sample less)."""
    return wave[..., :n] if wave.shape[-1] >= n else torch.nn.functional.pad(wave, (0, n - wave.shape[-1]))


def stft_loss(cfg: CodecLoss, sample_rate: int):
    from auraloss.freq import MultiResolutionSTFTLoss

    return MultiResolutionSTFTLoss(fft_sizes=cfg.fft_sizes, hop_sizes=[f // 4 for f in cfg.fft_sizes],
                                   win_lengths=cfg.fft_sizes, sample_rate=sample_rate,
                                   perceptual_weighting=cfg.perceptual_weighting)


class CodecTrainer(Trainer):
    export_format = CODEC_FORMAT

    def provenance(self):
        for p in self.cfg.data.shards:
            if "://" not in p and not Path(p).exists():
                raise FileNotFoundError(f"data.shards: no such audio shard set {p}")
        manifests = [read_manifest(p) for p in self.cfg.data.shards if Path(p).is_dir()]
        if any(m.get("kind", "audio") != "audio" for m in manifests):
            raise ValueError("data.shards: a codec trains on audio shards (capflow caption), not latents")
        return None, {}, [m["config_hash"] for m in manifests]

    def make_text_encoder(self):
        return None

    def build_model(self, latent_info: dict):
        c = self.cfg.codec
        self.stft = stft_loss(c.loss, c.architecture.sample_rate)
        return oobleck_class()(**c.architecture.vae_config())

    def make_stream(self):
        return AudioCrops(self.cfg, self.acc.process_index, start=self.state.micro)

    def make_validator(self):
        return None

    def validate(self):
        return None

    def make_discriminator(self):
        from separation.discriminator import MultiScaleSTFTDiscriminator

        loss = self.cfg.codec.loss
        if not loss.adversarial:
            return None
        disc = MultiScaleSTFTDiscriminator(loss.disc_ffts, loss.disc_channels)
        return disc, torch.optim.AdamW(disc.parameters(), lr=loss.disc_lr, betas=tuple(self.cfg.optim.betas))

    def _reconstruct(self, audio: torch.Tensor):
        posterior = self.model.encode(audio).latent_dist  # (b, a, s) -> diagonal Gaussian over (b, c, n)
        return fit(self.model.decode(posterior.sample()).sample, audio.shape[-1]), posterior

    def discriminator_loss(self, batch: dict) -> torch.Tensor:
        from separation.discriminator import discriminator_loss

        audio = batch["audio"].to(self.acc.device)
        self.discriminator.requires_grad_(True)
        with torch.no_grad():
            fake = self._reconstruct(audio)[0]
        real, fake = audio.flatten(0, 1), fake.flatten(0, 1)  # channels as batch: (b·a, s)
        scores = self.discriminator(torch.cat([real, fake]))
        return discriminator_loss([x[: len(real)] for x in scores], [x[len(real):] for x in scores])

    def loss(self, batch: dict) -> torch.Tensor:
        w = self.cfg.codec.loss
        audio = batch["audio"].to(self.acc.device)
        recon, posterior = self._reconstruct(audio)
        flat_real, flat_fake = audio.flatten(0, 1)[:, None], recon.flatten(0, 1)[:, None]  # (b·a, 1, s)
        loss = w.stft * self.stft(flat_fake, flat_real) + w.kl * posterior.kl().mean()
        if w.l1:
            loss = loss + w.l1 * (recon - audio).abs().mean()
        if self.discriminator is not None:
            from separation.discriminator import feature_matching_loss, generator_loss

            self.discriminator.requires_grad_(False)  # its gradients come from its own step only
            fake_out = self.discriminator(flat_fake[:, 0], features=True)
            loss = loss + w.adversarial * generator_loss(fake_out[0])
            if w.feature_matching:
                with torch.no_grad():
                    real_out = self.discriminator(flat_real[:, 0], features=True)
                loss = loss + w.feature_matching * feature_matching_loss(real_out[1], fake_out[1])
        return loss

    def export(self, use_ema: bool = True) -> Path:
        """OUTPUT/export: the codec folder (its EMA weights), loadable as `codec.pretrained` anywhere."""
        checkpoint = list_checkpoints(self.out)[-1]
        info = {**json.loads((checkpoint / STATE_NAME).read_text()), "data_hashes": self.data_hashes,
                "config_hash": config_hash(self.cfg)}
        with staged_dir(self.out / "export", CODEC_FORMAT) as tmp:
            shutil.copytree(checkpoint_weights(checkpoint, use_ema), tmp, dirs_exist_ok=True)
            (tmp / MARKER).write_text(json.dumps({"format": CODEC_FORMAT, "info": info}, indent=2) + "\n")
            save_config(self.cfg, tmp, "training_config.yaml")
        log.info("exported %s", self.out / "export")
        return self.out / "export"


def heldout_clips(cfg: CodecTrainConfig) -> list[np.ndarray]:
    """Up to `report_clips` clips (a, s) of the held-out split (every clip when there is none), their first
    `report_seconds` at the codec's rate, in shard order."""
    from shards.reader import iter_tar_samples, shard_urls

    c = cfg.codec
    decode = SampleDecoder(sample_rate=c.architecture.sample_rate, mono=c.architecture.audio_channels == 1,
                           duration=c.report_seconds)
    clips = []
    for url in [u for source in cfg.data.shards for u in shard_urls(source)]:
        for key, members in iter_tar_samples(Path(url)):
            sample = decode({"__key__": key, "__url__": url, **members})
            if c.holdout_split is None or sample["meta"].get("split") == c.holdout_split:
                clips.append(sample["audio"])
            if len(clips) >= c.report_clips:
                return clips
    return clips


@torch.no_grad()
def reconstruction(vae, clips: list[np.ndarray], loss: CodecLoss, sample_rate: int) -> dict[str, float]:
    """Mean multi-resolution STFT distance (the training loss's, lower is better) and SI-SDR (dB) of the clips
    against their reconstruction from the posterior mean."""
    from evaluation.metrics import si_sdr

    stft = stft_loss(loss.model_copy(update={"perceptual_weighting": False}), sample_rate)
    vae.eval()
    distances, sdrs = [], []
    for clip in clips:
        x = torch.from_numpy(np.ascontiguousarray(clip, dtype=np.float32))[None]  # (1, a, s)
        y = fit(vae.decode(vae.encode(x).latent_dist.mean).sample, x.shape[-1])
        distances.append(float(stft(y.flatten(0, 1)[:, None], x.flatten(0, 1)[:, None])))
        sdrs.append(si_sdr(x.numpy(), y.numpy()))
    return {"mrstft": round(float(np.mean(distances)), 4), "si_sdr": round(float(np.mean(sdrs)), 2), "clips": len(clips)}


def report(cfg: CodecTrainConfig, export: Path) -> dict:
    """The export's reconstruction of held-out clips beside an untrained codec of the same architecture (seed
    `cfg.seed`); written into the export's capflow.json."""
    clips = heldout_clips(cfg)
    if not clips:
        raise ValueError(f"no clips to score in {cfg.data.shards} (split {cfg.codec.holdout_split!r})")
    a = cfg.codec.architecture
    torch.manual_seed(cfg.seed)
    scores = {"trained": reconstruction(oobleck_class().from_pretrained(export), clips, cfg.codec.loss, a.sample_rate),
              "untrained": reconstruction(oobleck_class()(**a.vae_config()), clips, cfg.codec.loss, a.sample_rate)}
    index = json.loads((export / MARKER).read_text())
    (export / MARKER).write_text(json.dumps({**index, "reconstruction": scores}, indent=2) + "\n")
    return scores


def run_train_codec(cfg: CodecTrainConfig, resume: str | None = None) -> Path:
    out = CodecTrainer(cfg, resume=resume).train()
    if cfg.codec.report_clips and (out / MARKER).is_file():  # rank 0 exported it
        scores = report(cfg, out)
        log.info("held-out reconstruction (%d clips): trained MR-STFT %.3f, SI-SDR %.1f dB; untrained MR-STFT %.3f, "
                 "SI-SDR %.1f dB", scores["trained"]["clips"], scores["trained"]["mrstft"], scores["trained"]["si_sdr"],
                 scores["untrained"]["mrstft"], scores["untrained"]["si_sdr"])
    return out
