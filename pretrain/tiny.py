"""Tiny Flan-T5 and Oobleck VAE in save_pretrained layout, for tests and the demo (`capflow tiny-models`)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from captioner.tiny import build_tokenizer

# Oobleck at EzAudio's framing (24 kHz, hop 480 = 2·4·4·5·3 -> 50 latent frames/s), 8 latent channels.
TINY_CODEC = dict(encoder_hidden_size=16, downsampling_ratios=[2, 4, 4, 5, 3], channel_multiples=[1, 1, 2, 2, 2],
                  decoder_channels=8, decoder_input_channels=8, audio_channels=1, sampling_rate=24000)


def write_tiny_t5(directory: str | Path, seed: int = 0) -> Path:
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    directory = Path(directory)
    tokenizer = build_tokenizer([], eos="</s>", pad="<pad>", unk="<unk>", append_eos=True, vocab_size=300)
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=1,
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
