"""Hybrid-Sep training on pretrain's one loop: stage `query` (the query model, L1 to the target's CLAP audio
embedding, CLAP frozen) and stage `separator` (ACT: the separator and the conditional denoiser against a
multi-scale STFT discriminator, which the loop steps first on every micro-batch with its own optimizer).

Stage separator conditions the separator on the target's CLAP audio embedding (two-stage; at inference the
query model predicts it) or on the query's CLAP text embedding (`one_stage`). The consistency term is anchored:
the denoiser's prediction from one noisy copy is pulled to the (detached) other, as Algorithm 1, and the
other to the clean target spectrum (without an anchor a constant output satisfies the first term).
Shape legend: b batch, s samples, e CLAP width.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
from torch import nn

from pretrain.checkpoint import STATE_NAME, checkpoint_weights, list_checkpoints
from pretrain.pipeline import embed_component
from pretrain.train import Trainer
from shards.config import config_hash, save_config
from shards.manifest import read_manifest
from shards.ontology import Ontology
from shards.outputs import staged_dir

from .config import SeparationConfig
from .data import MixtureBatches, check_mixable
from .discriminator import MultiScaleSTFTDiscriminator, discriminator_loss, generator_loss
from .embedder import Embedder
from .model import Separator
from .model import preset as separator_preset
from .pipeline import BUNDLE_NAME, FORMAT, QUERY_DIR, QUERY_FORMAT, SEPARATOR_DIR, write_separation_bundle
from .query import QueryModel
from .query import preset as query_preset
from .ssl import load_ssl
from .weights import Pretrained

log = logging.getLogger("capflow.separation")


class SeparatorModule(nn.Module):
    """What stage separator trains: the separator (ASM) and the conditional denoiser (CD), in one forward (so
    DDP sees every parameter used)."""

    def __init__(self, asm: Separator, cd: Separator | None):
        super().__init__()
        self.asm, self.cd = asm, cd

    def forward(self, mixture, emb, ssl, target, sigma: float):
        """The estimate (b, s) and, with a denoiser, its predictions from two noisy copies of the target's
        spectrum and that clean spectrum."""
        est, _, cond = self.asm(mixture, emb, ssl)
        if self.cd is None:
            return est, None
        clean = self.asm.spec(target)
        p1 = self.cd.denoise(clean + sigma * torch.randn_like(clean), cond)
        p2 = self.cd.denoise(clean + sigma * torch.randn_like(clean), cond)
        return est, (p1, p2, clean)

    def save_pretrained(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, directory / "model.safetensors")

    saved_weights = staticmethod(Pretrained.saved_weights)  # a trainer's resume reads what save_pretrained wrote


class _SeparationTrainer(Trainer):
    def provenance(self):
        hashes = [read_manifest(p)["config_hash"] for p in self.cfg.data.shards if Path(p).is_dir()]
        check_mixable(self.cfg.data.shards, Ontology.load(self.cfg.separation.ontology))  # before any model loads
        return None, {}, hashes

    def make_text_encoder(self):
        return None

    def make_stream(self):
        return MixtureBatches(self.cfg, self.acc.process_index, start=self.state.micro)

    def make_validator(self):
        return None

    def validate(self):  # validation for separation is `capflow evaluate` on held-out mixtures
        return None

    @property
    def embedder(self) -> Embedder:
        if getattr(self, "_embedder", None) is None:
            self._embedder = Embedder(self.cfg.separation.clap_model, self.acc.device)
        return self._embedder

    def _export_info(self) -> tuple[Path, dict]:
        checkpoint = list_checkpoints(self.out)[-1]
        info = {**json.loads((checkpoint / STATE_NAME).read_text()), "data_hashes": self.data_hashes,
                "config_hash": config_hash(self.cfg)}
        return checkpoint, info


class QueryTrainer(_SeparationTrainer):
    """Stage 1: text embedding + mixture -> the target's CLAP audio embedding (L1)."""

    export_format = QUERY_FORMAT

    def build_model(self, latent_info: dict) -> QueryModel:
        s = self.cfg.separation
        if self.cfg.init_from:
            return QueryModel.from_pretrained(Path(self.cfg.init_from) / QUERY_DIR)
        return QueryModel(query_preset(s.query_model, sample_rate=s.sample_rate, embed_dim=self.embedder.dim,
                                       mixture_embedding=s.query_mixture_embedding))

    def loss(self, batch: dict) -> torch.Tensor:
        rate = self.cfg.separation.sample_rate
        with torch.no_grad():
            text = self.embedder.texts(batch["query"]).to(self.acc.device)
            target = self.embedder.audio(batch["target"], rate).to(self.acc.device)
            mixture_emb = self.embedder.audio(batch["mixture"], rate).to(self.acc.device) \
                if self.unwrapped.config.mixture_embedding else None
        pred = self.model(text, batch["mixture"].to(self.acc.device), mixture_emb)
        return (pred - target).abs().mean()

    def export(self, use_ema: bool = True) -> Path:
        checkpoint, info = self._export_info()
        s = self.cfg.separation
        with staged_dir(self.out / "export", QUERY_FORMAT) as tmp:
            shutil.copytree(checkpoint_weights(checkpoint, use_ema), tmp / QUERY_DIR)
            index = {"format": QUERY_FORMAT, "sample_rate": s.sample_rate, "info": info,
                     "clap": embed_component(s.clap_model, tmp, "clap")[0]}
            (tmp / BUNDLE_NAME).write_text(json.dumps(index, indent=2) + "\n")
            save_config(self.cfg, tmp, "training_config.yaml")
        log.info("exported %s", self.out / "export")
        return self.out / "export"


class SeparatorTrainer(_SeparationTrainer):
    """Stage 2: ACT (Algorithm 1)."""

    export_format = FORMAT

    def build_model(self, latent_info: dict) -> SeparatorModule:
        s = self.cfg.separation
        self.ssl = load_ssl(s.ssl, self.acc.device)
        if self.cfg.init_from:
            asm = Separator.from_pretrained(Path(self.cfg.init_from) / SEPARATOR_DIR)
        else:
            asm = Separator(separator_preset(s.separator, sample_rate=s.sample_rate, embed_dim=self.embedder.dim,
                                             ssl_dim=self.ssl.dim if self.ssl else 0))
        cd = Separator(asm.config, denoiser=True) if s.act.denoiser else None
        return SeparatorModule(asm, cd)

    def make_discriminator(self):
        a = self.cfg.separation.act
        if not a.adversarial:
            return None
        disc = MultiScaleSTFTDiscriminator(a.disc_ffts, a.disc_channels)
        return disc, torch.optim.AdamW(disc.parameters(), lr=a.disc_lr, betas=tuple(self.cfg.optim.betas))

    def _condition(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        s, device = self.cfg.separation, self.acc.device
        with torch.no_grad():
            emb = self.embedder.texts(batch["query"]) if s.one_stage else self.embedder.audio(batch["target"], s.sample_rate)
            ssl = self.ssl(batch["mixture"], s.sample_rate) if self.ssl is not None else None
        return emb.to(device), ssl

    def discriminator_loss(self, batch: dict) -> torch.Tensor:
        """Phase 1: D on the target against the separator's current output."""
        device = self.acc.device
        self.discriminator.requires_grad_(True)
        emb, ssl = self._condition(batch)
        batch["_condition"] = (emb, ssl)  # reused by phase 2 (the same frozen embeddings)
        with torch.no_grad():
            gen = self.acc.unwrap_model(self.model).asm(batch["mixture"].to(device), emb, ssl)[0]
        scores = self.discriminator(torch.cat([batch["target"].to(device), gen]))  # real and fake in one pass
        b = gen.shape[0]
        return discriminator_loss([x[:b] for x in scores], [x[b:] for x in scores])

    def schedules(self) -> tuple[float, float]:
        a = self.cfg.separation.act
        decay = a.decay ** self.state.step
        return a.sigma_min + (a.sigma_max - a.sigma_min) * decay, a.consistency * (1 - decay)

    def loss(self, batch: dict) -> torch.Tensor:
        """Phase 2: L1 + adversarial + consistency, for the separator and the denoiser."""
        a, device = self.cfg.separation.act, self.acc.device
        emb, ssl = batch.pop("_condition", None) or self._condition(batch)
        mixture, target = batch["mixture"].to(device), batch["target"].to(device)
        sigma, weight = self.schedules()
        est, denoised = self.model(mixture, emb, ssl, target, sigma)
        loss = a.l1 * (est - target).abs().mean()
        if self.discriminator is not None and a.adversarial:
            self.discriminator.requires_grad_(False)  # its gradients come from phase 1 only
            loss = loss + a.adversarial * generator_loss(self.discriminator(est))
        if denoised is not None:
            p1, p2, clean = denoised
            loss = loss + weight * ((p1 - p2.detach()).abs().mean() + (p2 - clean).abs().mean())
        return loss

    def export(self, use_ema: bool = True) -> Path:
        """A separation bundle: the separator (EMA weights), the query model of `query_from`; no discriminator,
        no denoiser."""
        checkpoint, info = self._export_info()
        s = self.cfg.separation
        module = SeparatorModule(Separator(self.unwrapped.asm.config), None)
        from safetensors.torch import load_file

        state = load_file(checkpoint_weights(checkpoint, use_ema) / "model.safetensors")
        module.asm.load_state_dict({k[len("asm."):]: v for k, v in state.items() if k.startswith("asm.")})
        query = None
        if not s.one_stage:
            if not s.query_from:
                log.warning("no separation.query_from: the bundle takes target embeddings, not text, until a query "
                            "model is added")
            else:
                query = Path(s.query_from) / QUERY_DIR
        with staged_dir(self.out / "export", FORMAT) as tmp:
            write_separation_bundle(tmp, module.asm, query, s, info)
            save_config(self.cfg, tmp, "training_config.yaml")
        log.info("exported %s", self.out / "export")
        return self.out / "export"


def run_separation(cfg: SeparationConfig, resume: str | None = None) -> Path:
    """Train stage `query` or `separator`; returns the export."""
    return (QueryTrainer if cfg.stage == "query" else SeparatorTrainer)(cfg, resume=resume).train()
