"""Hybrid-Sep stage 1: the query model. The CLAP text embedding of the query, the mixture's CLAP audio embedding
(its semantic features, §2.1) and frame-wise features of the mixture (its acoustic features: the feature
extractor FE, log-magnitude STFT -> 3 transformer layers) go through the audio embedding transformer (AET) as
one token sequence [text, mixture embedding, frames...] and come out, read at the text token, as a prediction
of the target's CLAP audio embedding (unit norm). `mixture_embedding: false` is the ablation without the
mixture's CLAP embedding (text and frames only).
Shape legend: b batch, t frames, d width, e CLAP embedding width.

Table 1 gives "Dim 512" for both FE and AET; with 32 layers that is ~101 M parameters, not the 415 M the paper
states. The `paper` preset keeps the stated sizes (FE ≈ 40 M, AET ≈ 415 M), which need width 1024 (see
`capflow model-info --preset sep-paper`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .weights import Pretrained


@dataclass
class QueryConfig:
    sample_rate: int = 16000
    n_fft: int = 512
    hop: int = 256
    fe_dim: int = 64
    fe_layers: int = 3
    dim: int = 64
    layers: int = 4  # paper: 32
    heads: int = 4
    embed_dim: int = 512  # CLAP's
    mixture_embedding: bool = True  # §2.1: the mixture's CLAP audio embedding is an AET input (False: ablation)


PRESETS = {
    "tiny": QueryConfig(),
    "paper": QueryConfig(sample_rate=44100, n_fft=2048, hop=1024, fe_dim=1024, fe_layers=3, dim=1024, layers=32,
                         heads=16),
}


def preset(name: str, **overrides) -> QueryConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown query-model preset {name!r}; valid: {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


def _encoder(dim: int, heads: int, layers: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class QueryModel(Pretrained, nn.Module):
    """Stage 1: (text embedding, mixture) -> the target's CLAP audio embedding."""

    config_class = QueryConfig

    def __init__(self, cfg: QueryConfig):
        super().__init__()
        self.config = cfg
        bins = cfg.n_fft // 2 + 1
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)
        self.fe_in = nn.Linear(bins, cfg.fe_dim)
        self.fe = _encoder(cfg.fe_dim, max(1, min(cfg.heads, cfg.fe_dim // 16)), cfg.fe_layers)
        self.frames_in = nn.Linear(cfg.fe_dim, cfg.dim)
        self.text_in = nn.Linear(cfg.embed_dim, cfg.dim)
        self.mixture_in = nn.Linear(cfg.embed_dim, cfg.dim) if cfg.mixture_embedding else None
        self.aet = _encoder(cfg.dim, cfg.heads, cfg.layers)
        self.norm = nn.LayerNorm(cfg.dim)
        self.out = nn.Linear(cfg.dim, cfg.embed_dim)

    def features(self, mixture: torch.Tensor) -> torch.Tensor:
        """FE: (b, s) -> (b, t, fe_dim)."""
        spec = torch.stft(mixture, self.config.n_fft, self.config.hop, window=self.window, return_complex=True).abs()
        return self.fe(self.fe_in(torch.log1p(spec).transpose(1, 2)))

    def forward(self, text_emb: torch.Tensor, mixture: torch.Tensor, mixture_emb: torch.Tensor | None = None) -> torch.Tensor:
        """(b, e) text embedding, (b, s) mixture, (b, e) the mixture's CLAP audio embedding (with
        mixture_embedding) -> (b, e) predicted target audio embedding (unit norm)."""
        tokens = [self.text_in(text_emb)[:, None]]
        if self.mixture_in is not None:
            if mixture_emb is None:
                raise ValueError("this query model takes the mixture's CLAP audio embedding (mixture_emb)")
            tokens.append(self.mixture_in(mixture_emb)[:, None])
        tokens = torch.cat([*tokens, self.frames_in(self.features(mixture))], dim=1)
        h = self.aet(tokens)[:, 0]
        return F.normalize(self.out(self.norm(h)), dim=-1)


def parameter_counts(name: str) -> dict[str, float]:
    """Millions of parameters of a preset's FE and AET (built on the meta device)."""
    with torch.device("meta"):
        m = QueryModel(preset(name))
    fe = sum(p.numel() for n, p in m.named_parameters() if n.startswith(("fe", "fe_in")))
    return {"fe": fe / 1e6, "aet": (sum(p.numel() for p in m.parameters()) - fe) / 1e6}
