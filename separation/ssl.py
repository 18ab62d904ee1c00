"""Frame-wise features of a pre-trained self-supervised audio encoder for the separator.

Hybrid-Sep uses BEATs, which transformers does not ship; any transformers audio encoder with a feature
extractor and `last_hidden_state` works here (HuBERT, wav2vec 2.0, WavLM, AST, …), loaded by hub id or local
directory, frozen. `none` turns the SSL branch off (the paper's "w/o SSL" ablation).
"""

from __future__ import annotations

import torch
from torch import nn

from shards import sinc


class SSLEncoder(nn.Module):
    def __init__(self, ref: str, device: str | torch.device = "cpu"):
        super().__init__()
        from transformers import AutoFeatureExtractor, AutoModel

        self.ref = ref
        self.extractor = AutoFeatureExtractor.from_pretrained(ref)
        self.model = AutoModel.from_pretrained(ref).to(device).eval().requires_grad_(False)
        self.sample_rate = int(self.extractor.sampling_rate)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def forward(self, waves: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """(b, s) mono at `sample_rate` -> (b, frames, dim). On the encoder's device, batched: resampled there
        (shards/sinc.py) and, for the wav2vec 2.0 family's extractor (wav2vec 2.0, HuBERT, WavLM), normalised
        there as that extractor does (zero mean, unit variance per clip); other extractors (e.g. AST's
        filterbanks) run on the CPU."""
        from transformers import Wav2Vec2FeatureExtractor

        device = next(self.model.parameters()).device
        waves = sinc.resample(waves.detach().to(device, torch.float32), sample_rate, self.sample_rate)
        if type(self.extractor) is Wav2Vec2FeatureExtractor:
            if self.extractor.do_normalize:
                waves = (waves - waves.mean(-1, keepdim=True)) / torch.sqrt(waves.var(-1, unbiased=False, keepdim=True) + 1e-7)
            return self.model(input_values=waves).last_hidden_state.float()
        inputs = self.extractor(list(waves.cpu().numpy()), sampling_rate=self.sample_rate, return_tensors="pt",
                                padding=True).to(device)
        return self.model(**inputs).last_hidden_state.float()


def load_ssl(ref: str | None, device: str | torch.device = "cpu") -> SSLEncoder | None:
    return None if not ref or ref == "none" else SSLEncoder(ref, device)


def write_tiny_ssl(directory, seed: int = 0):
    """A tiny random wav2vec 2.0 encoder in save_pretrained layout (16 kHz, 32-d frames every 20 ms)."""
    from pathlib import Path

    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(seed)
    cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         conv_dim=(32, 32, 32), conv_stride=(5, 4, 16), conv_kernel=(10, 8, 16),
                         num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, vocab_size=8)
    directory = Path(directory)
    Wav2Vec2Model(cfg).save_pretrained(directory)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=False).save_pretrained(directory)
    return directory
