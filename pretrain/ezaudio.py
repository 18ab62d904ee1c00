"""`capflow import ezaudio`: EzAudio's public checkpoints (github.com/haidog-yaqub/EzAudio, Hugging Face
`OpenSound/EzAudio`) as a capflow text-to-audio bundle.

- The DiT: EzAudio's MaskDiT state dict (`torch.load(ckpt)['model']`, keys `mask_embed`, `model.*`) mapped onto
  `EzAudioDiT`, the same network with fused q/k/v projections; the configuration is read from the tensors.
- The VAE: EzAudio's `1m.pt` is a stable-audio-tools Oobleck VAE (`['state_dict']`, keys `autoencoder.*`),
  converted to diffusers' `AutoencoderOobleck` (the key mapping of diffusers' scripts/convert_stable_audio.py)
  and saved in the bundle, so `capflow encode`, generate and edit use it through `AudioCodec`.
- The objective: EzAudio is a v-prediction DDPM, sampled with diffusers' `DDIMScheduler` (EZAUDIO_SCHEDULER);
  the bundle records `objective: v-ddpm` and the scheduler config, and EzAudio's sampling defaults (100 DDIM
  steps, eta 1, CFG 5 with rescale 0.75).

Checkpoints are pickles: they are read with `torch.load(weights_only=True)`, which refuses any pickle that
would run code; such a file is one line, not a traceback.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .dit import DiTConfig, EzAudioDiT

# ckpts/ezaudio-l.yml / ezaudio-xl.yml `diff` sections (prediction v, zero-SNR betas, trailing spacing)
EZAUDIO_SCHEDULER = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                     "beta_end": 0.012, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True,
                     "timestep_spacing": "trailing", "clip_sample": False}
TEXT_ENCODERS = {"l": "google/flan-t5-large", "xl": "google/flan-t5-xl"}
HUB_REPO = "OpenSound/EzAudio"
HUB_FILES = {"l": "ckpts/s3/ezaudio_s3_l.pt", "xl": "ckpts/s3/ezaudio_s3_xl.pt", "vae": "ckpts/vae/1m.pt"}

# EzAudio name -> ours, applied in order to every key (blocks keep their in_/mid_/out_ prefixes)
_DIT_RENAMES = [
    (r"^model\.patch_embed\.proj\.", "proj_in."), (r"^model\.time_embed\.mlp\.", "time_embed."),
    (r"^model\.time_ada_final\.", "time_final."), (r"^model\.time_ada\.", "time_shared."),
    (r"^model\.context_embed\.", "text_proj."), (r"^model\.final_block\.norm\.", "norm_out."),
    (r"^model\.final_block\.linear\.", "proj_out."), (r"^model\.final_block\.final_layer\.", "conv_out."),
    (r"^model\.", ""), (r"\.attn\.norm_q\.", ".attn.q_norm."), (r"\.attn\.norm_k\.", ".attn.k_norm."),
    (r"\.cross_attn\.norm_q\.", ".cross_attn.q_norm."), (r"\.cross_attn\.norm_k\.", ".cross_attn.k_norm."),
    (r"\.cross_attn\.to_q\.", ".cross_attn.q."), (r"\.mlp\.net\.0\.proj\.", ".mlp.proj_in."),
    (r"\.mlp\.net\.2\.", ".mlp.proj_out."), (r"\.adaln\.scale_shift_table$", ".adaln.table"),
    (r"\.adaln\.lora_a\.", ".adaln.down."), (r"\.adaln\.lora_b\.", ".adaln.up."),
]


def load_checkpoint(path: str | Path, key: str) -> dict[str, torch.Tensor]:
    """`torch.load(path, weights_only=True)[key]`: tensors only, never code; ValueError in one line otherwise."""
    import pickle

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: not loadable as plain tensors (weights_only=True refuses pickled code or "
                         f"objects): {first}") from None
    if not isinstance(data, dict) or key not in data or not isinstance(data[key], dict):
        found = sorted(data)[:8] if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: expected EzAudio's checkpoint layout {{'{key}': state_dict}}, found {found}")
    return data[key]


def dit_config(state: dict[str, torch.Tensor]) -> DiTConfig:
    """The DiT's configuration, read from EzAudio's tensors."""
    width = state["model.patch_embed.proj.weight"].shape[0]
    head_dim = state["model.mid_block.attn.norm_q.weight"].shape[0]
    text = state.get("model.context_embed.0.weight")
    return DiTConfig(latent_channels=state["model.final_block.linear.weight"].shape[0], width=width,
                     depth=len({k.split(".")[2] for k in state if k.startswith("model.in_blocks.")}),
                     num_heads=width // head_dim, mlp_ratio=state["model.mid_block.mlp.net.2.weight"].shape[1] / width,
                     adaln="sola", sola_rank=state["model.mid_block.adaln.lora_a.weight"].shape[0] // 6,
                     text_dim=None if text is None else text.shape[1], long_skip=True,
                     time_freq_dim=state["model.time_embed.mlp.0.weight"].shape[1])


def convert_dit(state: dict[str, torch.Tensor]) -> tuple[DiTConfig, dict[str, torch.Tensor]]:
    """EzAudio's MaskDiT state dict -> (config, EzAudioDiT state dict). Separate q/k/v projections are fused in
    the order q, k, v (self-attention) and k, v (cross-attention); rotary frequency buffers are dropped (ours are
    computed)."""
    out: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.endswith("rotary.inv_freq"):
            continue
        if m := re.match(r"(.*)\.(attn|cross_attn)\.to_([qkv])\.weight$", key):
            prefix = m.group(1).removeprefix("model.")
            if not (m.group(2) == "cross_attn" and m.group(3) == "q"):
                fused = f"{prefix}.{m.group(2)}.{'qkv' if m.group(2) == 'attn' else 'kv'}.weight"
                parts.setdefault(fused, {})[m.group(3)] = value
                continue
        for pattern, replacement in _DIT_RENAMES:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    for fused, pieces in parts.items():
        out[fused] = torch.cat([pieces[p] for p in ("qkv" if ".attn.qkv" in fused else "kv")])
    return dit_config(state), out


def load_dit(state: dict[str, torch.Tensor]) -> EzAudioDiT:
    try:
        config, converted = convert_dit(state)
    except KeyError as e:
        raise ValueError(f"not an EzAudio MaskDiT state dict (no {e})") from None
    model = EzAudioDiT(config)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise ValueError(f"not an EzAudio MaskDiT of the supported kind (ada_sola_bias, cross-attention text, long "
                         f"skips): missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model


def convert_vae(state: dict[str, torch.Tensor], prefix: str = "autoencoder.", stages: int = 4) -> dict[str, torch.Tensor]:
    """A stable-audio-tools Oobleck VAE state dict -> diffusers AutoencoderOobleck's, as diffusers'
    scripts/convert_stable_audio.py maps it: `layers.0` -> conv1, blocks 1..stages -> block.0.., then snake1
    and conv2; in a block, residual units -> res_unit1..3 and the block's snake and (transposed) conv; in a
    residual unit, snake, conv, snake, conv -> snake1, conv1, snake2, conv2; snake parameters (c,) -> (1, c, 1)."""
    encoder_block = {0: "res_unit1", 1: "res_unit2", 2: "res_unit3", 3: "snake1", 4: "conv1"}
    decoder_block = {0: "snake1", 1: "conv_t1", 2: "res_unit1", 3: "res_unit2", 4: "res_unit3"}
    unit = {0: "snake1", 1: "conv1", 2: "snake2", 3: "conv2"}
    out = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        side, _, rest = key[len(prefix):].partition(".layers.")
        idx, _, rest = rest.partition(".")
        idx = int(idx)
        if idx == 0:
            new = f"{side}.conv1.{rest}"
        elif idx == stages + 1:
            new = f"{side}.snake1.{rest}"
        elif idx == stages + 2:
            new = f"{side}.conv2.{rest}"
        else:
            m = re.match(r"layers\.(\d+)\.(.*)", rest)
            name = (encoder_block if side == "encoder" else decoder_block)[int(m.group(1))]
            tail = m.group(2)
            if name.startswith("res_unit"):
                u = re.match(r"layers\.(\d+)\.(.*)", tail)
                tail = f"{unit[int(u.group(1))]}.{u.group(2)}"
            new = f"{side}.block.{idx - 1}.{name}.{tail}"
        if new.rsplit(".", 1)[-1] in ("alpha", "beta"):  # snake
            value = value.reshape(1, -1, 1)
        if new in out:
            raise ValueError(f"VAE key {new} mapped twice")
        out[new] = value
    if not out:
        raise ValueError(f"no '{prefix}*' tensors: not a stable-audio-tools autoencoder checkpoint")
    return out


def vae_config(converted: dict[str, torch.Tensor], stages: int, sampling_rate: int = 24000) -> dict:
    """AutoencoderOobleck's arguments, read from the converted tensors (EzAudio's ckpts/vae/config.json: 24 kHz
    mono, channels 128, c_mults 1/2/4/8, strides 2/4/6/10, 128 latent channels)."""
    hidden = converted["encoder.conv1.bias"].shape[0]
    blocks = [converted[f"encoder.block.{i}.conv1.weight_v"] for i in range(stages)]  # (out, in, 2·stride)
    return {"encoder_hidden_size": hidden, "downsampling_ratios": [w.shape[-1] // 2 for w in blocks],
            "decoder_channels": converted["decoder.conv2.weight_v"].shape[1],
            "decoder_input_channels": converted["decoder.conv1.weight_v"].shape[1],
            "encoder_output_channels": converted["encoder.conv2.weight_v"].shape[0],  # 2 x latent (mean, scale)
            "audio_channels": converted["encoder.conv1.weight_v"].shape[1],
            "channel_multiples": [w.shape[0] // hidden for w in blocks], "sampling_rate": sampling_rate}


def load_vae(converted: dict[str, torch.Tensor], config: dict, name: str):
    """The codec class with the converted tensors; a tensor of another shape is one line naming it."""
    from .codec import oobleck_class

    autoencoder = oobleck_class()(**config)
    expected = autoencoder.state_dict()
    for key, value in converted.items():
        if key in expected and expected[key].shape != value.shape:
            raise ValueError(f"{name}: {key} is {tuple(value.shape)}, an Oobleck VAE of this config "
                             f"({config}) has {tuple(expected[key].shape)}; not a stable-audio-tools Oobleck VAE "
                             "as EzAudio's ckpts/vae/1m.pt")
    missing, unexpected = autoencoder.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise ValueError(f"{name}: not an Oobleck VAE as EzAudio's: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return autoencoder


def _fetch(ref: str, size: str) -> Path:
    """A local file, or EzAudio's file from the Hub (`OpenSound/EzAudio` or any repo:path)."""
    if Path(ref).is_file():
        return Path(ref)
    from huggingface_hub import hf_hub_download

    repo, _, path = ref.partition(":")
    try:
        return Path(hf_hub_download(repo, path or HUB_FILES[size]))
    except Exception as e:  # offline, missing file, bad id: one line that says what to do
        raise FileNotFoundError(f"{ref}: not a local file and not downloadable ({type(e).__name__}); pass the "
                                f"downloaded file (hf download {HUB_REPO} {HUB_FILES[size]})") from None


# EzAudio's sizes as its ckpts/ezaudio-{l,xl}.yml build them: DiT width and Flan-T5 width (d_model)
SIZES = {"l": {"width": 1024, "text_dim": 1024}, "xl": {"width": 1152, "text_dim": 2048}}
TEXT_WIDTHS = {"google/flan-t5-large": 1024, "google/flan-t5-xl": 2048}  # d_model, for hub ids not at hand


def infer_size(model: EzAudioDiT, asked: str | None, name: str) -> str:
    """L or XL from the DiT's tensors (width, text width); a --size that disagrees is one line."""
    c = model.config
    found = next((k for k, v in SIZES.items() if v == {"width": c.width, "text_dim": c.text_dim}), None)
    if asked is not None and found is not None and asked != found:
        raise ValueError(f"{name}: --size {asked}, but its tensors are EzAudio-{found.upper()}'s (width {c.width}, "
                         f"text width {c.text_dim}); drop --size or pass the {asked.upper()} checkpoint")
    return found or asked or "l"


def text_encoder_ref(ref: str | None, model: EzAudioDiT, size: str) -> str:
    """The text encoder a bundle names: `ref` (a local folder made absolute) or EzAudio's own; its width must be
    the DiT's text width (a Flan-T5-large for an XL DiT would fail in the first matmul of generation)."""
    ref = ref or TEXT_ENCODERS[size]
    if Path(ref).exists():
        ref = str(Path(ref).resolve())
        config = Path(ref) / "config.json"
        width = json.loads(config.read_text()).get("d_model") if config.is_file() else None
    else:
        width = TEXT_WIDTHS.get(ref)
    if width is not None and width != model.config.text_dim:
        raise ValueError(f"--text-encoder {ref}: width {width}, but the DiT takes text of width "
                         f"{model.config.text_dim} ({TEXT_ENCODERS.get(size)} for EzAudio-{size.upper()})")
    return ref


def provenance(ref: str, path: Path) -> dict:
    """What an import read: the hub reference or the local file's name (a bundle never records a local path),
    the file's sha256, and the hub revision when downloaded."""
    from shards.validate import sha256_file

    entry = {"ref": Path(ref).name if Path(ref).exists() else ref, "sha256": sha256_file(path)}
    if "/snapshots/" in path.as_posix():  # a hub cache path: .../models--OWNER--NAME/snapshots/REVISION/...
        entry["revision"] = path.as_posix().split("/snapshots/")[1].split("/")[0]
    return entry


def import_ezaudio(dit: str | Path, vae: str | Path, out: str | Path, size: str | None = None,
                   text_encoder: str | None = None) -> Path:
    """Write a T2A bundle (objective v-ddpm) from EzAudio's DiT and VAE checkpoints; returns OUT. The size (L or
    XL) is read from the DiT's tensors (`size` only picks the hub file to download, and must agree); the text
    encoder is Flan-T5-large (L) or -XL (XL) unless `text_encoder` names another of the same width."""
    from shards.outputs import check_output_dir, staged_dir

    from .codec import CodecConfig
    from .objective import Objective
    from .pipeline import BUNDLE_FORMAT, SamplerDefaults, TextEncoderRef, write_bundle

    if size is not None and size not in TEXT_ENCODERS:
        raise ValueError(f"--size must be one of {sorted(TEXT_ENCODERS)}, got {size!r}")
    check_output_dir(out, BUNDLE_FORMAT, "-o")  # before anything is read: a download folder is never replaced
    dit_path = _fetch(str(dit), size or "l")
    model = load_dit(load_checkpoint(dit_path, "model"))
    size = infer_size(model, size, str(dit))
    text_ref = text_encoder_ref(text_encoder, model, size)
    vae_path = _fetch(str(vae), "vae")
    vae_state = load_checkpoint(vae_path, "state_dict")
    beside = vae_path.with_name("config.json")  # EzAudio keeps the VAE's config.json beside 1m.pt
    rate = json.loads(beside.read_text()).get("sample_rate", 24000) if beside.is_file() else 24000
    stages = max(int(k.split(".")[3]) for k in vae_state if k.startswith("autoencoder.encoder.layers.")) - 2
    converted = convert_vae(vae_state, stages=stages)
    autoencoder = load_vae(converted, vae_config(converted, stages, rate), str(vae))
    if autoencoder.config.decoder_input_channels != model.config.latent_channels:
        raise ValueError(f"{vae}: {autoencoder.config.decoder_input_channels} latent channels, the DiT has "
                         f"{model.config.latent_channels}: not the VAE this DiT was trained on")
    sampler = SamplerDefaults(steps=100, cfg=5.0, rescale=0.75, method="ddim", duration=10.0)
    info = {"imported_from": {"dit": provenance(str(dit), dit_path), "vae": provenance(str(vae), vae_path),
                              "size": size,
                              "text_encoder": "a local folder, copied into text_encoder/" if Path(text_ref).exists()
                              else text_ref},
            "license": LICENSE}
    with staged_dir(out, BUNDLE_FORMAT) as tmp:
        autoencoder.save_pretrained(tmp / "codec")
        write_bundle(tmp, model, CodecConfig("codec", sample_posterior=True), TextEncoderRef(text_ref),
                     sampler, "sft", info, Objective("v-ddpm", EZAUDIO_SCHEDULER))
        (tmp / "README.md").write_text(card(size, model, text_ref))
    return Path(out)


CODEC_NOTE = "diffusers' AutoencoderOobleck with its own encoder output width, capflow's codec class"
LICENSE = ("EzAudio's code: MIT (github.com/haidog-yaqub/EzAudio); its weights: the terms of the Hugging Face "
           f"repo {HUB_REPO} as published there")
CITATION = ("Jiarui Hai, Yong Xu, Hao Zhang, Chenxing Li, Helin Wang, Mounya Elhilali, Dong Yu. EzAudio: Enhancing "
            "Text-to-Audio Generation with Efficient Diffusion Transformer. arXiv:2409.10819, 2024")


def card(size: str, model: EzAudioDiT, text_ref: str) -> str:
    params = sum(p.numel() for p in model.parameters())
    text = text_ref if not Path(text_ref).is_absolute() else f"a local text encoder of width {model.config.text_dim}"
    return "\n".join([
        "---", "library_name: capflow", f"base_model: {HUB_REPO}", "tags: [audio, text-to-audio, ezaudio-dit]", "---", "",
        f"# EzAudio-{size.upper()} as a capflow bundle", "",
        f"EzAudio's public weights ({HUB_REPO}, github.com/haidog-yaqub/EzAudio), imported by `capflow import "
        f"ezaudio`: the MaskDiT ({params / 1e6:.0f} M parameters) with the same weights, EzAudio's Oobleck VAE "
        f"({CODEC_NOTE}, 24 kHz mono), text through {text}. Objective: v-prediction DDPM, sampled "
        "with 100 DDIM steps (eta 1), CFG 5, rescale 0.75, as EzAudio's own inference. The sha256 of each imported "
        "file is in `capflow.json` (`info.imported_from`).", "",
        f"License: {LICENSE}. capflow adds no rights.", "",
        f"Cite: {CITATION}.", "",
        "```", 'capflow generate --checkpoint THIS_DIR "a dog barks while rain falls" -o dog.wav', "```", ""])
