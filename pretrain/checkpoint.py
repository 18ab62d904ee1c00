"""Training checkpoints and exports.

    OUTPUT/checkpoints/step-000100/   accelerate save_state (model, optimizer, scheduler, RNG, EMA, trainer
                                      state) + dit_raw/ and dit_ema/ (from_pretrained weights for export)
    OUTPUT/export/                    a text-to-audio bundle with a model card (README.md)

A checkpoint is written as `step-N.tmp` and renamed when complete; only the last `keep_last` are kept.
"resume" restores all of it (same stage, same step, same data position); "init-from" starts a new stage
from an export's weights only.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import yaml

from shards.config import config_dict

from .codec import CodecConfig
from .dit import EzAudioDiT
from .pipeline import TextEncoderRef, write_bundle

STEP_RE = re.compile(r"^step-(\d+)$")


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (a `.tmp` directory is an interrupted save and is ignored)."""
    root = checkpoint_dir(output_dir)
    found = [p for p in root.iterdir() if p.is_dir() and STEP_RE.match(p.name)] if root.is_dir() else []
    return sorted(found, key=lambda p: int(STEP_RE.match(p.name).group(1)))


def resolve_resume(output_dir: str | Path, resume: str) -> Path:
    if resume != "latest":
        path = Path(resume)
        if not path.is_dir():
            raise FileNotFoundError(f"--resume {resume}: no such checkpoint directory")
        return path
    found = list_checkpoints(output_dir)
    if not found:
        raise FileNotFoundError(f"--resume latest: no checkpoint under {checkpoint_dir(output_dir)}")
    return found[-1]


def rotate(output_dir: str | Path, keep_last: int) -> None:
    for old in list_checkpoints(output_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def model_card(cfg, info: dict) -> str:
    lines = [
        "---", yaml.safe_dump({"library_name": "capflow", "pipeline_tag": "text-to-audio",
                               "tags": ["audio", "text-to-audio", "flow-matching", "ezaudio-dit"]}).strip(), "---", "",
        f"# capflow text-to-audio model (stage `{cfg.stage}`)", "",
        "An EzAudio-DiT trained with flow matching on audio-VAE latents by capflow.", "",
        "| | |", "|---|---|",
        f"| stage | {cfg.stage} |",
        f"| steps | {info.get('step')} |",
        f"| weights | {'EMA' if info.get('ema') else 'raw'} |",
        f"| parameters | {info.get('parameters', 0) / 1e6:.1f} M |",
        f"| data | {', '.join(cfg.data.shards)} |",
        f"| data manifest hashes | {', '.join(info.get('data_hashes', []))} |",
        f"| validation CLAP | {info.get('validation_clap', 'n/a')} |", "",
        "## Use", "", "```", "capflow generate --checkpoint THIS_DIR \"a dog barks twice\" -o out.wav", "```", "",
        "## Training config", "", "```yaml", yaml.safe_dump(config_dict(cfg), sort_keys=False).strip(), "```", "",
    ]
    return "\n".join(lines)


def export_bundle(cfg, checkpoint: Path, out: str | Path, codec: CodecConfig, use_ema: bool = True,
                  info: dict | None = None) -> Path:
    """Checkpoint -> from_pretrained bundle (EMA or raw weights) + README.md model card."""
    weights = checkpoint / ("dit_ema" if use_ema and (checkpoint / "dit_ema").is_dir() else "dit_raw")
    dit = EzAudioDiT.from_pretrained(weights)
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    info = {**state, **(info or {}), "ema": weights.name == "dit_ema",
            "parameters": sum(p.numel() for p in dit.parameters())}
    text_ref = TextEncoderRef(cfg.text_encoder.pretrained, cfg.text_encoder.max_length, cfg.text_encoder.dtype) \
        if dit.has_text else None
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write_bundle(tmp, dit, codec, text_ref, cfg.validation.sampler, cfg.stage, info)
    (tmp / "README.md").write_text(model_card(cfg, info))
    (tmp / "training_config.yaml").write_text(yaml.safe_dump(config_dict(cfg), sort_keys=False))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
