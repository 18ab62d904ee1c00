"""Validation during training: generate the validation prompts with CFG, score them with CLAP against
their prompts, save the audio and spectrogram PNGs under OUTPUT/validation/step-N/."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import torch

from shards import audio

from .codec import AudioCodec, CodecConfig
from .objective import FLOW, Objective
from .pipeline import TextToAudio

log = logging.getLogger(__name__)


def save_spectrogram(wave: np.ndarray, sample_rate: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = torch.from_numpy(wave.astype(np.float32))
    spec = torch.stft(x, 1024, 256, window=torch.hann_window(1024), return_complex=True).abs()
    db = 20 * torch.log10(spec.clamp_min(1e-5))
    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    ax.imshow(db.numpy(), origin="lower", aspect="auto", cmap="magma",
              extent=[0, len(wave) / sample_rate, 0, sample_rate / 2000], vmin=float(db.max()) - 80)
    ax.set_xlabel("s")
    ax.set_ylabel("kHz")
    ax.set_title(title[:60], fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


class Validator:
    def __init__(self, cfg, codec: CodecConfig, text_encoder, objective: Objective = FLOW):
        self.cfg = cfg.validation
        self.codec = AudioCodec(codec)
        self.text_encoder = text_encoder
        self.objective = objective
        self.clap = None
        if self.cfg.clap_model:  # the evaluation package's CLAP backbone: the same scores as `capflow evaluate`
            from evaluation.backbones import load_backbone

            self.clap = load_backbone("clap", self.cfg.clap_model, "cuda" if torch.cuda.is_available() else "cpu")

    @torch.no_grad()
    def run(self, model, step: int, directory: Path) -> float | None:
        device = next(model.parameters()).device
        self.codec.to(device)
        was_training = model.training
        model.eval()
        t2a = TextToAudio(model, self.codec, self.text_encoder, None, self.cfg.sampler, objective=self.objective)
        prompts = self.cfg.prompts if model.has_text else [""] * len(self.cfg.prompts)
        waves = t2a.generate(prompts, seed=self.cfg.seed).cpu().numpy()  # (b, a, s)
        model.train(was_training)
        out = directory / f"step-{step:06d}"
        out.mkdir(parents=True, exist_ok=True)
        scores = []
        for i, (prompt, wave) in enumerate(zip(self.cfg.prompts, waves)):
            name = f"{i:02d}_{re.sub(r'[^a-z0-9]+', '_', prompt.lower())[:40]}"
            audio.write(out / f"{name}.wav", audio.Audio(wave, self.codec.sample_rate))
            save_spectrogram(wave.mean(0), self.codec.sample_rate, out / f"{name}.png", prompt)
            if self.clap is not None and prompt:
                scores.append(self.clap.score(audio.Audio(wave, self.codec.sample_rate), prompt))
        score = float(np.mean(scores)) if scores else None
        log.info("validation at step %d: CLAP %s (%s)", step, "n/a" if score is None else f"{score:.3f}", out)
        return score
