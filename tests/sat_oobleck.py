"""stable-audio-tools' Oobleck VAE, written from its published architecture, for EzAudio-release fixtures.

Independent of capflow's converter and of diffusers: the state dict (`pretrain.tiny.stable_audio_vae_state`)
has the names and shapes that stable-audio-tools' `OobleckEncoder`/`OobleckDecoder` (weight-normed convs, SnakeBeta
with log-scale parameters, residual units at dilations 1, 3, 9, strided convs of kernel 2·stride and padding
ceil(stride/2)) and its `VAEBottleneck` (mean, scale = chunk(2); std = softplus(scale) + 1e-4) give a config, and
the forward passes below compute from those names and tensors alone. EzAudio's `ckpts/vae/config.json` (the facts): 24 kHz mono, channels 128,
c_mults 1/2/4/8, strides 2/4/6/10, encoder latent_dim 256 (mean + scale), decoder latent_dim 128.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pretrain.tiny import EZAUDIO_VAE, ezaudio_vae_config_json, stable_audio_vae_state  # noqa: F401

DILATIONS = (1, 3, 9)


# ---- the forward passes, from the tensors ----------------------------------------------------------------------
def _w(s: dict, name: str) -> torch.Tensor:
    v, g = s[f"{name}.weight_v"], s[f"{name}.weight_g"]
    return g * v / v.norm(dim=(1, 2), keepdim=True)


def _snake_fwd(s: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    alpha, beta = s[f"{name}.alpha"].exp()[:, None], s[f"{name}.beta"].exp()[:, None]
    return x + (beta + 1e-9).reciprocal() * torch.sin(alpha * x).pow(2)


def _conv_fwd(s, name, x, stride=1, dilation=1, padding=0):
    return F.conv1d(x, _w(s, name), s.get(f"{name}.bias"), stride=stride, dilation=dilation, padding=padding)


def _unit_fwd(s, name, x, dilation):
    y = _conv_fwd(s, f"{name}.layers.1", _snake_fwd(s, f"{name}.layers.0", x), dilation=dilation,
                  padding=3 * dilation)
    y = _conv_fwd(s, f"{name}.layers.3", _snake_fwd(s, f"{name}.layers.2", y))
    return x + y


def encode_mean(state: dict, x: torch.Tensor, config: dict = EZAUDIO_VAE) -> torch.Tensor:
    """The VAE bottleneck's mean of the encoder's output for waveforms (b, 1, s)."""
    s = {k.removeprefix("autoencoder."): v for k, v in state.items()}
    depth = len(config["c_mults"]) + 1
    x = _conv_fwd(s, "encoder.layers.0", x, padding=3)
    for i, stride in enumerate(config["strides"]):
        block = f"encoder.layers.{i + 1}.layers"
        for j, d in enumerate(DILATIONS):
            x = _unit_fwd(s, f"{block}.{j}", x, d)
        x = _conv_fwd(s, f"{block}.4", _snake_fwd(s, f"{block}.3", x), stride=stride, padding=math.ceil(stride / 2))
    x = _conv_fwd(s, f"encoder.layers.{depth + 1}", _snake_fwd(s, f"encoder.layers.{depth}", x), padding=1)
    return x.chunk(2, dim=1)[0]


def decode(state: dict, z: torch.Tensor, config: dict = EZAUDIO_VAE) -> torch.Tensor:
    """Waveforms (b, 1, n·hop) of latents (b, latent_dim, n)."""
    s = {k.removeprefix("autoencoder."): v for k, v in state.items()}
    depth = len(config["c_mults"]) + 1
    x = _conv_fwd(s, "decoder.layers.0", z, padding=3)
    for n, stride in enumerate(reversed(config["strides"])):
        block = f"decoder.layers.{n + 1}.layers"
        x = _snake_fwd(s, f"{block}.0", x)
        v, g = s[f"{block}.1.weight_v"], s[f"{block}.1.weight_g"]
        x = F.conv_transpose1d(x, g * v / v.norm(dim=(1, 2), keepdim=True), s[f"{block}.1.bias"], stride=stride,
                               padding=math.ceil(stride / 2))
        for j, d in enumerate(DILATIONS):
            x = _unit_fwd(s, f"{block}.{j + 2}", x, d)
    x = _snake_fwd(s, f"decoder.layers.{depth}", x)
    return _conv_fwd(s, f"decoder.layers.{depth + 1}", x, padding=3)
