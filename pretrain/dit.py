"""EzAudio-DiT: a flow-matching Diffusion Transformer over audio-VAE latents (EzAudio §2.1, DESIGN.md).

Shape legend: b batch, c latent channels, n latent frames, l text tokens, e text-encoder width, d width.

Input per frame: concat(noisy latent x_t, clean context with masked frames replaced by a learned mask
embedding, mask channel[, the editor's source latent]) -> Conv1d(k=1) to d. U-ViT long skips join in-block i with out-block (L-1-i).
The module is pure torch: no loss, no downloads, no global flags. `save_pretrained`/`from_pretrained`
read and write config.json + model.safetensors.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import ADALN_MODES, DiTBlock, modulate, rotary_tables, xavier_init

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


@dataclass
class DiTConfig:
    latent_channels: int = 128
    width: int = 1024
    depth: int = 12  # blocks on each side of the middle block: 2·depth + 1 blocks in all
    num_heads: int = 16
    mlp_ratio: float = 4.0
    adaln: str = "sola"
    sola_rank: int = 32
    sola_alpha: float | None = None  # LoRA scaling alpha/rank; None means 1
    text_dim: int | None = 1024  # None: no text modules (stage "mask")
    long_skip: bool = True
    time_freq_dim: int = 256
    source_channels: int = 0  # the instruction editor's source-latent input (RFM-Editing); 0: text-to-audio
    gradient_checkpointing: bool = False

    def __post_init__(self):
        if self.adaln not in ADALN_MODES:
            raise ValueError(f"adaln must be one of {ADALN_MODES}, got {self.adaln!r}")
        if self.width % self.num_heads or (self.width // self.num_heads) % 2:
            raise ValueError(f"width {self.width} must split into {self.num_heads} heads of even width")


# EzAudio §3.1: DiT-L 24(+1) blocks at 1024, rank 32, Flan-T5-large; DiT-XL 28(+1) at 1152, rank 36, Flan-T5-XL.
PRESETS = {
    "tiny": DiTConfig(latent_channels=8, width=64, depth=2, num_heads=4, sola_rank=4, text_dim=32),
    "small": DiTConfig(latent_channels=64, width=384, depth=4, num_heads=6, sola_rank=16, text_dim=512),
    "dit-l": DiTConfig(latent_channels=128, width=1024, depth=12, num_heads=16, sola_rank=32, text_dim=1024),
    "dit-xl": DiTConfig(latent_channels=128, width=1152, depth=14, num_heads=16, sola_rank=36, text_dim=2048),
}


def preset(name: str, **overrides) -> DiTConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown DiT preset {name!r}; valid: {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of t ∈ [0, 1] (scaled by 1000 so the frequencies match the DiT recipe): (b, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class EzAudioDiT(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = cfg = config
        d, c = cfg.width, cfg.latent_channels
        self.mask_embed = nn.Parameter(torch.zeros(c))
        self.proj_in = nn.Conv1d(2 * c + 1 + cfg.source_channels, d, kernel_size=1)
        self.time_embed = nn.Sequential(nn.Linear(cfg.time_freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_act = nn.SiLU()
        self.time_shared = nn.Linear(d, 6 * d) if cfg.adaln != "full" else None
        self.time_final = nn.Linear(d, 2 * d)
        block = dict(dim=d, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, adaln=cfg.adaln, rank=cfg.sola_rank,
                     alpha=cfg.sola_alpha, text=cfg.text_dim is not None)
        self.in_blocks = nn.ModuleList([DiTBlock(**block, skip=False) for _ in range(cfg.depth)])
        self.mid_block = DiTBlock(**block, skip=False)
        self.out_blocks = nn.ModuleList([DiTBlock(**block, skip=cfg.long_skip) for _ in range(cfg.depth)])
        self.norm_out = nn.LayerNorm(d)
        self.proj_out = nn.Linear(d, c)
        self.conv_out = nn.Conv1d(c, c, kernel_size=3, padding=1)
        self.text_proj = self._text_proj(cfg.text_dim) if cfg.text_dim is not None else None
        self._init_weights()

    def _text_proj(self, text_dim: int) -> nn.Module:
        d = self.config.width
        proj = nn.Sequential(nn.Linear(text_dim, d), nn.SiLU(), nn.Linear(d, d)).to(self.mask_embed.device)
        proj.apply(xavier_init)
        return proj

    def _init_weights(self) -> None:
        self.apply(xavier_init)
        nn.init.xavier_uniform_(self.proj_in.weight.view(self.proj_in.out_channels, -1))
        nn.init.zeros_(self.proj_in.bias)
        # Zero the time-conditioned modulation so every block starts as a plain pre-LN block (DiT, PixArt),
        # and the cross-attention outputs so adding text changes nothing at first (EzAudio §2.3).
        for blk in self.blocks():
            blk.adaln.reset_modulation()
            if blk.cross_attn is not None:
                nn.init.zeros_(blk.cross_attn.proj.weight)
                nn.init.zeros_(blk.cross_attn.proj.bias)
        for layer in (self.time_shared, self.time_final):
            if layer is not None:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    # ---- stages -------------------------------------------------------------------------------------
    @property
    def has_text(self) -> bool:
        return self.text_proj is not None

    def add_text_modules(self, text_dim: int) -> EzAudioDiT:
        """Stage mask -> align: add text projection and zero-initialised cross-attention in every block.
        The output is unchanged at this point (the cross-attention output projections are zero)."""
        if self.has_text:
            raise ValueError("the model already has text modules")
        self.config = dataclasses.replace(self.config, text_dim=text_dim)
        self.text_proj = self._text_proj(text_dim)
        for blk in self.blocks():
            blk.add_cross_attention()
        return self

    def add_source_input(self) -> EzAudioDiT:
        """Text-to-audio -> instruction editor: `latent_channels` more input channels for the source latent,
        with zero weights, so the output is unchanged at this point (RFM-Editing §2)."""
        if self.config.source_channels:
            raise ValueError("the model already takes a source latent")
        c = self.config.latent_channels
        old = self.proj_in
        new = nn.Conv1d(old.in_channels + c, old.out_channels, kernel_size=1).to(old.weight.device, old.weight.dtype)
        with torch.no_grad():
            new.weight.zero_()
            new.weight[:, : old.in_channels] = old.weight
            new.bias.copy_(old.bias)
        self.proj_in = new
        self.config = dataclasses.replace(self.config, source_channels=c)
        return self

    def blocks(self) -> list[DiTBlock]:
        return [*self.in_blocks, self.mid_block, *self.out_blocks]

    # ---- forward ------------------------------------------------------------------------------------
    def forward(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, text: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None, source: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity for x_t (b, c, n) at times t (b,).

        context: clean latents (b, c, n) whose frames with mask=True are hidden (replaced by the mask
        embedding); mask (b, n) bool, True = frame to generate. Both None: generate every frame.
        text (b, l, e) with text_mask (b, l) bool (True = real token), required iff the model has text.
        source (b, c, n): the editor's source latent (zeros when None: the "no source" branch of guidance).
        """
        b, c, n = x_t.shape
        dtype = self.proj_in.weight.dtype  # inputs follow the weights (DeepSpeed bf16 casts the module itself)
        x_t = x_t.to(dtype)
        if mask is None:
            mask = torch.ones(b, n, dtype=torch.bool, device=x_t.device)
        context = torch.zeros_like(x_t) if context is None else context.to(dtype)
        if self.has_text != (text is not None):
            raise ValueError("pass text embeddings exactly when the model has text modules "
                             f"(has_text={self.has_text})")
        t = t.expand(b) if t.dim() == 0 else t
        m = mask[:, None, :]  # (b, 1, n)
        ctx = torch.where(m, self.mask_embed.to(context.dtype)[None, :, None], context)  # (b, c, n)
        inputs = [x_t, ctx, m.to(x_t.dtype)]
        if self.config.source_channels:
            inputs.append(torch.zeros_like(x_t) if source is None else source.to(dtype))
        elif source is not None:
            raise ValueError("this model takes no source latent (a text-to-audio DiT); see add_source_input")
        h = self.proj_in(torch.cat(inputs, dim=1)).transpose(1, 2)  # (b, n, d)

        temb = self.time_act(self.time_embed(timestep_embedding(t, self.config.time_freq_dim).to(h.dtype)))  # (b, d)
        shared = self.time_shared(temb) if self.time_shared is not None else None  # (b, 6d)
        rope = rotary_tables(n, self.config.width // self.config.num_heads, h.device)
        if text is not None:
            text = self.text_proj(text.to(h.dtype))  # (b, l, d)

        skips = []
        for blk in self.in_blocks:
            h = self._run(blk, h, temb, shared, rope, None, text, text_mask)
            skips.append(h)
        h = self._run(self.mid_block, h, temb, shared, rope, None, text, text_mask)
        for blk in self.out_blocks:
            skip = skips.pop() if self.config.long_skip else None
            h = self._run(blk, h, temb, shared, rope, skip, text, text_mask)

        shift, scale = self.time_final(temb).chunk(2, dim=-1)  # (b, d) each
        h = self.proj_out(modulate(self.norm_out(h), shift, scale))  # (b, n, c)
        return self.conv_out(h.transpose(1, 2))  # (b, c, n)

    def _run(self, blk, h, temb, shared, rope, skip, text, text_mask):
        if self.config.gradient_checkpointing and self.training:
            return checkpoint(blk, h, temb, shared, rope, skip, text, text_mask, use_reentrant=False)
        return blk(h, temb, shared, rope, skip, text, text_mask)

    # ---- persistence --------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_NAME).write_text(json.dumps(dataclasses.asdict(self.config), indent=2) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, directory / WEIGHTS_NAME, metadata={"format": "pt"})
        return directory

    @staticmethod
    def saved_weights(directory: str | Path) -> dict[str, torch.Tensor]:
        """What save_pretrained wrote to `directory`, by this module's state-dict names (for a trainer's resume)."""
        from safetensors.torch import load_file

        return load_file(Path(directory) / WEIGHTS_NAME)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **config_overrides) -> EzAudioDiT:
        """Load from a local directory or a Hugging Face hub id (config.json + model.safetensors)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / CONFIG_NAME).is_file():
            from huggingface_hub import snapshot_download

            directory = Path(snapshot_download(str(directory), allow_patterns=[CONFIG_NAME, WEIGHTS_NAME]))
        config = DiTConfig(**{**json.loads((directory / CONFIG_NAME).read_text()), **config_overrides})
        with torch.device("meta"):  # no initialisation of weights that are overwritten right away
            model = cls(config)
        model.load_state_dict(load_file(directory / WEIGHTS_NAME), assign=True)  # strict: every tensor present
        return model
