"""Our shards and releases through Hugging Face `datasets` on machines without torchcodec.

`datasets` ≥ 4 decodes (and, in the webdataset builder, encodes) audio with torchcodec, whose PyPI wheel is a
CUDA build: on a CPU-only machine `load_dataset("webdataset", ...)` over our shards fails, and so does
`ds[i]["audio"]` on a `--with-audio` release. Both work when audio stays bytes (`Value("binary")` /
`Audio(decode=False)`) and is decoded with soundfile, which these helpers do. Where torchcodec installs
(CUDA machines with its wheel), `datasets.Audio()` decoding works as documented and these are optional.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from . import format as fmt


def load_shards(directory: str | Path, with_audio: bool = True):
    """A shard set as a `datasets.Dataset` with the release's columns (audio kept as FLAC bytes:
    `Audio(decode=False)`), built from our own reader: works without torchcodec. (`load_dataset("webdataset",
    ...)` on our tars infers an `Audio()` column for `flac` and needs torchcodec to build it.)"""
    import datasets

    from .manifest import read_manifest
    from .reader import iter_tar_samples
    from .release import release_features, release_row

    features = release_features(with_audio)
    if with_audio:  # built as a plain struct (Audio.encode_example imports torchcodec), then typed as Audio
        features["audio"] = {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}
    tars = [str(Path(directory) / s["tar"]) for s in read_manifest(directory)["shards"]]

    def rows(tars: list[str]):
        import json

        for tar in tars:
            for key, sample in iter_tar_samples(Path(tar)):
                yield release_row(key, json.loads(sample[fmt.META]), sample.get(fmt.AUDIO) if with_audio else None)

    ds = datasets.Dataset.from_generator(rows, gen_kwargs={"tars": tars}, features=features)
    return ds.cast_column("audio", datasets.Audio(decode=False)) if with_audio else ds


def decode_audio_column(value) -> tuple[np.ndarray, int]:
    """(samples (channels, n) float32, sample rate) from a `datasets` audio value kept as bytes: the dict of
    `Audio(decode=False)` ({"bytes", "path"}) or raw bytes."""
    import soundfile as sf

    data = value.get("bytes") if isinstance(value, dict) else value
    if data is None:
        raise ValueError(f"audio value has no bytes (path {value.get('path')!r}); cast the column with "
                         "datasets.Audio(decode=False) before reading it")
    samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return samples.T, int(rate)
