"""CLAP scoring through transformers' ClapModel (laion/larger_clap_general by default), deterministic.

Audio: 48 kHz mono, exactly 10 s per window. A shorter clip is "repeatpad"-ed as LAION-CLAP was trained
(tiled a whole number of times, then zero-padded); a longer one is scored on three windows at fixed offsets
(start, middle, end) whose normalised embeddings are averaged, so the whole clip counts and nothing is
random (CLAP's "rand_trunc" would be). The log-mel is computed with torch.stft on the scorer's device,
equal to ClapFeatureExtractor's numpy path (tested) at a fraction of its CPU cost.
Text: truncated to 77 tokens, padded to 77, embedded in fixed-size micro-batches padded with empty
strings, so every forward has the same shapes and a score never depends on what it was batched with.
Score: cosine similarity of the normalised embeddings.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import torch

from shards.config import Strict

TEXT_TOKENS = 77  # the CLIP/CLAP text context


class ClapConfig(Strict):
    model: str = "laion/larger_clap_general"
    threshold: float = 0.40  # EzAudio §3.3 (AF-AudioSet used 0.35–0.45)
    top_k: int = 3  # captions kept per clip
    text_batch: int = 32
    device: str = "auto"


def clap_windows(wave: np.ndarray, window: int) -> np.ndarray:
    """(k, window) windows of a mono clip: repeatpad-ed when short, start/middle/end when long."""
    n = wave.shape[-1]
    if n <= window:
        tiled = np.tile(wave, window // n)
        return np.pad(tiled, (0, window - tiled.shape[0]))[None]
    starts = sorted({0, (n - window) // 2, n - window})
    return np.stack([wave[s: s + window] for s in starts])


class ClapScorer:
    def __init__(self, cfg: ClapConfig):
        from transformers import AutoFeatureExtractor, AutoTokenizer, ClapModel

        self.cfg = cfg
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
        self.model = ClapModel.from_pretrained(cfg.model).to(self.device).eval()
        self.features = AutoFeatureExtractor.from_pretrained(cfg.model)
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model)
        self.sample_rate = int(self.features.sampling_rate)
        self.window = int(self.features.nb_max_samples)
        self.mel_filters = torch.from_numpy(self.features.mel_filters_slaney).float().to(self.device)  # (freq, mels)
        self.timings: dict[str, float] = defaultdict(float)

    def log_mel(self, windows: np.ndarray) -> torch.Tensor:
        """(k, window) waveforms -> CLAP input features (k, 1, frames, mels): power STFT (periodic Hann,
        centred, reflect-padded) -> Slaney mel filters -> dB with a 1e-10 floor, as the extractor does."""
        fe = self.features
        x = torch.from_numpy(windows).to(self.device, torch.float32)
        window = torch.hann_window(fe.fft_window_size, device=self.device)
        spec = torch.stft(x, fe.fft_window_size, fe.hop_length, window=window, center=True, pad_mode="reflect",
                          return_complex=True).abs().pow(2)  # (k, freq, frames)
        mel = torch.clamp(self.mel_filters.T @ spec, min=1e-10)  # (k, mels, frames)
        return (10.0 * torch.log10(mel)).transpose(1, 2)[:, None]  # (k, 1, frames, mels)

    @torch.no_grad()
    def embed_audios(self, waves: list[np.ndarray]) -> torch.Tensor:
        """Normalised embeddings (b, d) for mono clips at self.sample_rate: every clip's windows in one batch,
        each clip the normalised mean of its windows' embeddings."""
        start = time.perf_counter()
        windows = [clap_windows(w.astype(np.float32), self.window) for w in waves]
        feats = self.log_mel(np.concatenate(windows))
        self.timings["clap_features"] += time.perf_counter() - start
        start = time.perf_counter()
        emb = torch.nn.functional.normalize(_embedding(self.model.get_audio_features(input_features=feats)), dim=-1)
        per_clip = torch.stack([e.mean(0) for e in emb.split([len(w) for w in windows])])
        self.timings["clap"] += time.perf_counter() - start
        return torch.nn.functional.normalize(per_clip, dim=-1)

    def embed_audio(self, wave: np.ndarray) -> torch.Tensor:
        """One normalised embedding (d,) for a mono clip at self.sample_rate."""
        return self.embed_audios([wave])[0]

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Normalised embeddings (m, d), in fixed-size padded micro-batches."""
        start = time.perf_counter()
        b, out = self.cfg.text_batch, []
        for i in range(0, len(texts), b):
            chunk = texts[i: i + b]
            tokens = self.tokenizer(chunk + [""] * (b - len(chunk)), padding="max_length", truncation=True,
                                    max_length=TEXT_TOKENS, return_tensors="pt").to(self.device)
            emb = _embedding(self.model.get_text_features(**tokens))
            out.append(torch.nn.functional.normalize(emb, dim=-1)[: len(chunk)])
        self.timings["clap"] += time.perf_counter() - start
        return torch.cat(out) if out else torch.zeros(0, self.model.config.projection_dim, device=self.device)

    def score(self, wave: np.ndarray, texts: list[str]) -> list[float]:
        """Cosine similarity of each text with the clip (audio embedded once, texts in one pass)."""
        if not texts:
            return []
        sims = self.embed_texts(texts) @ self.embed_audio(wave)
        return [round(float(s), 6) for s in sims.cpu()]


    def score_many(self, jobs: list[tuple[np.ndarray, list[str]]]) -> list[list[float] | str]:
        """score() for each (wave, texts) of a batch of clips; a clip whose scoring raises gets its error
        message instead of scores, so one bad clip does not fail the others (the worker makes it a
        `failed` row). Out-of-memory errors are not a clip's fault and propagate."""
        out: list[list[float] | str] = []
        for wave, texts in jobs:
            try:
                out.append(self.score(wave, texts))
            except (torch.cuda.OutOfMemoryError, MemoryError):
                raise
            except Exception as e:  # noqa: BLE001  (recorded in the clip's status row)
                out.append(f"clap: {type(e).__name__}: {e}")
        return out


def _embedding(out) -> torch.Tensor:
    """transformers 5 returns an output object (pooler_output); older versions a tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def keep_best(candidates: list[dict], threshold: float, top_k: int) -> list[str]:
    """Texts of the top_k candidates with clap >= threshold, best first (ties: first generated wins)."""
    ranked = sorted((c for c in candidates if c["clap"] >= threshold), key=lambda c: -c["clap"])
    return [c["text"] for c in ranked[:top_k]]
