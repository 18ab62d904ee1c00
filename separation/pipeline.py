"""A language-queried separator as one loadable bundle, and `separate`.

    capflow.json   {"format": "capflow-separator", "sample_rate", "chunk", "clap", "ssl", "one_stage", "info"}
    separator/     the ASM (config.json, model.safetensors): no discriminator, no denoiser
    query/         the stage-1 query model (two-stage bundles)

Text query -> CLAP text embedding -> (two-stage) the query model's predicted target audio embedding from
the text embedding and the mixture -> the separator. Any decodable input, rate and channel count (each channel
separated, the result returned at the input's rate); inputs longer than the training chunk are cut into
windows that overlap by `overlap` seconds and are crossfaded (shards/windows.py); `separate_file` streams a file
through it (shards/audio.py), so memory does not grow with its length. The residual (mixture − target) is
"remove X". Shape legend: b batch, s samples.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from pretrain.pipeline import PRECISIONS, download_bundle, embed_component, fast_path, resolve_ref
from shards import audio, windows

from .embedder import Embedder
from .model import Separator
from .query import QueryModel
from .ssl import load_ssl

BUNDLE_NAME, FORMAT, SEPARATOR_DIR, QUERY_DIR = "capflow.json", "capflow-separator", "separator", "query"
QUERY_FORMAT = "capflow-separation-query"  # a stage-query export: the query model a separator run takes


def write_separation_bundle(directory: Path, asm: Separator, query_dir: Path | None, section, info: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    asm.save_pretrained(directory / SEPARATOR_DIR)
    if query_dir is not None:
        shutil.copytree(query_dir, directory / QUERY_DIR, dirs_exist_ok=True)
    clap = embed_component(section.clap_model, directory, "clap")[0]
    ssl = None if section.ssl == "none" else embed_component(section.ssl, directory, "ssl")[0]
    index = {"format": FORMAT, "version": 1, "sample_rate": section.sample_rate, "chunk": section.chunk,
             "clap": clap, "ssl": ssl,
             "one_stage": section.one_stage, "info": info}
    (directory / BUNDLE_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return directory


class LanguageSeparator:
    """`dtype`: the query model's and the separator's precision, "auto" = bf16 autocast on CUDA (RTF 0.0016 on an
    H100 at 8 windows per forward, against 0.0039 in fp32; 37 dB SNR to the fp32 output), fp32 elsewhere."""

    def __init__(self, asm: Separator, query: QueryModel | None, clap: Embedder, ssl, sample_rate: int, chunk: float,
                 one_stage: bool, dtype: str = "auto"):
        self.asm, self.query, self.clap, self.ssl = asm, query, clap, ssl
        self.sample_rate, self.chunk, self.one_stage = sample_rate, chunk, one_stage
        self.dtype = fast_path(self.device, dtype)[0]

    @property
    def device(self) -> torch.device:
        return next(self.asm.parameters()).device

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu", dtype: str = "auto") -> LanguageSeparator:
        root = Path(directory)
        if not (root / BUNDLE_NAME).is_file():
            if root.exists():
                raise FileNotFoundError(f"{root} is not a capflow separation bundle (no {BUNDLE_NAME}); train one "
                                        "with `capflow train-separator`")
            root = download_bundle(str(directory), "train one with `capflow train-separator`")  # a hub repo
        index = json.loads((root / BUNDLE_NAME).read_text())
        if index.get("format") != FORMAT:
            raise ValueError(f"{root}: format {index.get('format')!r} is not {FORMAT!r}")
        if not index["one_stage"] and not (root / QUERY_DIR).is_dir():
            raise ValueError(f"{root}: a two-stage bundle without its query model (train stage query and set "
                             "separation.query_from)")
        asm = Separator.from_pretrained(root / SEPARATOR_DIR).to(device).eval()
        query = QueryModel.from_pretrained(root / QUERY_DIR).to(device).eval() if not index["one_stage"] else None
        clap = Embedder(resolve_ref(index["clap"], root, "CLAP"), device)
        ssl = resolve_ref(index["ssl"], root, "SSL encoder") if index.get("ssl") else None
        return cls(asm, query, clap, load_ssl(ssl, device), index["sample_rate"], index["chunk"],
                   index["one_stage"], dtype)

    @torch.no_grad()
    def separate_waves(self, mixtures: torch.Tensor, queries: list[str]) -> torch.Tensor:
        """(b, s) mono mixtures at self.sample_rate -> (b, s) targets."""
        device = self.device
        mixtures = mixtures.to(device)
        text = self.clap.texts(queries).to(device)
        mixture_emb = self.clap.audio(mixtures, self.sample_rate).to(device) \
            if not self.one_stage and self.query.config.mixture_embedding else None
        ssl = self.ssl(mixtures, self.sample_rate) if self.ssl is not None else None
        with torch.autocast(device.type, PRECISIONS[self.dtype], enabled=self.dtype != "fp32"):
            emb = text if self.one_stage else self.query(text, mixtures, mixture_emb)
            return self.asm(mixtures, emb, ssl)[0].float()

    def _windowed(self, query: str, overlap: float, window_batch: int):
        """The separator as `audio.through` runs it: every channel in windows of the training chunk that overlap
        by `overlap` seconds, `window_batch` windows (all their channels) per forward, crossfaded."""
        window = round(self.chunk * self.sample_rate)
        fade = min(round(overlap * self.sample_rate), window // 4)

        def process(pieces: torch.Tensor, indices: list[int]) -> torch.Tensor:  # (w, channels, s) -> same
            w, c, n = pieces.shape
            return self.separate_waves(pieces.reshape(w * c, n), [query] * (w * c)).reshape(w, c, n)

        return lambda blocks: windows.overlap_add(blocks, window, fade, window_batch, process)

    @torch.no_grad()
    def separate(self, clip: audio.Audio, query: str, overlap: float = 0.5,
                 window_batch: int = 8) -> tuple[audio.Audio, audio.Audio]:
        """(target, residual) of a clip at its own rate, channel count and length (`separate_file` streams a file
        of any length). The residual is the mixture minus the target, so the two sum to the input exactly."""
        pairs = audio.through([clip.samples], clip.sample_rate, clip.channels, self.sample_rate, clip.channels,
                              self._windowed(query, overlap, window_batch))
        target = np.concatenate([y for _, y in pairs], axis=-1)
        return audio.Audio(target, clip.sample_rate), audio.Audio(clip.samples - target, clip.sample_rate)

    @torch.no_grad()
    def separate_file(self, mixture: str | Path, query: str, output: str | Path | None,
                      residual: str | Path | None = None, overlap: float = 0.5, window_batch: int = 8,
                      progress: bool = False) -> float:
        """Separate an audio file into `output` (the target) and optionally `residual` (the mixture minus the
        target), at the file's rate, channels and length, streamed: memory is that of one batch of windows
        whatever the file's length, and the outputs appear only once complete (`progress`: a bar in seconds of
        audio). Integer formats get one gain for both, so that target + residual = mixture after writing;
        returns it."""
        roles = [(path, rest) for path, rest in ((output, False), (residual, True)) if path]
        audio.steady_heap()
        with audio.Reader(mixture) as reader, contextlib.ExitStack() as stack:
            writers = [stack.enter_context(audio.Writer(p, reader.sample_rate, reader.channels)) for p, _ in roles]
            for x, y in audio.through(reader.progress(Path(mixture).name, progress), reader.sample_rate, reader.channels, self.sample_rate, reader.channels,
                                      self._windowed(query, overlap, window_batch)):
                for (_, rest), writer in zip(roles, writers):
                    writer.write(x - y if rest else y)
            return audio.finish(writers, mixture)
