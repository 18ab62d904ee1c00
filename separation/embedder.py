"""CLAP text and audio embeddings for separation: the query's text, and the target's or the mixture's audio
(frozen, unit norm), through the captioner's CLAP scorer (transformers' ClapModel)."""

from __future__ import annotations

import torch

from shards import audio


class Embedder:
    def __init__(self, ref: str, device):
        from captioner.clap import ClapConfig, ClapScorer

        self.scorer = ClapScorer(ClapConfig(model=ref, device=str(device)))

    @property
    def dim(self) -> int:
        return int(self.scorer.model.config.projection_dim)

    def texts(self, texts: list[str]) -> torch.Tensor:
        return self.scorer.embed_texts(texts)

    def audio(self, waves: torch.Tensor, rate: int) -> torch.Tensor:
        """(b, s) mono waves at `rate` -> (b, e), the batch in one CLAP forward."""
        clips = [audio.resample(audio.Audio(w[None], rate), self.scorer.sample_rate).samples[0]
                 for w in waves.detach().float().cpu().numpy()]
        return self.scorer.embed_audios(clips)
