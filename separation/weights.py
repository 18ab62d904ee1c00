"""Saving and loading the separation models: config.json (their dataclass config) + model.safetensors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path


class Pretrained:
    """from_pretrained / save_pretrained for a module built as `cls(config)` from a dataclass config."""

    config_class: type

    def save_pretrained(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(dataclasses.asdict(self.config), indent=2) + "\n")
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, directory / "model.safetensors")
        return directory

    @staticmethod
    def saved_weights(directory: str | Path) -> dict:
        """What save_pretrained wrote, by state-dict names (a trainer's resume reads it)."""
        from safetensors.torch import load_file

        return load_file(Path(directory) / "model.safetensors")

    @classmethod
    def from_pretrained(cls, directory: str | Path):
        from safetensors.torch import load_file

        directory = Path(directory)
        model = cls(cls.config_class(**json.loads((directory / "config.json").read_text())))
        model.load_state_dict(load_file(directory / "model.safetensors"))
        return model
