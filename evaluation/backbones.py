"""Pinned backbones of the metrics, each loaded from a local directory (config.json + model.safetensors, as
`capflow tiny-models` writes them), a local checkpoint file (.safetensors, or .pth read with
`torch.load(weights_only=True)`), or a hub id (a repo holding config.json + model.safetensors).

- `panns-cnn14`: PANNs CNN14 (panns_inference's model class) at audioldm_eval's 16 kHz settings (window 512,
  hop 160, 64 mel, 50–8000 Hz, 527 classes; checkpoint Cnn14_16k_mAP=0.438.pth): 2048-d embeddings and
  clip-wise class probabilities, for FD, KL and IS.
- `vggish`: VGGish (torchvggish's model class) at 16 kHz without PCA and without the final ReLU, as fadtk and
  audioldm_eval use it, one 128-d embedding per 0.96-s example, for FAD.
- `clap`: the captioner's CLAP scorer (transformers ClapModel, deterministic windows), for CLAP scores.
- `passt`: needs torchaudio (hear21passt), which cannot be installed here: the slot says so.
Every backbone reports `describe()`: name, checkpoint, its sha256, sample rate and crop policy, for reports.
Shape legend: n clips, t samples, d embedding width, k classes.
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch

from shards import audio

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
# audioldm_eval's PANNs settings (16 kHz)
CNN14_16K = {"sample_rate": 16000, "window_size": 512, "hop_size": 160, "mel_bins": 64, "fmin": 50, "fmax": 8000,
             "classes_num": 527}


def _panns_models():
    """panns_inference.models, imported under a private package name: the package's own __init__ downloads
    the AudioSet label CSV with wget at import time, which an offline evaluation must not do."""
    name = "_capflow_panns_inference"
    if f"{name}.models" in sys.modules:
        return sys.modules[f"{name}.models"]
    spec = importlib.util.find_spec("panns_inference")
    if spec is None:
        raise ImportError("the panns-cnn14 backbone needs panns_inference: pip install panns_inference")
    package = types.ModuleType(name)
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules[name] = package
    return importlib.import_module(f"{name}.models")


def _resolve(ref: str | Path, patterns: list[str] | None = (CONFIG_NAME, WEIGHTS_NAME)) -> Path:
    path = Path(ref)
    if path.exists():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(ref), allow_patterns=list(patterns) if patterns else None))


def _state_dict(path: Path) -> dict:
    from safetensors.torch import load_file

    if path.is_dir():  # our layout, or an official checkpoint file placed in the folder
        if (path / WEIGHTS_NAME).is_file():
            return load_file(path / WEIGHTS_NAME)
        found = sorted(path.glob("*.pth")) + sorted(path.glob("*.pt"))
        if len(found) != 1:
            raise FileNotFoundError(f"{path}: expected {WEIGHTS_NAME} or exactly one .pth checkpoint")
        path = found[0]
    if path.suffix == ".safetensors":
        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("model", state)  # the official PANNs checkpoints nest the weights under "model"


def _sha256(path: Path) -> str:
    """sha256 of the weights file (in a directory: model.safetensors, or its one checkpoint file)."""
    from shards.validate import sha256_file

    if path.is_dir():
        weights = [path / WEIGHTS_NAME] if (path / WEIGHTS_NAME).is_file() else sorted(path.glob("*.pt*"))
        weights = weights or sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin"))
        if not weights:
            return ""
        path = weights[0]
    return sha256_file(path)


class Backbone:
    name: str
    sample_rate: int
    crop: str
    files: tuple[str, ...] | None = (CONFIG_NAME, WEIGHTS_NAME)  # what a hub snapshot needs (None: all)

    def __init__(self, ref: str | Path, device: str = "cpu"):
        self.path = _resolve(ref, self.files)
        self.ref, self.device = str(ref), device
        self.sha256 = _sha256(self.path)

    def describe(self) -> dict:
        return {"backbone": self.name, "checkpoint": self.ref, "sha256": self.sha256, "sample_rate": self.sample_rate,
                "crop": self.crop}

    def prepare(self, clip: audio.Audio) -> np.ndarray:
        return audio.resample(audio.to_mono(clip), self.sample_rate).samples[0]


class PannsCnn14(Backbone):
    name, sample_rate = "panns-cnn14", 16000
    crop = "whole clip (CNN14 pools over time), mono, 16 kHz"

    def __init__(self, ref, device="cpu"):
        super().__init__(ref, device)
        config = json.loads((self.path / CONFIG_NAME).read_text()) if (self.path / CONFIG_NAME).is_file() else CNN14_16K
        self.model = build_cnn14(config)
        self.model.load_state_dict(_state_dict(self.path))
        self.model.to(device).eval()

    @torch.no_grad()
    def __call__(self, waves: list[np.ndarray]) -> dict[str, np.ndarray]:
        """{"embedding": (n, 2048), "probs": (n, 527)} in input order; clips of one length run as one batch
        (eval mode: a clip's output does not depend on its batch)."""
        embedding, probs = [None] * len(waves), [None] * len(waves)
        order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
        for _, group in itertools.groupby(order, key=lambda i: len(waves[i])):
            idx = list(group)
            x = torch.as_tensor(np.stack([waves[i] for i in idx]), dtype=torch.float32, device=self.device)  # (b, t)
            result = self.model(x)
            for j, i in enumerate(idx):
                embedding[i] = result["embedding"][j].cpu().numpy()
                probs[i] = result["clipwise_output"][j].cpu().numpy()
        return {"embedding": np.stack(embedding), "probs": np.stack(probs)}


def build_cnn14(config: dict) -> torch.nn.Module:
    return _panns_models().Cnn14(**config)


class VGGish(Backbone):
    name, sample_rate = "vggish", 16000
    crop = "0.96-s examples (VGGish framing), one embedding each; no PCA, no final ReLU; mono, 16 kHz"

    def __init__(self, ref, device="cpu"):
        super().__init__(ref, device)
        self.model = build_vggish()
        self.model.load_state_dict(_state_dict(self.path))
        self.model.to(device).eval()

    @torch.no_grad()
    def __call__(self, waves: list[np.ndarray]) -> dict[str, np.ndarray]:
        """{"embedding": (examples, 128)}: FAD pools every 0.96-s example of every clip, as fadtk does."""
        from torchvggish import vggish_input

        frames = [vggish_input.waveform_to_examples(w, self.sample_rate, return_tensor=True) for w in waves]
        frames = [f for f in frames if len(f)]
        if not frames:
            return {"embedding": np.zeros((0, 128), np.float32)}
        x = torch.cat(frames).to(self.device)  # (examples, 1, 96, 64)
        return {"embedding": self.model(x).cpu().numpy()}


def build_vggish() -> torch.nn.Module:
    """torchvggish's VGG without the PCA postprocessor and without its final ReLU (fadtk, audioldm_eval)."""
    try:
        from torchvggish.torchvggish import VGG, make_layers
    except ImportError as e:
        raise ImportError("the vggish backbone needs torchvggish: pip install torchvggish") from e
    model = VGG(make_layers(), postprocess=False)
    model.embeddings = torch.nn.Sequential(*list(model.embeddings.children())[:-1])
    return model


class Clap(Backbone):
    name = "clap"
    crop = "48 kHz mono; 10-s windows: repeat-padded when short, start/middle/end averaged when long"
    files = None  # a transformers checkpoint: weights, config, tokenizer and feature extractor

    def __init__(self, ref, device="cpu"):
        from captioner.clap import ClapConfig, ClapScorer

        super().__init__(ref, device)
        self.scorer = ClapScorer(ClapConfig(model=str(self.path), device=device))
        self.sample_rate = self.scorer.sample_rate

    def __call__(self, waves: list[np.ndarray]) -> dict[str, np.ndarray]:
        return {"embedding": np.stack([self.scorer.embed_audio(w).cpu().numpy() for w in waves])}

    def texts(self, texts: list[str]) -> np.ndarray:
        return self.scorer.embed_texts(texts).cpu().numpy()

    def score(self, clip: audio.Audio, text: str) -> float:
        """Text-CLAP of one clip at any rate and channel count (the cosine of the two embeddings)."""
        return self.scorer.score(self.prepare(clip), [text])[0]


class PaSST(Backbone):
    name = "passt"

    def __init__(self, ref, device="cpu"):
        raise ImportError("the passt backbone needs hear21passt, which needs torchaudio: install torch with a "
                          "matching torchaudio, then pip install hear21passt")


BACKBONES = {"panns-cnn14": PannsCnn14, "vggish": VGGish, "clap": Clap, "passt": PaSST}


def load_backbone(name: str, ref: str | Path, device: str = "cpu") -> Backbone:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid: {sorted(BACKBONES)}")
    return BACKBONES[name](ref, device)


def write_tiny_backbones(directory: str | Path, seed: int = 0) -> dict[str, Path]:
    """Random CNN14 (audioldm_eval's 16 kHz config) and VGGish in the directory layout above. The model classes
    have fixed widths, so these are full-size architectures with random weights (stored in float16)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    torch.manual_seed(seed)
    out = {}
    for name, model, config in (("panns-cnn14", build_cnn14(CNN14_16K), CNN14_16K), ("vggish", build_vggish(), {})):
        path = directory / name
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        # learned weights in float16 (half the disk); the fixed STFT/mel kernels stay exact
        fixed = ("spectrogram_extractor.", "logmel_extractor.")
        save_file({k: v.half() if v.is_floating_point() and not k.startswith(fixed) else v for k, v in state.items()},
                  path / WEIGHTS_NAME)
        (path / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        out[name] = path
    return out
