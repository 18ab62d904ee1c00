"""EzAudio-DiT building blocks: rotary attention with q/k LayerNorm, GEGLU MLP, AdaLN variants, the block.

Shape legend: b batch, n latent frames, l text tokens, d width, h heads, k head width (d / h).
Pure torch: importable without transformers/diffusers (the GPU benchmark machine has torch only).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


@torch.compiler.disable
def rotary_tables(n: int, head_dim: int, device, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of rotary position embedding (RoFormer), shared by every block: (n, k/2) each.
    Always float32: in bf16 the angles of late frames round visibly (9e-3 at 500 frames); EzAudio keeps
    its tables in fp32 too. Computed outside torch.compile's graph, which then reads them: traced, inductor
    recomputes pow/cos/sin inside every rotary kernel (15 % of a compiled dit-l training step on an H100)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(n, device=device, dtype=torch.float32), inv_freq)  # (n, k/2)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., :k/2], x[..., k/2:]) of x (b, h, n, k) by the position angles, in float32
    (fp32 tables), returned in x's dtype."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


class Attention(nn.Module):
    """Multi-head attention via scaled_dot_product_attention; self (with RoPE) or cross (to `context`)."""

    def __init__(self, dim: int, num_heads: int, cross: bool = False):
        super().__init__()
        assert dim % num_heads == 0, "width must be divisible by the number of heads"
        self.num_heads, self.head_dim, self.cross = num_heads, dim // num_heads, cross
        if cross:
            self.q = nn.Linear(dim, dim, bias=False)
            self.kv = nn.Linear(dim, 2 * dim, bias=False)
        else:
            self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        # LayerNorm on queries and keys per head keeps attention logits bounded (EzAudio qk_norm).
        self.q_norm = nn.LayerNorm(self.head_dim)
        self.k_norm = nn.LayerNorm(self.head_dim)
        self.proj = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (b, h, n, k)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        if self.cross:
            q = self._heads(self.q(x))
            k, v = (self._heads(t) for t in self.kv(context).chunk(2, dim=-1))  # (b, h, l, k)
        else:
            q, k, v = (self._heads(t) for t in self.qkv(x).chunk(3, dim=-1))  # (b, h, n, k)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        attn_mask = None if context_mask is None else context_mask[:, None, None, :]  # (b, 1, 1, l)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (b, h, n, k)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))  # (b, n, d)


class GEGLU(nn.Module):
    """Feed-forward with a GELU-gated linear unit: d -> 2·(mult·d) -> d (Shazeer 2020; EzAudio act_layer)."""

    def __init__(self, dim: int, mult: float = 4.0):
        super().__init__()
        inner = int(dim * mult)
        self.proj_in = nn.Linear(dim, 2 * inner)
        self.proj_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj_in(x).chunk(2, dim=-1)
        return self.proj_out(h * F.gelu(gate))


ADALN_MODES = ("sola", "full", "single")


class AdaLN(nn.Module):
    """Per-block modulation (shift/scale/gate for attention and MLP) from the time embedding.

    sola:   shared(t) + up(down(t)) + table   (low-rank per-block adjustment; EzAudio §2.1)
    single: shared(t) + table                 (PixArt-α AdaLN-single)
    full:   Linear_block(t)                   (DiT's per-block AdaLN)
    `shared` is one Linear(d→6d) owned by the model and passed in already applied.
    """

    def __init__(self, dim: int, mode: str, rank: int = 32, alpha: float | None = None):
        super().__init__()
        if mode not in ADALN_MODES:
            raise ValueError(f"unknown AdaLN mode {mode!r}; valid: {ADALN_MODES}")
        self.mode = mode
        if mode == "full":
            self.linear = nn.Linear(dim, 6 * dim)
        else:
            self.table = nn.Parameter(torch.zeros(6, dim))
        if mode == "sola":
            self.down = nn.Linear(dim, 6 * rank, bias=False)
            self.up = nn.Linear(6 * rank, 6 * dim, bias=False)
            self.scaling = (alpha or rank) / rank
        self.reset_modulation()

    def reset_modulation(self) -> None:
        """Start with zero modulation, so every block begins as a plain pre-LN block (DiT, PixArt-α)."""
        if self.mode == "full":
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)
        if self.mode == "sola":
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
            nn.init.zeros_(self.up.weight)  # LoRA-style: the per-block adjustment starts at zero

    def forward(self, temb: torch.Tensor, shared: torch.Tensor | None) -> torch.Tensor:
        """temb: activated time embedding (b, d); shared: shared(temb) (b, 6d) or None. Returns (b, 6, d)."""
        b = temb.shape[0]
        if self.mode == "full":
            return self.linear(temb).view(b, 6, -1)
        mod = shared
        if self.mode == "sola":
            mod = mod + self.up(self.down(temb)) * self.scaling
        return mod.view(b, 6, -1) + self.table  # (b, 6, d)


def xavier_init(module: nn.Module) -> None:
    """DiT's initialisation of linear layers (xavier-uniform weights, zero bias)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """Pre-LN transformer block: self-attention (RoPE), optional cross-attention to text, GEGLU MLP;
    residual branches modulated by shift/scale and gated by (1 − gate); optional long-skip fusion."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, adaln: str, rank: int, alpha: float | None,
                 text: bool, skip: bool):
        super().__init__()
        self.skip_norm = nn.LayerNorm(2 * dim) if skip else None
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = GEGLU(dim, mlp_ratio)
        self.adaln = AdaLN(dim, adaln, rank, alpha)
        self.cross_attn = None
        if text:
            self.add_cross_attention()

    def add_cross_attention(self) -> None:
        """Add text cross-attention whose output projection is zero, so the block's output is unchanged."""
        dim, heads = self.norm1.normalized_shape[0], self.attn.num_heads
        device = self.norm1.weight.device
        self.norm2 = nn.LayerNorm(dim, device=device)
        self.norm_context = nn.LayerNorm(dim, device=device)
        self.cross_attn = Attention(dim, heads, cross=True).to(device)
        self.cross_attn.apply(xavier_init)
        nn.init.zeros_(self.cross_attn.proj.weight)
        nn.init.zeros_(self.cross_attn.proj.bias)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, shared: torch.Tensor | None,
                rope: tuple[torch.Tensor, torch.Tensor], skip: torch.Tensor | None = None,
                text: torch.Tensor | None = None, text_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(self.skip_norm(torch.cat([x, skip], dim=-1)))  # (b, n, 2d) -> (b, n, d)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaln(temb, shared).unbind(dim=1)  # (b, d) each
        x = x + (1 - gate_a[:, None]) * self.attn(modulate(self.norm1(x), shift_a, scale_a), rope=rope)
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.norm2(x), context=self.norm_context(text), context_mask=text_mask)
        return x + (1 - gate_m[:, None]) * self.mlp(modulate(self.norm3(x), shift_m, scale_m))
