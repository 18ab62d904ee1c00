"""Stage `edit` on pretrain's one training loop: the T2A model becomes the instruction editor.

`EditTrainer` brings only what differs: the module (DiT with zero-initialised source channels + Flan-T5 with
LoRA), the triplet stream, the objective, the validation (edit held-out groups, CLAP to the target caption)
and the export (an editor bundle). Objective: flow matching on the target latent given the source latent and
the instruction; the instruction and the source are dropped with small independent probabilities so that
both guidances exist at inference.
Shape legend: b batch, c latent channels, n latent frames.
"""

from __future__ import annotations

import io
import json
import logging
import random
import re
from pathlib import Path

import numpy as np
import torch
import yaml

from pretrain.checkpoint import STATE_NAME, hub_id
from pretrain.codec import AudioCodec
from pretrain.data import LatentBatches
from pretrain.dit import EzAudioDiT
from pretrain.flow import flow_loss
from pretrain.objective import FLOW, Objective
from pretrain.pipeline import BUNDLE_NAME, TextEncoderRef, resolve_ref
from pretrain.text import TextEncoder
from pretrain.train import Trainer
from shards import audio
from shards import format as fmt
from shards.config import config_dict
from shards.outputs import MARKER, staged_dir
from shards.reader import iter_tar_samples, shard_urls

from .config import FinetuneConfig
from .editor import (
    DIT_DIR,
    EDITOR_FORMAT,
    LORA_DIR,
    EditorModule,
    InstructionEditor,
    add_lora,
    write_editor_bundle,
)
from .triplets import TripletDecoder, draw

log = logging.getLogger("capflow.finetune")


class EditBatches(LatentBatches):
    """The endless resumable stream (pretrain's segments) over edit groups: one drawn triplet per sample."""

    def decoder(self, seed: int):
        e = self.cfg.edit
        return TripletDecoder(min_clap=e.min_clap, operations=e.operations, seed=seed)

    def select(self):
        splits = set(self.cfg.edit.train_splits)
        return lambda s: s["triplet"] is not None and s["split"] in splits

    def to_batch(self, batch: dict) -> dict:
        target = batch["target"].float()  # (b, c, n)
        n = target.shape[-1]
        valid = torch.arange(n)[None, :] < torch.as_tensor(batch["valid_frames"])[:, None]  # (b, n)
        return {"latent": target, "source": batch["source"].float(), "valid": valid, "key": list(batch["key"]),
                "instruction": [t["instruction"] for t in batch["triplet"]], "op": [t["op"] for t in batch["triplet"]]}


def edit_loss(model, batch: dict, cfg: FinetuneConfig, device, objective: Objective = FLOW) -> torch.Tensor:
    """The objective's loss (flow matching, or v-prediction for an editor from a v-DDPM bundle) toward the
    target latent, conditioned on the source latent and the instruction."""
    x1, source = batch["latent"].to(device), batch["source"].to(device)  # (b, c, n)
    b = x1.shape[0]
    e = cfg.edit
    drop_text = (torch.rand(b) < e.instruction_dropout).tolist()
    drop_source = (torch.rand(b) < e.source_dropout).to(device)
    instructions = ["" if d else text for d, text in zip(drop_text, batch["instruction"])]
    source = torch.where(drop_source[:, None, None], torch.zeros_like(source), source)
    x_t, t, target = objective.point(x1, torch.randn_like(x1), cfg.flow.timesteps, cfg.flow.logit_mean,
                                     cfg.flow.logit_std)
    return flow_loss(model(x_t, t, source, instructions), target, batch["valid"].to(device))


def load_editor_module(cfg: FinetuneConfig) -> tuple[EditorModule, TextEncoderRef, dict]:
    """The trainable editor from `init_from`: a T2A bundle (source channels added with zero weights, fresh
    LoRA adapters: the editor equals the T2A model at step 0) or an editor bundle (training continues)."""
    from peft import PeftModel

    root = Path(cfg.init_from)
    if not (root / BUNDLE_NAME).is_file():
        raise FileNotFoundError(f"init_from: {root} is not a capflow bundle (no {BUNDLE_NAME})")
    index = json.loads((root / BUNDLE_NAME).read_text())
    if not index.get("text_encoder"):
        raise ValueError(f"init_from: {root} has no text encoder (a stage-mask model); start from an align/sft export")
    ref = TextEncoderRef(**index["text_encoder"])
    ref.pretrained = resolve_ref(ref.pretrained, root)
    text = TextEncoder(ref.pretrained, ref.max_length, ref.dtype)
    lora = cfg.edit.lora
    if index.get("format") == EDITOR_FORMAT:
        dit = EzAudioDiT.from_pretrained(root / DIT_DIR)
        text.model = PeftModel.from_pretrained(text.model, root / LORA_DIR, is_trainable=True)
        text.frozen = False
    else:
        dit = EzAudioDiT.from_pretrained(root / "dit")
        if not dit.has_text:
            raise ValueError(f"init_from: {root} is a model without text modules")
        dit.add_source_input()
        add_lora(text, lora.rank, lora.alpha, lora.dropout, lora.targets)
    dit.config.gradient_checkpointing = cfg.model.gradient_checkpointing
    return EditorModule(dit, text), ref, index


def _model_ref(ref: str | None) -> str | None:
    """A model reference compared by what it names: a local folder by its contents (config and weights: a
    bundle holds a copy of the codec it was trained with), else the hub id."""
    if not ref or not Path(ref).is_dir():
        return ref
    import hashlib

    from shards.validate import sha256_file

    files = sorted(p for p in Path(ref).rglob("*") if p.is_file() and (p.suffix in (".safetensors", ".bin")
                                                                        or p.name == "config.json"))
    digest = hashlib.sha256()
    for p in files:
        text = p.read_text() if p.name == "config.json" else None
        if text is not None:  # diffusers records its version and the class name: not what the codec computes
            config = {k: v for k, v in json.loads(text).items() if not k.startswith("_")}
            digest.update(json.dumps(config, sort_keys=True).encode())
        else:
            digest.update(sha256_file(p).encode())
    return f"weights:{digest.hexdigest()[:16]}"


BEST_DIR, BEST_NAME, BEST_FORMAT = "best", MARKER, "capflow-editor-best"  # the best-so-far weights


class EditValidator:
    """Edits the first `validation_groups` groups of the validation split (never the test split: `edit-eval`
    reports on it) and scores each edit's CLAP against its target caption with the evaluation package's CLAP
    backbone."""

    def __init__(self, cfg: FinetuneConfig, codec_cfg, objective: Objective = FLOW):
        self.cfg, self.codec, self.objective = cfg, AudioCodec(codec_cfg), objective
        self.groups = list(self._held_out(cfg))
        if not self.groups:
            log.warning("no edit group of split %r in data.shards: validation edits nothing (give the edit data a "
                        "valid share: splits.valid)", cfg.edit.validation_split)
        self.clap = None
        if cfg.validation.clap_model:
            from evaluation.backbones import load_backbone

            self.clap = load_backbone("clap", cfg.validation.clap_model, "cuda" if torch.cuda.is_available() else "cpu")

    @staticmethod
    def _held_out(cfg: FinetuneConfig):
        """(key, triplet, source latent) of the first `validation_groups` groups of the validation split;
        reading stops as soon as there are enough."""
        rng, found = random.Random(cfg.validation.seed), 0
        for url in (u for s in cfg.data.shards for u in shard_urls(s)):
            for key, sample in iter_tar_samples(Path(url)):
                if found >= cfg.edit.validation_groups:
                    return
                meta = json.loads(sample[fmt.META])
                if meta.get("split") != cfg.edit.validation_split:
                    continue
                triplet = draw(meta, rng, None, cfg.edit.operations)
                latent = np.load(io.BytesIO(sample[f"{triplet['source']}.{fmt.LATENT}"]), allow_pickle=False)
                found += 1
                yield key, triplet, torch.from_numpy(latent.astype(np.float32))

    @torch.no_grad()
    def run(self, model: EditorModule, step: int, directory: Path) -> float | None:
        if not self.groups:
            return None
        device = next(model.parameters()).device
        self.codec.to(device)
        was_training = model.training
        model.eval()
        editor = InstructionEditor(model.dit, self.codec, model.text, self.cfg.edit.sampler, objective=self.objective)
        sources = torch.stack([z for _, _, z in self.groups])
        latents = editor.edit_latents(sources, [t["instruction"] for _, t, _ in self.groups], seed=self.cfg.validation.seed)
        waves = self.codec.decode(latents).float().cpu().numpy()
        model.train(was_training)
        out = directory / f"step-{step:06d}"
        out.mkdir(parents=True, exist_ok=True)
        scores = []
        for (key, triplet, _), wave in zip(self.groups, waves):
            name = f"{key}_{re.sub(r'[^a-z0-9]+', '_', triplet['instruction'].lower())[:40]}"
            clip = audio.Audio(wave, self.codec.sample_rate)
            audio.write(out / f"{name}.wav", clip)
            if self.clap is not None and triplet["caption"]:
                scores.append(self.clap.score(clip, triplet["caption"]))
        score = float(np.mean(scores)) if scores else None
        log.info("validation at step %d: edit CLAP to target captions %s (%s)", step,
                 "n/a" if score is None else f"{score:.3f}", out)
        return score


def editor_card(cfg: FinetuneConfig, info: dict) -> str:
    from huggingface_hub import ModelCardData

    data = ModelCardData(license=cfg.license, library_name="capflow", datasets=cfg.datasets or None,
                         base_model=hub_id(cfg.init_from), tags=["audio", "audio-editing", "flow-matching", "ezaudio-dit"])
    header = {k: v for k, v in data.to_dict().items() if v is not None}
    return "\n".join([
        "---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "",
        "# capflow instruction editor", "",
        "An EzAudio-DiT text-to-audio model fine-tuned by capflow into an instruction editor (RFM-Editing): the "
        "source latent enters through extra input channels, the instruction through Flan-T5 with a LoRA adapter.", "",
        "| | |", "|---|---|",
        f"| steps | {info.get('step')}" + (f" ({info['samples']:,} triplets) |" if info.get("samples") else " |"),
        f"| weights | {'EMA' if info.get('ema') else 'raw'}, {info.get('selected', 'last')} by validation CLAP |"
        if info.get("selected") == "best" else f"| weights | {'EMA' if info.get('ema') else 'raw'}, last step |",
        f"| operations | {', '.join(cfg.edit.operations)} |",
        f"| LoRA | rank {cfg.edit.lora.rank}, alpha {cfg.edit.lora.alpha:g}, on {', '.join(cfg.edit.lora.targets)} |",
        f"| validation CLAP (edits to target captions) | {info.get('validation_clap', 'n/a')} |", "",
        "## Use", "", "```", 'capflow edit --checkpoint THIS_DIR in.wav "Remove the siren" -o out.wav', "```", "",
        "The training config is in `training_config.yaml` beside this card.", ""])


class EditTrainer(Trainer):
    export_format = EDITOR_FORMAT

    def make_text_encoder(self):
        return None  # the instruction encoder is part of the trained module

    def build_model(self, latent_info: dict) -> EditorModule:
        module, self.text_ref, index = load_editor_module(self.cfg)
        t2a_codec = index.get("codec") or {}
        ours = {"pretrained": _model_ref(self.codec_cfg.pretrained), "subfolder": self.codec_cfg.subfolder or None}
        t2a_ref = resolve_ref(t2a_codec["pretrained"], Path(self.cfg.init_from)) if t2a_codec.get("pretrained") else None
        theirs = {"pretrained": _model_ref(t2a_ref), "subfolder": t2a_codec.get("subfolder") or None}
        if ours != theirs:
            raise ValueError(f"data.shards were encoded with the codec {ours} but {self.cfg.init_from} generates with "
                             f"{theirs}: encode the edit groups with the T2A bundle's codec")
        if t2a_codec.get("latent_mean") != self.codec_cfg.latent_mean:
            raise ValueError(f"data.shards are normalised differently from {self.cfg.init_from}'s latents: encode the "
                             f"edit groups with `normalization_from: {self.cfg.init_from}`")
        return module

    def make_stream(self):
        return EditBatches(self.cfg, self.acc.process_index, start=self.state.micro)

    def loss(self, batch: dict) -> torch.Tensor:
        return edit_loss(self.model, batch, self.cfg, self.acc.device, self.objective)

    def make_validator(self):
        return EditValidator(self.cfg, self.codec_cfg, self.objective)

    def best(self) -> dict | None:
        """The best validation so far ({step, validation_clap}), saved under OUT/best; one saved after the step
        a run resumes from is not this run's and is ignored."""
        path = self.out / BEST_DIR / BEST_NAME
        best = json.loads(path.read_text()) if path.is_file() else None
        return best if best and best["step"] <= self.state.step else None

    def validate(self) -> float | None:
        """Validate; with `edit.export: best`, keep the validated (EMA) weights when they score best so far."""
        validated = self.state.step
        score = super().validate()
        if self.cfg.edit.export == "best":
            # the EMA's or the fp32 masters' values (a collective under DeepSpeed: every rank)
            values = self.ema_weights() if self.ema is not None else self.weights.masters()
            best = self.best() if self.acc.is_main_process else None
            if self.acc.is_main_process and score is not None and (best is None or score > best["validation_clap"]):
                with staged_dir(self.out / BEST_DIR, BEST_FORMAT) as tmp, self.weights.module_holding(values):
                    self.unwrapped.save_pretrained(tmp)
                    (tmp / BEST_NAME).write_text(json.dumps({"format": BEST_FORMAT, "step": validated,
                                                           "validation_clap": score}) + "\n")
                log.info("validation CLAP %.4f at step %d is the best so far: kept in %s", score, validated,
                         self.out / BEST_DIR)
            self.acc.wait_for_everyone()
        return score

    def export(self, use_ema: bool = True) -> Path:
        from pretrain.checkpoint import checkpoint_weights, list_checkpoints

        checkpoint = list_checkpoints(self.out)[-1]
        weights = checkpoint_weights(checkpoint, use_ema)
        info = {**json.loads((checkpoint / STATE_NAME).read_text()), "ema": weights.name == "dit_ema",
                "data_hashes": self.data_hashes}
        if self.last_val_clap is not None:
            info["validation_clap"] = round(self.last_val_clap, 4)
        best = self.best() if self.cfg.edit.export == "best" else None
        if best is not None:
            weights, info["ema"] = self.out / BEST_DIR, self.ema is not None
            info |= {"step": best["step"], "validation_clap": round(best["validation_clap"], 4), "selected": "best"}
            info.pop("samples", None)  # the last checkpoint's count, not the best one's
        else:
            if self.cfg.edit.export == "best":
                log.warning("edit.export best: no validation score was recorded; exporting the last weights")
            info["selected"] = "last"
        out = self.out / "export"
        with staged_dir(out, EDITOR_FORMAT) as tmp:
            write_editor_bundle(tmp, weights, self.codec_cfg, self.text_ref, self.cfg.edit.sampler, info, self.objective)
            (tmp / "README.md").write_text(editor_card(self.cfg, info))
            (tmp / "training_config.yaml").write_text(yaml.safe_dump(config_dict(self.cfg), sort_keys=False))
        log.info("exported %s", out)
        return out


def run_finetune(cfg: FinetuneConfig, resume: str | None = None) -> Path:
    """Train the editor; returns the exported editor bundle."""
    return EditTrainer(cfg, resume=resume).train()
