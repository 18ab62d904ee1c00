"""Pinned backbones of the metrics, each loaded from a local directory (config.json + model.safetensors, as
`capflow tiny-models` writes them), a local checkpoint file (.safetensors, or .pth read with
`torch.load(weights_only=True)`), or a hub id (a repo holding config.json + model.safetensors).

- `panns-cnn14`: PANNs CNN14 (panns_inference's model class) at audioldm_eval's 16 kHz settings (window 512,
  hop 160, 64 mel, 50–8000 Hz, 527 classes; checkpoint Cnn14_16k_mAP=0.438.pth): 2048-d embeddings and the
  527 logits of fc_audioset *before* its sigmoid (audioldm_eval's "logits"), for FD, KL and IS.
- `vggish`: VGGish (torchvggish's model class) at 16 kHz without PCA and without the final ReLU, as fadtk and
  audioldm_eval use it, one 128-d embedding per 0.96-s example, for FAD.
The default references of both are the official checkpoints (`OFFICIAL`), downloaded once from where their
authors publish them into ~/.cache/capflow/backbones (CAPFLOW_CACHE) and checked against the checksum the
publisher gives; offline, one line names the file, its address and `--models`.
- `clap`: the captioner's CLAP scorer (transformers ClapModel, deterministic windows), for CLAP scores.
- `passt`: needs torchaudio (hear21passt), which cannot be installed here: the slot says so.
Every backbone reports `describe()`: name, checkpoint, its sha256, sample rate, crop and the audio preparation
protocol (evaluation/protocols.py) it was fed with, for reports.
Shape legend: n clips, t samples, d embedding width, k classes.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import itertools
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import torch

from shards import audio

from .protocols import Protocol, get_protocol

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


# The published checkpoints: PANNs on Zenodo (record 3987831 lists the file's md5), torchvggish on its GitHub
# release (torch.hub's convention: the file name carries the first hex digits of its sha256).
OFFICIAL = {
    "Cnn14_16k_mAP=0.438.pth": {"url": "https://zenodo.org/records/3987831/files/Cnn14_16k_mAP%3D0.438.pth",
                                "md5": "362fc5ff18f1d6ad2f6d464b45893f2c"},
    "vggish-10086976.pth": {"url": "https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth",
                            "sha256_prefix": "10086976"},
}


def cache_dir() -> Path:
    return Path(os.environ.get("CAPFLOW_CACHE") or Path.home() / ".cache" / "capflow") / "backbones"


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def official_checkpoint(name: str) -> Path:
    """The cached official checkpoint file, downloaded and checked on first use."""
    spec, path = OFFICIAL[name], cache_dir() / name
    if not path.is_file():
        hint = (f"the {name} checkpoint is not in {path.parent} and cannot be downloaded from {spec['url']}"
                " ({}); download it there, or pass --models DIR (a folder with panns-cnn14/, vggish/, clap/)")
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise FileNotFoundError(hint.format("HF_HUB_OFFLINE=1"))
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(spec["url"], str(path), hash_prefix=spec.get("sha256_prefix"), progress=True)
        except Exception as e:  # noqa: BLE001  (no network, HTTP error, hash mismatch: one line either way)
            raise FileNotFoundError(hint.format(f"{type(e).__name__}: {e}".splitlines()[0])) from None
    if "md5" in spec and _digest(path, "md5") != spec["md5"]:
        raise ValueError(f"{path}: md5 differs from the published {spec['md5']} ({spec['url']}); delete it to re-download")
    if "sha256_prefix" in spec and not _digest(path, "sha256").startswith(spec["sha256_prefix"]):
        raise ValueError(f"{path}: sha256 does not start with the published {spec['sha256_prefix']}; delete it to re-download")
    return path


def _resolve(ref: str | Path, patterns: list[str] | None = (CONFIG_NAME, WEIGHTS_NAME)) -> Path:
    path = Path(ref)
    if path.exists():
        return path
    if str(ref) in OFFICIAL:
        return official_checkpoint(str(ref))
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
    # The official PANNs checkpoints nest the weights under "model" beside their training sampler's state (numpy
    # arrays): numpy's array and scalar constructors are allowed, nothing that runs code (still weights_only).
    from numpy._core import multiarray

    numpy_data = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar,
                  *(getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType"))]
    with torch.serialization.safe_globals(numpy_data):
        state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("model", state)


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
    default_protocol: str | None = None

    def __init__(self, ref: str | Path, device: str = "cpu", protocol: str | None = None):
        self.path = _resolve(ref, self.files)
        self.ref, self.device = str(ref), device
        self.sha256 = _sha256(self.path)
        name = protocol or self.default_protocol
        self.protocol: Protocol | None = get_protocol(name) if name else None

    def describe(self) -> dict:
        out = {"backbone": self.name, "checkpoint": self.ref, "sha256": self.sha256, "sample_rate": self.sample_rate,
               "crop": self.crop}
        if self.protocol:
            out |= {"protocol": self.protocol.name, "preparation": self.protocol.describe()}
        return out

    def prepare(self, clip: audio.Audio) -> np.ndarray:
        if self.protocol:
            return self.protocol.prepare(clip, self.sample_rate)
        return audio.resample(audio.to_mono(clip), self.sample_rate).samples[0]


class PannsCnn14(Backbone):
    name, sample_rate = "panns-cnn14", 16000
    crop = "whole clip (CNN14 pools over time), mono, 16 kHz"
    default_protocol = "audioldm_eval"

    def __init__(self, ref, device="cpu", protocol=None):
        super().__init__(ref, device, protocol)
        config = json.loads((self.path / CONFIG_NAME).read_text()) if (self.path / CONFIG_NAME).is_file() else CNN14_16K
        self.model = build_cnn14(config)
        self.model.load_state_dict(_state_dict(self.path))
        self.model.to(device).eval()

    @torch.no_grad()
    def __call__(self, waves: list[np.ndarray]) -> dict[str, np.ndarray]:
        """{"embedding": (n, 2048), "logits": (n, 527)} in input order. The logits are fc_audioset's output
        before the sigmoid (panns_inference returns only the sigmoid; in eval mode its dropout is the identity,
        so fc_audioset of the embedding is the layer's own output). Clips of one length run as one batch
        (eval mode: a clip's output does not depend on its batch)."""
        embedding, logits = [None] * len(waves), [None] * len(waves)
        order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
        for _, group in itertools.groupby(order, key=lambda i: len(waves[i])):
            idx = list(group)
            x = torch.as_tensor(np.stack([waves[i] for i in idx]), dtype=torch.float32, device=self.device)  # (b, t)
            emb = self.model(x)["embedding"]
            out = self.model.fc_audioset(emb)
            for j, i in enumerate(idx):
                embedding[i] = emb[j].cpu().numpy()
                logits[i] = out[j].cpu().numpy()
        return {"embedding": np.stack(embedding), "logits": np.stack(logits)}


def build_cnn14(config: dict) -> torch.nn.Module:
    return _panns_models().Cnn14(**config)


class VGGish(Backbone):
    name, sample_rate = "vggish", 16000
    crop = "0.96-s examples (VGGish framing), one embedding each; no PCA, no final ReLU; mono, 16 kHz"
    default_protocol = "fadtk"

    def __init__(self, ref, device="cpu", protocol=None):
        super().__init__(ref, device, protocol)
        self.model = build_vggish()
        self.model.load_state_dict(_state_dict(self.path))
        self.model.to(device).eval()

    @torch.no_grad()
    def __call__(self, waves: list[np.ndarray]) -> dict[str, np.ndarray]:
        """{"embedding": (examples, 128), "clip": (examples,) the index of each example's clip}: FAD pools every
        0.96-s example of every clip, as fadtk does; embeddings rounded as the protocol stores them."""
        from torchvggish import vggish_input

        frames = [vggish_input.waveform_to_examples(w, self.sample_rate, return_tensor=True) for w in waves]
        clip = np.concatenate([np.full(len(f), i) for i, f in enumerate(frames)]).astype(np.int64)
        frames = [f for f in frames if len(f)]
        if not frames:
            return {"embedding": np.zeros((0, 128), np.float32), "clip": clip}
        x = torch.cat(frames).to(self.device)  # (examples, 1, 96, 64)
        embedding = self.model(x).cpu().numpy()
        return {"embedding": self.protocol.embeddings(embedding) if self.protocol else embedding, "clip": clip}


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

    def __init__(self, ref, device="cpu", protocol=None):
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

    def __init__(self, ref, device="cpu", protocol=None):
        raise ImportError("the passt backbone needs hear21passt, which needs torchaudio: install torch with a "
                          "matching torchaudio, then pip install hear21passt")


BACKBONES = {"panns-cnn14": PannsCnn14, "vggish": VGGish, "clap": Clap, "passt": PaSST}


def load_backbone(name: str, ref: str | Path, device: str = "cpu", protocol: str | None = None) -> Backbone:
    """A backbone by name from `ref`, fed with the named preparation protocol (None: the backbone's default)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid: {sorted(BACKBONES)}")
    return BACKBONES[name](ref, device, protocol)


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
