"""Audio codec: a waveform VAE through diffusers' AutoencoderOobleck, with latent normalisation.

The VAE class is `oobleck_class()`: diffusers' AutoencoderOobleck with the encoder's output width its own
parameter (`encoder_output_channels`, twice the latent channels: mean and scale). diffusers ties it to the first
conv's width (`encoder_hidden_size`), which stable-audio-tools does not: EzAudio's VAE (channels 128, latent 128,
encoder output 256) has no diffusers config. Without the parameter the class is AutoencoderOobleck exactly, and
it loads every AutoencoderOobleck folder.

Latents handed to the DiT are normalised per channel, (z − mean) / std, with statistics measured on data
(`measure_stats`) and stored in the codec config, so every checkpoint carries its own normalisation.
Shape legend: b batch, a audio channels, s samples, c latent channels, n latent frames (s / hop).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn


@functools.cache
def oobleck_class():
    """The Oobleck VAE class every codec is loaded and saved with (built on first use: diffusers imports slowly)."""
    from diffusers import AutoencoderOobleck
    from diffusers.configuration_utils import register_to_config
    from torch.nn.utils import weight_norm

    class OobleckVAE(AutoencoderOobleck):
        @register_to_config
        def __init__(self, encoder_hidden_size=128, downsampling_ratios=(2, 4, 4, 8, 8),
                     channel_multiples=(1, 2, 4, 8, 16), decoder_channels=128, decoder_input_channels=64,
                     audio_channels=2, sampling_rate=44100, encoder_output_channels: int | None = None):
            super().__init__(encoder_hidden_size=encoder_hidden_size, downsampling_ratios=list(downsampling_ratios),
                             channel_multiples=list(channel_multiples), decoder_channels=decoder_channels,
                             decoder_input_channels=decoder_input_channels, audio_channels=audio_channels,
                             sampling_rate=sampling_rate)
            out = encoder_output_channels or encoder_hidden_size
            if out != 2 * decoder_input_channels:
                raise ValueError(f"the encoder's output ({out}) must be twice the latent channels "
                                 f"({decoder_input_channels}): mean and scale")
            if encoder_output_channels and encoder_output_channels != encoder_hidden_size:
                width = encoder_hidden_size * list(channel_multiples)[-1]  # stable-audio-tools: WNConv1d(k=3) to it
                self.encoder.conv2 = weight_norm(nn.Conv1d(width, encoder_output_channels, kernel_size=3, padding=1))

        @staticmethod
        def saved_weights(directory) -> dict[str, torch.Tensor]:
            """What save_pretrained wrote to `directory`, by state-dict names (a trainer's resume reads it)."""
            from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
            from safetensors.torch import load_file

            return load_file(f"{directory}/{SAFETENSORS_WEIGHTS_NAME}")

    return OobleckVAE


@dataclass
class CodecConfig:
    pretrained: str  # hub id or local directory of an AutoencoderOobleck
    subfolder: str | None = None  # e.g. "vae" inside stabilityai/stable-audio-open-1.0
    sample_posterior: bool = False  # encode to the posterior mean (default) or a sample
    latent_mean: list[float] = field(default_factory=list)  # per channel; empty: no normalisation yet
    latent_std: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class AudioCodec(nn.Module):
    def __init__(self, config: CodecConfig):
        super().__init__()
        self.config = config
        kwargs = {"subfolder": config.subfolder} if config.subfolder else {}
        with warnings.catch_warnings():  # Oobleck's weight_norm uses a deprecated torch API; not actionable here
            warnings.filterwarnings("ignore", message=".*weight_norm.*")
            self.vae = oobleck_class().from_pretrained(config.pretrained, **kwargs)
        self.vae.requires_grad_(False)
        self.vae.eval()
        c = self.latent_channels
        mean = torch.tensor(config.latent_mean or [0.0] * c, dtype=torch.float32)
        std = torch.tensor(config.latent_std or [1.0] * c, dtype=torch.float32)
        if mean.numel() != c or std.numel() != c:
            raise ValueError(f"codec normalisation has {mean.numel()}/{std.numel()} values for {c} latent channels")
        self.register_buffer("mean", mean[None, :, None], persistent=False)  # (1, c, 1)
        self.register_buffer("std", std[None, :, None], persistent=False)

    @property
    def sample_rate(self) -> int:
        return int(self.vae.config.sampling_rate)

    @property
    def hop(self) -> int:
        return math.prod(self.vae.config.downsampling_ratios)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.decoder_input_channels)

    @property
    def audio_channels(self) -> int:
        return int(self.vae.config.audio_channels)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop

    def frames(self, seconds: float) -> int:
        return math.ceil(seconds * self.frame_rate)

    @torch.no_grad()
    def encode(self, wave: torch.Tensor, generator: torch.Generator | None = None, normalize: bool = True) -> torch.Tensor:
        """Waveform (b, a, s) at self.sample_rate -> latents (b, c, ceil(s / hop)), normalised."""
        if wave.shape[1] != self.audio_channels:  # mono <-> stereo to what the VAE was trained on
            wave = wave.mean(dim=1, keepdim=True).expand(-1, self.audio_channels, -1)
        pad = (-wave.shape[-1]) % self.hop
        wave = torch.nn.functional.pad(wave, (0, pad)).to(self.vae.dtype)
        posterior = self.vae.encode(wave).latent_dist
        z = posterior.sample(generator) if self.config.sample_posterior else posterior.mean  # (b, c, n)
        z = z.float()
        return (z - self.mean) / self.std if normalize else z

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (b, c, n) -> waveform (b, a, n·hop) in float32."""
        z = latents.float() * self.std + self.mean
        return self.vae.decode(z.to(self.vae.dtype)).sample.float()

    def with_stats(self, mean: torch.Tensor, std: torch.Tensor) -> CodecConfig:
        """The codec config with new per-channel normalisation (from measure_stats)."""
        return dataclasses.replace(self.config, latent_mean=mean.tolist(), latent_std=std.tolist())


def measure_stats(latents: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over raw (unnormalised) latents [(c, n), ...]."""
    flat = torch.cat([z.float().reshape(z.shape[-2], -1) for z in latents], dim=1)  # (c, total frames)
    return flat.mean(dim=1), flat.std(dim=1).clamp_min(1e-5)
