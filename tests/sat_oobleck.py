"""stable-audio-tools' Oobleck VAE, written from its published architecture, for EzAudio-release fixtures.

Independent of capflow's converter and of diffusers: the state dict has the names and shapes that
stable-audio-tools' `OobleckEncoder`/`OobleckDecoder` (weight-normed convs, SnakeBeta with log-scale
parameters, residual units at dilations 1, 3, 9, strided convs of kernel 2·stride and padding ceil(stride/2)) and
its `VAEBottleneck` (mean, scale = chunk(2); std = softplus(scale) + 1e-4) give a config, and the forward passes
below compute from those tensors alone. EzAudio's `ckpts/vae/config.json` (the facts): 24 kHz mono, channels 128,
c_mults 1/2/4/8, strides 2/4/6/10, encoder latent_dim 256 (mean + scale), decoder latent_dim 128.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EZAUDIO_VAE = {"channels": 128, "c_mults": [1, 2, 4, 8], "strides": [2, 4, 6, 10], "latent_dim": 128,
               "in_channels": 1, "sample_rate": 24000}
DILATIONS = (1, 3, 9)


def _conv(out: dict, name: str, cin: int, cout: int, k: int, g: torch.Generator, bias: bool = True,
          transposed: bool = False) -> None:
    shape = (cin, cout, k) if transposed else (cout, cin, k)  # weight_norm over dim 0 either way
    out[f"{name}.weight_v"] = torch.randn(shape, generator=g)
    out[f"{name}.weight_g"] = 0.5 + 0.5 * torch.rand(shape[0], 1, 1, generator=g)
    if bias:
        out[f"{name}.bias"] = 0.01 * torch.randn(cout, generator=g)


def _snake(out: dict, name: str, c: int, g: torch.Generator) -> None:
    out[f"{name}.alpha"] = 0.1 * torch.randn(c, generator=g)  # log-scale: exp() in the forward
    out[f"{name}.beta"] = 0.1 * torch.randn(c, generator=g)


def _unit(out: dict, name: str, c: int, g: torch.Generator) -> None:
    _snake(out, f"{name}.layers.0", c, g)
    _conv(out, f"{name}.layers.1", c, c, 7, g)
    _snake(out, f"{name}.layers.2", c, g)
    _conv(out, f"{name}.layers.3", c, c, 1, g)


def vae_state(config: dict = EZAUDIO_VAE, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under stable-audio-tools' names (`autoencoder.encoder.layers...`), as EzAudio's 1m.pt
    holds them (`{'state_dict': ...}`)."""
    g = torch.Generator().manual_seed(seed)
    ch, mults, strides, latent = config["channels"], [1] + config["c_mults"], config["strides"], config["latent_dim"]
    depth, out = len(mults), {}
    _conv(out, "encoder.layers.0", config["in_channels"], ch * mults[0], 7, g)
    for i in range(depth - 1):
        block = f"encoder.layers.{i + 1}.layers"
        for j in range(3):
            _unit(out, f"{block}.{j}", ch * mults[i], g)
        _snake(out, f"{block}.3", ch * mults[i], g)
        _conv(out, f"{block}.4", ch * mults[i], ch * mults[i + 1], 2 * strides[i], g)
    _snake(out, f"encoder.layers.{depth}", ch * mults[-1], g)
    _conv(out, f"encoder.layers.{depth + 1}", ch * mults[-1], 2 * latent, 3, g)
    _conv(out, "decoder.layers.0", latent, ch * mults[-1], 7, g)
    for n, i in enumerate(range(depth - 1, 0, -1)):
        block = f"decoder.layers.{n + 1}.layers"
        _snake(out, f"{block}.0", ch * mults[i], g)
        _conv(out, f"{block}.1", ch * mults[i], ch * mults[i - 1], 2 * strides[i - 1], g, transposed=True)
        for j in range(3):
            _unit(out, f"{block}.{j + 2}", ch * mults[i - 1], g)
    _snake(out, f"decoder.layers.{depth}", ch * mults[0], g)
    _conv(out, f"decoder.layers.{depth + 1}", ch * mults[0], config["in_channels"], 7, g, bias=False)
    return {f"autoencoder.{k}": v for k, v in out.items()}


def ezaudio_config_json(config: dict = EZAUDIO_VAE) -> dict:
    """EzAudio's ckpts/vae/config.json for this config (the parts a loader reads)."""
    side = {"channels": config["channels"], "c_mults": config["c_mults"], "strides": config["strides"],
            "use_snake": True}
    return {"model_type": "autoencoder", "sample_rate": config["sample_rate"], "audio_channels": config["in_channels"],
            "model": {"encoder": {"type": "oobleck", "config": {**side, "in_channels": config["in_channels"],
                                                                "latent_dim": 2 * config["latent_dim"]}},
                      "decoder": {"type": "oobleck", "config": {**side, "out_channels": config["in_channels"],
                                                                "latent_dim": config["latent_dim"], "final_tanh": False}},
                      "bottleneck": {"type": "vae"}, "latent_dim": config["latent_dim"],
                      "downsampling_ratio": math.prod(config["strides"]), "io_channels": config["in_channels"]}}


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
