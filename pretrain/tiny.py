"""Tiny Flan-T5 and Oobleck VAE in save_pretrained layout, for tests and the demo (`capflow tiny-models`)."""

from __future__ import annotations

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


def stable_audio_vae_state(vae) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderOobleck's weights under stable-audio-tools' names (`autoencoder.` + its
    Sequential `layers`: conv, blocks, snake, conv; a block's residual units, snake, conv; snake parameters
    (c,)), as EzAudio's 1m.pt stores them. The inverse of pretrain.ezaudio.convert_vae."""
    import re

    stages = len(vae.config.downsampling_ratios)
    enc = {"res_unit1": 0, "res_unit2": 1, "res_unit3": 2, "snake1": 3, "conv1": 4}
    dec = {"snake1": 0, "conv_t1": 1, "res_unit1": 2, "res_unit2": 3, "res_unit3": 4}
    unit = {"snake1": 0, "conv1": 1, "snake2": 2, "conv2": 3}
    out = {}
    for name, value in vae.state_dict().items():
        side, rest = name.split(".", 1)
        if m := re.match(r"block\.(\d+)\.(\w+)\.(.*)", rest):
            i, part, tail = int(m.group(1)), m.group(2), m.group(3)
            if part.startswith("res_unit"):
                sub, tail = tail.split(".", 1)
                tail = f"layers.{unit[sub]}.{tail}"
            index = (enc if side == "encoder" else dec)[part]
            key = f"{side}.layers.{i + 1}.layers.{index}.{tail}"
        else:
            part, tail = rest.split(".", 1)
            key = f"{side}.layers.{ {'conv1': 0, 'snake1': stages + 1, 'conv2': stages + 2}[part] }.{tail}"
        out["autoencoder." + key] = value.reshape(-1) if key.rsplit(".", 1)[-1] in ("alpha", "beta") else value
    return out


def write_tiny_ezaudio(directory: str | Path, models: dict[str, Path], seed: int = 0) -> dict[str, Path]:
    """A tiny EzAudio release in EzAudio's own files: `dit.pt` ({'model': MaskDiT state dict}) and `vae/1m.pt`
    ({'state_dict': stable-audio-tools VAE}) with `vae/config.json`, random weights (none left at zero)."""
    import json

    from diffusers import AutoencoderOobleck

    from .dit import EzAudioDiT, preset

    directory = Path(directory)
    (directory / "vae").mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    vae = AutoencoderOobleck.from_pretrained(models["oobleck"])
    dit = EzAudioDiT(preset("tiny", latent_channels=vae.config.decoder_input_channels, text_dim=32))
    with torch.no_grad():
        for p in dit.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    torch.save({"model": ezaudio_dit_state(dit)}, directory / "dit.pt")
    torch.save({"state_dict": stable_audio_vae_state(vae)}, directory / "vae" / "1m.pt")
    (directory / "vae" / "config.json").write_text(json.dumps({"sample_rate": vae.config.sampling_rate,
                                                               "audio_channels": vae.config.audio_channels}))
    return {"dit": directory / "dit.pt", "vae": directory / "vae" / "1m.pt"}
