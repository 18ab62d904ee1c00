"""Tiny Flan-T5 and Oobleck VAE in save_pretrained layout, for tests and the demo (`capflow tiny-models`)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from captioner.tiny import build_tokenizer

# Oobleck at EzAudio's framing (24 kHz, hop 480 = 2·4·4·5·3 -> 50 latent frames/s), 8 latent channels.
TINY_CODEC = dict(encoder_hidden_size=16, downsampling_ratios=[2, 4, 4, 5, 3], channel_multiples=[1, 1, 2, 2, 2],
                  decoder_channels=8, decoder_input_channels=8, audio_channels=1, sampling_rate=24000)


def write_tiny_t5(directory: str | Path, seed: int = 0, d_model: int = 32) -> Path:
    """A tiny random Flan-T5 (its layout and tokenizer); `d_model` 1024 gives Flan-T5-large's width."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    directory = Path(directory)
    tokenizer = build_tokenizer([], eos="</s>", pad="<pad>", unk="<unk>", append_eos=True, vocab_size=300)
    config = T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=1,
                      num_heads=4, feed_forward_proj="gated-gelu", pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    T5ForConditionalGeneration(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_tiny_oobleck(directory: str | Path, seed: int = 0) -> Path:
    from diffusers import AutoencoderOobleck

    torch.manual_seed(seed)
    AutoencoderOobleck(**TINY_CODEC).save_pretrained(directory)
    return Path(directory)


def write_tiny_models(directory: str | Path, seed: int = 0) -> dict[str, Path]:
    directory = Path(directory)
    return {"flan-t5": write_tiny_t5(directory / "flan-t5", seed), "oobleck": write_tiny_oobleck(directory / "oobleck", seed)}


def write_tiny_bundle(directory: str | Path, models: dict[str, Path], seed: int = 0) -> Path:
    """An untrained tiny text-to-audio bundle (tiny DiT + the tiny T5 and Oobleck), for the demo path."""
    from .codec import AudioCodec, CodecConfig
    from .dit import EzAudioDiT, preset
    from .pipeline import SamplerDefaults, TextEncoderRef, TextToAudio

    torch.manual_seed(seed)
    codec = AudioCodec(CodecConfig(str(models["oobleck"])))
    dit = EzAudioDiT(preset("tiny", latent_channels=codec.latent_channels, text_dim=32))
    directory = Path(directory)
    # references relative to the bundle, so the tiny-models folder can be moved as a whole
    codec.config.pretrained = os.path.relpath(models["oobleck"], directory)
    bundle = TextToAudio(dit, codec, None, TextEncoderRef(os.path.relpath(models["flan-t5"], directory)),
                         SamplerDefaults(steps=8, duration=2.0), stage="untrained")
    return bundle.save_pretrained(directory)


def ezaudio_dit_state(dit) -> dict[str, torch.Tensor]:
    """An EzAudioDiT's weights under EzAudio's MaskDiT names (src/models/udit.py, blocks.py): separate
    to_q/to_k/to_v projections, `model.` nesting, rotary frequency buffers. The inverse of
    pretrain.ezaudio.convert_dit, written from EzAudio's module layout."""
    top = {"proj_in.": "model.patch_embed.proj.", "time_embed.": "model.time_embed.mlp.", "time_final.": "model.time_ada_final.",
           "time_shared.": "model.time_ada.", "text_proj.": "model.context_embed.", "norm_out.": "model.final_block.norm.",
           "proj_out.": "model.final_block.linear.", "conv_out.": "model.final_block.final_layer."}
    inner = {".attn.q_norm.": ".attn.norm_q.", ".attn.k_norm.": ".attn.norm_k.", ".cross_attn.q_norm.": ".cross_attn.norm_q.",
             ".cross_attn.k_norm.": ".cross_attn.norm_k.", ".cross_attn.q.": ".cross_attn.to_q.",
             ".mlp.proj_in.": ".mlp.net.0.proj.", ".mlp.proj_out.": ".mlp.net.2.", ".adaln.table": ".adaln.scale_shift_table",
             ".adaln.down.": ".adaln.lora_a.", ".adaln.up.": ".adaln.lora_b."}
    head_dim = dit.config.width // dit.config.num_heads
    out = {}
    for name, value in dit.state_dict().items():
        if name == "mask_embed":
            out[name] = value
            continue
        prefix = next((p for p in top if name.startswith(p)), None)
        if prefix:
            out[top[prefix] + name[len(prefix):]] = value
            continue
        block = name.split(".attn.")[0].split(".cross_attn.")[0] if ".attn." in name else None
        if name.endswith(".attn.qkv.weight"):
            for part, tensor in zip("qkv", value.chunk(3)):
                out[f"model.{block}.attn.to_{part}.weight"] = tensor
            out[f"model.{block}.attn.rotary.inv_freq"] = 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
            continue
        if name.endswith(".cross_attn.kv.weight"):
            base = name[: -len(".kv.weight")]
            for part, tensor in zip("kv", value.chunk(2)):
                out[f"model.{base}.to_{part}.weight"] = tensor
            continue
        for ours, theirs in inner.items():
            name = name.replace(ours, theirs)
        out["model." + name] = value
    return out


# EzAudio's VAE as its ckpts/vae/config.json builds it (stable-audio-tools' Oobleck: 24 kHz mono, channels 128,
# c_mults 1/2/4/8, strides 2/4/6/10, encoder output 256 = mean + scale of 128 latent channels), and a tiny one of
# the same structure: encoder output twice the latent width and the first conv's width of its own, EzAudio's hop.
EZAUDIO_VAE = {"channels": 128, "c_mults": [1, 2, 4, 8], "strides": [2, 4, 6, 10], "latent_dim": 128,
               "in_channels": 1, "sample_rate": 24000}
EZAUDIO_VAE_TINY = {**EZAUDIO_VAE, "channels": 8, "c_mults": [1, 1, 2, 2], "latent_dim": 8}


def stable_audio_vae_state(config: dict = EZAUDIO_VAE, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under stable-audio-tools' names and shapes (`autoencoder.encoder.layers...`: weight-normed
    convs, SnakeBeta's log-scale alpha/beta of shape (c,), residual units of kernel 7 then 1, strided convs of
    kernel 2·stride), as EzAudio's 1m.pt holds them (`{'state_dict': ...}`): written from the published
    architecture, not from capflow's converter."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}

    def conv(name, cin, cout, k, bias=True, transposed=False):
        shape = (cin, cout, k) if transposed else (cout, cin, k)  # weight_norm over dim 0 either way
        out[f"{name}.weight_v"] = torch.randn(shape, generator=g)
        out[f"{name}.weight_g"] = 0.5 + 0.5 * torch.rand(shape[0], 1, 1, generator=g)
        if bias:
            out[f"{name}.bias"] = 0.01 * torch.randn(cout, generator=g)

    def snake(name, c):
        out[f"{name}.alpha"] = 0.1 * torch.randn(c, generator=g)
        out[f"{name}.beta"] = 0.1 * torch.randn(c, generator=g)

    def unit(name, c):
        snake(f"{name}.layers.0", c)
        conv(f"{name}.layers.1", c, c, 7)
        snake(f"{name}.layers.2", c)
        conv(f"{name}.layers.3", c, c, 1)

    ch, mults, strides, latent = config["channels"], [1] + config["c_mults"], config["strides"], config["latent_dim"]
    depth = len(mults)
    conv("encoder.layers.0", config["in_channels"], ch * mults[0], 7)
    for i in range(depth - 1):
        block = f"encoder.layers.{i + 1}.layers"
        for j in range(3):
            unit(f"{block}.{j}", ch * mults[i])
        snake(f"{block}.3", ch * mults[i])
        conv(f"{block}.4", ch * mults[i], ch * mults[i + 1], 2 * strides[i])
    snake(f"encoder.layers.{depth}", ch * mults[-1])
    conv(f"encoder.layers.{depth + 1}", ch * mults[-1], 2 * latent, 3)
    conv("decoder.layers.0", latent, ch * mults[-1], 7)
    for n, i in enumerate(range(depth - 1, 0, -1)):
        block = f"decoder.layers.{n + 1}.layers"
        snake(f"{block}.0", ch * mults[i])
        conv(f"{block}.1", ch * mults[i], ch * mults[i - 1], 2 * strides[i - 1], transposed=True)
        for j in range(3):
            unit(f"{block}.{j + 2}", ch * mults[i - 1])
    snake(f"decoder.layers.{depth}", ch * mults[0])
    conv(f"decoder.layers.{depth + 1}", ch * mults[0], config["in_channels"], 7, bias=False)
    return {f"autoencoder.{k}": v for k, v in out.items()}


def ezaudio_vae_config_json(config: dict = EZAUDIO_VAE) -> dict:
    """EzAudio's ckpts/vae/config.json for this VAE config (the parts a loader reads)."""
    side = {"channels": config["channels"], "c_mults": config["c_mults"], "strides": config["strides"], "use_snake": True}
    return {"model_type": "autoencoder", "sample_rate": config["sample_rate"], "audio_channels": config["in_channels"],
            "model": {"encoder": {"type": "oobleck", "config": {**side, "in_channels": config["in_channels"],
                                                                "latent_dim": 2 * config["latent_dim"]}},
                      "decoder": {"type": "oobleck", "config": {**side, "out_channels": config["in_channels"],
                                                                "latent_dim": config["latent_dim"], "final_tanh": False}},
                      "bottleneck": {"type": "vae"}, "latent_dim": config["latent_dim"],
                      "downsampling_ratio": math.prod(config["strides"]), "io_channels": config["in_channels"]}}


def write_tiny_ezaudio(directory: str | Path, seed: int = 0, text_dim: int = 32,
                       vae: dict = EZAUDIO_VAE_TINY) -> dict[str, Path]:
    """A tiny EzAudio release in EzAudio's own layout (`ckpts/s3/*.pt` = {'model': MaskDiT state dict},
    `ckpts/vae/1m.pt` = {'state_dict': stable-audio-tools VAE}, `ckpts/vae/config.json`), random weights: the VAE
    at EzAudio's structure (`stable_audio_vae_state`), the DiT tiny with text width `text_dim`."""
    import json

    from .dit import EzAudioDiT, preset

    directory = Path(directory)
    (directory / "ckpts" / "s3").mkdir(parents=True, exist_ok=True)
    (directory / "ckpts" / "vae").mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    dit = EzAudioDiT(preset("tiny", latent_channels=vae["latent_dim"], text_dim=text_dim))
    with torch.no_grad():
        for p in dit.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    files = {"dit": directory / "ckpts" / "s3" / "ezaudio_s3_tiny.pt", "vae": directory / "ckpts" / "vae" / "1m.pt"}
    torch.save({"model": ezaudio_dit_state(dit)}, files["dit"])
    torch.save({"state_dict": stable_audio_vae_state(vae, seed)}, files["vae"])
    (directory / "ckpts" / "vae" / "config.json").write_text(json.dumps(ezaudio_vae_config_json(vae)))
    return files
