"""Typed configs: YAML files validated by pydantic models, `--set a.b=v` overrides, hashing and diffs.

Every entry point owns one model (extra="forbid"), so an unknown or mistyped key fails with a message
that names the key and the file. The resolved config is saved next to every output.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

CONFIG_NAME = "config.yaml"


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class ConfigError(ValueError):
    """A config file or override is wrong; the message says which key and how to fix it."""


class JobFailed(RuntimeError):
    """A job ran but produced nothing usable; the message says why and where the details are."""


C = TypeVar("C", bound=BaseModel)


def apply_override(data: dict, assignment: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (so 3, true, [1,2] work), and
    a value that is not valid YAML (`prompt=What: is this?`) is taken as the string it is."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set train.lr=1e-4")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is a value, not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        node[parts[-1]] = raw


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(root)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (check the spelling; valid keys are the model's fields)")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None) -> C:
    """Load `path` (YAML) into `cls`, apply `--set` overrides, validate. No path: the model's defaults."""
    data: dict[str, Any] = {}
    source = "(defaults)"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(loaded).__name__}")
        data = loaded or {}
    for assignment in overrides or []:
        apply_override(data, assignment)
    if overrides:
        source += " with --set " + " ".join(overrides)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None


def config_dict(cfg: BaseModel) -> dict:
    return cfg.model_dump(mode="json")


def config_hash(cfg: BaseModel | dict) -> str:
    """sha256 of the canonical JSON of a config (key order does not matter)."""
    data = config_dict(cfg) if isinstance(cfg, BaseModel) else cfg
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def diff_configs(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ between two config dicts, as 'key: old -> new' lines."""
    a, b = flatten(old), flatten(new)
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in sorted(a.keys() | b.keys())
            if a.get(k, "<absent>") != b.get(k, "<absent>")]


def save_config(cfg: BaseModel, directory: str | Path, name: str = CONFIG_NAME) -> Path:
    """Write the resolved config as YAML beside an output (atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(config_dict(cfg), sort_keys=False))
    tmp.replace(path)
    return path
