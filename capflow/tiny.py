"""`capflow tiny-models DIR`: every tiny model the pipeline loads, each in its standard layout."""

from __future__ import annotations

from pathlib import Path

from captioner.tiny import write_tiny_models as write_captioner_models
from evaluation.backbones import write_tiny_backbones
from pretrain.tiny import write_tiny_bundle
from pretrain.tiny import write_tiny_models as write_pretrain_models
from separation.ssl import write_tiny_ssl


def write_all_tiny_models(directory: str | Path, seed: int = 0) -> dict[str, Path]:
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{directory} is a file; give a directory for the tiny models")
    models = {**write_captioner_models(directory, seed), **write_pretrain_models(directory, seed)}
    models["t2a-untrained"] = write_tiny_bundle(directory / "t2a-untrained", models, seed)
    models |= write_tiny_backbones(directory, seed)  # panns-cnn14/, vggish/ (clap/ is the captioner's)
    models["ssl"] = write_tiny_ssl(directory / "ssl", seed)  # the separator's self-supervised encoder
    return models
