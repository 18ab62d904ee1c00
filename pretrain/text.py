"""Text encoder: the Flan-T5 encoder through transformers, padded to a fixed token count with its mask.

The null caption (classifier-free guidance's unconditional input) is the encoded empty string, the same
at training and at inference (DESIGN.md).
Shape legend: b batch, l tokens (max_length), e encoder width.
"""

from __future__ import annotations

import torch
from torch import nn

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TextEncoder(nn.Module):
    def __init__(self, pretrained: str, max_length: int = 100, dtype: str = "float32", freeze: bool = True):
        """pretrained: a hub id (google/flan-t5-large) or a local directory in save_pretrained layout."""
        super().__init__()
        from transformers import AutoTokenizer, T5EncoderModel

        if dtype not in DTYPES:
            raise ValueError(f"text encoder dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.pretrained, self.max_length = pretrained, max_length
        self.tokenizer = AutoTokenizer.from_pretrained(pretrained)
        self.model = T5EncoderModel.from_pretrained(pretrained, dtype=DTYPES[dtype])
        self.frozen = freeze
        if freeze:  # a frozen encoder: no gradients, eval mode (no dropout)
            self.model.requires_grad_(False)
            self.model.eval()

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode captions: hidden states (b, l, e) in float32 and the token mask (b, l), True = real token."""
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(list(texts), padding="max_length", max_length=self.max_length, truncation=True,
                                return_tensors="pt").to(device)
        with torch.set_grad_enabled(not self.frozen and torch.is_grad_enabled()):
            hidden = self.model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        return hidden.float(), tokens.attention_mask.bool()

    def null(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The null caption (empty string) for a batch."""
        return self([""] * batch)
