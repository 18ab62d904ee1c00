"""EzAudio parity, in one run: EzAudio's own MaskDiT (built from a checkout of github.com/haidog-yaqub/EzAudio,
random weights, saved as EzAudio saves it: {'model': state_dict}) imported with `capflow import ezaudio`, and

- the largest difference between its output and the imported EzAudioDiT's on the same inputs (expected 0 up to
  float rounding: t·1000 of the timestep embedding);
- EzAudio's VAE built by EzAudio's own `load_vae` (src/modules/stable_vae, stable-audio-tools' Oobleck) from its
  own `ckpts/vae/config.json` (random weights, saved as EzAudio's 1m.pt), converted by capflow: the largest
  difference of the encoder's posterior mean and of the decode on the same input;
- the largest difference between EzAudio's own `inference()` loop (src/inference.py: DDIM, CFG with rescale)
  and capflow's v-DDPM sampler on the same noise, text embeddings and scheduler.

Needs einops (EzAudio's dependency). EzAudio's VAE code imports torchaudio, alias_free_torch,
vector_quantize_pytorch and audiotools at module level for parts the Oobleck VAE never calls (resampling, anti-aliased
activations, quantisers); where they are not installed, empty stand-ins take their place so the import runs.
CPU, batch 1; the default is EzAudio-L's DiT (dit-l) and EzAudio's full VAE.

    python benchmarks/ezaudio_parity.py --ezaudio-src PATH [--preset dit-l --frames 50 --steps 100]
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pretrain.dit import preset  # noqa: E402
from pretrain.ezaudio import EZAUDIO_SCHEDULER, load_checkpoint, load_dit  # noqa: E402
from pretrain.objective import Objective  # noqa: E402
from pretrain.sampler import guided_velocity  # noqa: E402


def build_maskdit(src: Path, c):
    sys.path.insert(0, str(src / "src"))
    MaskDiT = importlib.import_module("models.conditioners").MaskDiT
    return MaskDiT(mae=True, mae_prob=0.25, mask_ratio=[0.25, 1.0], mask_span=10, img_size=500, patch_size=1,
                   in_chans=2 * c.latent_channels + 1, out_chans=c.latent_channels, input_type="1d",
                   embed_dim=c.width, depth=2 * c.depth, num_heads=c.num_heads, mlp_ratio=c.mlp_ratio,
                   qkv_bias=False, qk_scale=None, qk_norm="layernorm", norm_layer="layernorm", act_layer="geglu",
                   context_norm=True, use_checkpoint=False, time_fusion="ada_sola_bias",
                   ada_sola_rank=c.sola_rank, ada_sola_alpha=c.sola_rank, cls_dim=None, context_dim=c.text_dim,
                   context_fusion="cross", context_max_length=None, context_pe_method="none", pe_method="none",
                   rope_mode="shared", use_conv=True, skip=True, skip_norm=True)


def build_vae(src: Path, directory: Path):
    """EzAudio's own VAE from its ckpts/vae/config.json, random weights saved as its 1m.pt and loaded back by its
    `load_vae` (strict)."""
    import json
    import types

    class StandIn(types.ModuleType):  # any attribute: a name imported, never called on the Oobleck path
        def __getattr__(self, attr):
            return None

    standins = []
    for name in ("torchaudio", "alias_free_torch", "vector_quantize_pytorch", "audiotools"):
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = StandIn(name)
            standins.append(name)
    sys.path.insert(0, str(src / "src"))
    stable_vae = importlib.import_module("modules.stable_vae")
    for name in standins:  # gone again: other packages probe for them
        del sys.modules[name]
    config = json.loads((src / "ckpts" / "vae" / "config.json").read_text())
    model = stable_vae.models.autoencoders.create_autoencoder_from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(0.5 + 0.5 * torch.rand_like(p) if name.endswith("weight_g") else 0.1 * torch.randn_like(p))
    (directory / "config.json").write_text(json.dumps(config))
    torch.save({"state_dict": {f"autoencoder.{k}": v for k, v in model.state_dict().items()}}, directory / "1m.pt")
    return stable_vae.load_vae(str(directory / "1m.pt")).eval()


def vae_parity(src: Path) -> None:
    from pretrain.ezaudio import convert_vae, vae_config
    from pretrain.ezaudio import load_vae as capflow_vae

    with tempfile.TemporaryDirectory() as tmp:
        theirs = build_vae(src, Path(tmp))
        state = torch.load(Path(tmp) / "1m.pt", weights_only=True)["state_dict"]
    converted = convert_vae(state)
    ours = capflow_vae(converted, vae_config(converted, 4), "1m.pt").eval()
    wave = 0.1 * torch.randn(1, 1, 480 * 50)  # 1 s at 24 kHz
    with torch.no_grad():
        mean_theirs = theirs.encoder(wave).chunk(2, dim=1)[0]
        mean_ours = ours.encode(wave).latent_dist.mean
        z = torch.randn(1, 128, 50)
        dec_theirs, dec_ours = theirs.decoder(z), ours.decode(z).sample
    print(f"EzAudio's VAE ({sum(p.numel() for p in theirs.parameters()) / 1e6:.1f} M parameters, its config.json) vs "
          f"capflow's converted codec: encode mean max |diff| {float((mean_theirs - mean_ours).abs().max()):.2e} "
          f"(scale {float(mean_theirs.abs().max()):.2f}), decode max |diff| "
          f"{float((dec_theirs - dec_ours).abs().max()):.2e} (scale {float(dec_theirs.abs().max()):.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ezaudio-src", type=Path, required=True, help="a checkout of EzAudio's repository")
    parser.add_argument("--preset", default="dit-l")
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--steps", type=int, default=100, help="DDIM steps (EzAudio: 100; below 50 its float32 "
                        "schedule turns the first step NaN at eta 1, which capflow's float64 schedule avoids)")
    args = parser.parse_args()
    c = preset(args.preset)
    torch.manual_seed(0)
    vae_parity(args.ezaudio_src.resolve())
    theirs = build_maskdit(args.ezaudio_src.resolve(), c).eval()
    with torch.no_grad():
        for p in theirs.parameters():  # random everywhere (EzAudio zero-initialises some layers)
            p.normal_(0, 0.05)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ezaudio.pt"
        torch.save({"model": theirs.state_dict()}, path)
        ours = load_dit(load_checkpoint(path, "model")).eval()
    b, n, text_len = 2, args.frames, 12
    x = torch.randn(b, c.latent_channels, n)
    text = torch.randn(b, text_len, c.text_dim)
    text_mask = torch.ones(b, text_len, dtype=torch.bool)
    text_mask[1, 7:] = False
    steps = torch.tensor([999, 421])
    with torch.no_grad():
        ref, _ = theirs(x, steps, text, context_mask=text_mask)
        out = ours(x, steps / 1000, text=text, text_mask=text_mask)
    print(f"MaskDiT ({args.preset}, {sum(p.numel() for p in ours.parameters()) / 1e6:.1f} M parameters) vs the "
          f"imported EzAudioDiT: max |diff| {float((ref - out).abs().max()):.2e} (output scale {float(ref.abs().max()):.2f})")

    # EzAudio's inference() loop (src/inference.py), run on its model, against capflow's sampler on ours
    from diffusers import DDIMScheduler

    sys.path.insert(0, str(args.ezaudio_src.resolve()))
    inference = importlib.import_module("src.inference").rescale_noise_cfg
    cond, uncond = text[:1], torch.randn(1, text_len, c.text_dim)
    mask = torch.ones(1, text_len, dtype=torch.bool)
    scheduler = DDIMScheduler(**EZAUDIO_SCHEDULER)
    scheduler.set_timesteps(args.steps)
    generator = torch.Generator().manual_seed(2024)
    latents = torch.randn(1, c.latent_channels, n, generator=generator)
    noise = latents.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            both, _ = theirs(torch.cat([latents, latents]), t, torch.cat([cond, uncond]), context_mask=torch.cat([mask, mask]))
            pos, neg = both.chunk(2)
            pred = inference(neg + 5.0 * (pos - neg), pos, guidance_rescale=0.75)
            latents = scheduler.step(model_output=pred, timestep=t, sample=latents, eta=1.0, generator=generator).prev_sample
        generator = torch.Generator().manual_seed(2024)
        torch.randn(1, c.latent_channels, n, generator=generator)  # the same draws as above: noise, then eta noise
        velocity = guided_velocity(ours, text=cond, text_mask=mask, neg_text=uncond, neg_mask=mask, scale=5.0, rescale=0.75)
        mine = Objective("v-ddpm", EZAUDIO_SCHEDULER).sample(velocity, noise, args.steps, eta=1.0, generator=generator)
    print(f"EzAudio inference() vs capflow Objective.sample, {args.steps} DDIM steps, CFG 5, rescale 0.75, eta 1: "
          f"max |diff| {float((latents - mine).abs().max()):.2e} (latent scale {float(latents.abs().max()):.2f})")


if __name__ == "__main__":
    main()
