"""Training checkpoints and exports.

    OUTPUT/checkpoints/step-000100/   dit_raw/ (the trained weights, float32, in the module's save_pretrained
                                      layout: frozen modules such as Flan-T5 are not in it) and dit_ema/ (the
                                      EMA's), each tensor once: export reads them, resume loads them
                                      + accelerate save_state (optimizer, scheduler, RNG, a discriminator; the
                                      trained module only under DeepSpeed, whose engine saves it itself)
                                      + the loop's own state in safe formats: trainer_state.json (step, data
                                      position, counters), ema.json (the EMA's counters)
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

import torch
import yaml

from shards.config import config_dict
from shards.outputs import staged_dir

from .codec import CodecConfig
from .dit import EzAudioDiT
from .pipeline import BUNDLE_FORMAT, TextEncoderRef, bundle_objective, write_bundle

STEP_RE = re.compile(r"^step-(\d+)$")
STATE_NAME, EMA_STATE = "trainer_state.json", "ema.json"
RAW_DIR, EMA_DIR = "dit_raw", "dit_ema"


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first: `step-N` folders holding the loop's state (a `.tmp` one is an
    interrupted save; a folder without the state is not capflow's, and `rotate` never removes it)."""
    root = checkpoint_dir(output_dir)
    found = [p for p in root.iterdir() if STEP_RE.match(p.name) and (p / STATE_NAME).is_file()] if root.is_dir() else []
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


def save_loop_state(directory: Path, state, ema=None) -> None:
    """The loop's own state without pickle: counters and the EMA's scalars as JSON (its weights are EMA_DIR;
    accelerate's register_for_checkpointing would pickle both and load them with weights_only=False)."""
    (directory / STATE_NAME).write_text(json.dumps(state.state_dict(), indent=2) + "\n")
    if ema is not None:
        scalars = {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}
        (directory / EMA_STATE).write_text(json.dumps(scalars, indent=2) + "\n")


def load_loop_state(directory: Path, state, ema=None, ema_values: list[torch.Tensor] | None = None) -> None:
    """Restore what save_loop_state wrote, and the EMA's weights from `ema_values` (one per shadow parameter,
    read from EMA_DIR), copied into its existing tensors so they stay on the device and in the dtype the EMA
    lives in (the model's device)."""
    path = directory / STATE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no {STATE_NAME}; not a complete capflow checkpoint")
    state.load_state_dict(json.loads(path.read_text()))
    if ema is None:
        return
    if ema_values is None or not (directory / EMA_STATE).is_file():
        raise FileNotFoundError(f"{directory}: no EMA weights, but ema.enabled is true; resume with the same ema "
                                "settings the run was started with")
    if len(ema_values) != len(ema.shadow_params):
        raise ValueError(f"{directory}: {len(ema_values)} EMA tensors for a model with {len(ema.shadow_params)} "
                         "parameters; is this checkpoint from another model?")
    ema.load_state_dict(json.loads((directory / EMA_STATE).read_text()))
    with torch.no_grad():
        for p, value in zip(ema.shadow_params, ema_values):
            p.copy_(value)


def rotate(output_dir: str | Path, keep_last: int) -> None:
    for old in list_checkpoints(output_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def hub_id(ref: str | None) -> str | None:
    """A reference fit for a public card: hub ids only (a local path says nothing to a reader and leaks)."""
    return ref if ref and not Path(ref).is_absolute() and not Path(ref).exists() and ref.count("/") == 1 else None


def model_card(cfg, info: dict) -> str:
    """README.md of an export: Hub metadata through huggingface_hub's ModelCardData, every statement true
    of this stage (a mask-stage model takes no prompt and is not a text-to-audio pipeline yet)."""
    from huggingface_hub import ModelCardData

    text = cfg.stage != "mask"
    data = ModelCardData(
        license=cfg.license, library_name="capflow", datasets=cfg.datasets or None,
        base_model=hub_id(cfg.init_from), pipeline_tag="text-to-audio" if text else None,
        tags=["audio", "flow-matching", "ezaudio-dit", f"stage-{cfg.stage}"] + (["text-to-audio"] if text else []))
    header = {k: v for k, v in data.to_dict().items() if v is not None}
    use = (["## Use", "", "```", "capflow generate --checkpoint THIS_DIR \"a dog barks twice\" -o out.wav", "```", ""]
           if text else ["## Use", "", "A stage-`mask` model (masked-audio modeling, no text modules): the starting "
                         "point of stage `align` (`init_from` this folder). It ignores prompts.", ""])
    lines = [
        "---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "",
        f"# capflow {'text-to-audio' if text else 'masked-audio'} model (stage `{cfg.stage}`)", "",
        "An EzAudio-DiT trained with flow matching on audio-VAE latents by capflow.", "",
        "| | |", "|---|---|",
        f"| stage | {cfg.stage} |",
        f"| steps | {info.get('step')} ({info.get('samples', 0):,} samples) |",
        f"| weights | {'EMA' if info.get('ema') else 'raw'} |",
        f"| parameters | {info.get('parameters', 0) / 1e6:.1f} M |",
        f"| training data | {', '.join(cfg.datasets) or ', '.join(Path(p).name for p in cfg.data.shards)} |",
        f"| data shard-set config hashes | {', '.join(h[:12] for h in info.get('data_hashes', []))} (hashes of the "
        "configs that made the latent shards) |",
        f"| validation CLAP | {info.get('validation_clap', 'n/a')} |", "",
        *use,
        "The training config is in `training_config.yaml` beside this card.", "",
    ]
    return "\n".join(lines)


def checkpoint_weights(checkpoint: Path, use_ema: bool = True) -> Path:
    """The from_pretrained weights of a checkpoint: the EMA's when asked and saved, else the raw ones."""
    return checkpoint / (EMA_DIR if use_ema and (checkpoint / EMA_DIR).is_dir() else RAW_DIR)


def export_bundle(cfg, checkpoint: Path, out: str | Path, codec: CodecConfig, use_ema: bool = True,
                  info: dict | None = None) -> Path:
    """Checkpoint -> from_pretrained bundle (EMA or raw weights) + README.md model card."""
    weights = checkpoint_weights(checkpoint, use_ema)
    dit = EzAudioDiT.from_pretrained(weights)
    state = json.loads((checkpoint / STATE_NAME).read_text())
    info = {**state, **(info or {}), "ema": weights.name == EMA_DIR,
            "parameters": sum(p.numel() for p in dit.parameters())}
    text_ref = TextEncoderRef(cfg.text_encoder.pretrained, cfg.text_encoder.max_length, cfg.text_encoder.dtype) \
        if dit.has_text else None
    with staged_dir(out, BUNDLE_FORMAT) as tmp:
        write_bundle(tmp, dit, codec, text_ref, cfg.validation.sampler, cfg.stage, info, bundle_objective(cfg.init_from))
        (tmp / "README.md").write_text(model_card(cfg, info))
        (tmp / "training_config.yaml").write_text(yaml.safe_dump(config_dict(cfg), sort_keys=False))
    return Path(out)
