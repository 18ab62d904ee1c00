"""Non-rigid editing of one clip toward a free-form text (Paissan et al., after Imagic), on a T2A bundle of
either objective (flow matching; a v-DDPM such as EzAudio's tunes with its v-loss and samples with DDIM,
objective.py). No editing data and no editor training:

1. optimise the Flan-T5 output sequence e (initialised from the target text's encoding) so the frozen DiT
   reconstructs the clip's latent under the flow loss (t uniform, fresh noise every step) -> e_opt;
2. fine-tune the DiT on the same loss with e_opt fixed: LoRA adapters through peft (the paper's speed-up)
   or all weights; the adapters are removed (full tuning: the weights restored) when the edit is done;
3. sample with e = η·e_target + (1 − η)·e_opt and CFG against the null caption. `eta="auto"` samples a grid of
   η in one batched call and keeps the largest text-CLAP + audio-CLAP sum (the paper's criterion).

Inpainting (`inpaint=(start, end)` seconds) uses the DiT's masked-context input: steps 1–2 learn the clip
from random spans of its known frames; sampling hides the span and keeps the known frames, which are the
source's latent frames exactly. Shape legend: b batch, c latent channels, n frames, l tokens, e width.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pretrain.flow import flow_loss, span_mask
from pretrain.pipeline import BUNDLE_FORMAT, TextToAudio
from pretrain.sampler import guided_velocity
from shards import audio
from shards.outputs import check_output_dir, staged_dir

log = logging.getLogger(__name__)
# the DiT's attention, cross-attention and MLP projections of every block
DIT_LORA_TARGETS = r".*blocks.*\.(attn\.qkv|attn\.proj|cross_attn\.q|cross_attn\.kv|cross_attn\.proj|mlp\.proj_in|mlp\.proj_out)"


@dataclass
class ImagicConfig:
    eta: float | str = "auto"  # a weight of the target text in [0, 1], or "auto": the grid below, best CLAP sum
    etas: list[float] = field(default_factory=lambda: [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    embed_steps: int = 500  # paper: Adam, lr 2e-3, 500 steps
    embed_lr: float = 2e-3
    tune_steps: int = 1500  # paper: Adam, lr 1e-6, 1500 steps (full fine-tuning)
    tune_lr: float | None = None  # None: 1e-4 with LoRA, 1e-6 for full fine-tuning
    lora_rank: int | None = 16  # None: full fine-tuning
    batch: int = 1  # (t, noise) draws per optimisation step
    inpaint: tuple[float, float] | str | None = None  # seconds; "START:END" from the command line
    clap_model: str | None = "laion/larger_clap_general"  # scores the η sweep (needed for eta="auto")
    save_tuned: str | None = None  # also save the tuned model as a T2A bundle here
    seed: int = 0
    # Imagic edits one clip of the model's length: longer inputs are refused (None: 1.5 x the bundle's duration)
    max_seconds: float | None = None

    def __post_init__(self):
        if isinstance(self.inpaint, str):
            try:
                start, end = (float(v) for v in self.inpaint.split(":"))
            except ValueError:
                raise ValueError(f"--inpaint {self.inpaint!r}: expected START:END in seconds, e.g. 3.0:5.5") from None
            self.inpaint = (start, end)
        if self.inpaint is not None and not 0 <= self.inpaint[0] < self.inpaint[1]:
            raise ValueError(f"inpaint span {self.inpaint} must satisfy 0 <= start < end")
        if self.eta != "auto":
            self.eta = float(self.eta)
            if not 0 <= self.eta <= 1:
                raise ValueError(f"eta must be in [0, 1] or 'auto', got {self.eta}")


@dataclass
class ImagicResult:
    audio: audio.Audio  # the chosen edit, at the input's rate and channel count
    eta: float
    candidates: list[dict]  # {eta, audio, text_clap, audio_clap, sum} for every η sampled
    e_opt: torch.Tensor
    seconds: dict


class ImagicEditor:
    """Imagic-style editing with one T2A bundle; the bundle is unchanged after every edit."""

    def __init__(self, t2a: TextToAudio, cfg: ImagicConfig | None = None, clap=None):
        if not t2a.dit.has_text:
            raise ValueError("Imagic needs a text-conditioned T2A model (an align/sft export)")
        self.t2a, self.cfg = t2a, cfg or ImagicConfig()
        if self.cfg.save_tuned:
            check_output_dir(self.cfg.save_tuned, BUNDLE_FORMAT, "--save-tuned")
        # CLAP is loaded here or never: a fixed eta needs none (an edit must not load, or fail to load, a model
        # after its embedding and tuning are done)
        if clap is None and self.cfg.eta == "auto":
            if not self.cfg.clap_model:
                raise ValueError("eta 'auto' scores the sweep with CLAP: set clap_model, or give a fixed eta")
            clap = load_clap(self.cfg.clap_model, str(self.t2a.device))
        self.clap = clap  # with a fixed eta, given only to score the one candidate

    def check_length(self, seconds: float | None, name: str = "the input") -> None:
        check_length(seconds, self.t2a.sampler.duration, self.cfg.max_seconds, name)

    # ---- the three steps ------------------------------------------------------------------------------
    def encode(self, clip: audio.Audio) -> torch.Tensor:
        codec = self.t2a.codec
        wave = audio.conform(clip, codec.sample_rate, codec.audio_channels)
        with torch.no_grad():
            return codec.encode(torch.from_numpy(np.ascontiguousarray(wave))[None].to(self.t2a.device))  # (1, c, n)

    def span(self, n: int) -> torch.Tensor | None:
        """(1, n) bool, True inside the inpainting span; None without inpainting."""
        if self.cfg.inpaint is None:
            return None
        rate = self.t2a.codec.frame_rate
        start, end = int(self.cfg.inpaint[0] * rate), min(n, int(np.ceil(self.cfg.inpaint[1] * rate)))
        if start >= n:
            raise ValueError(f"inpaint span {self.cfg.inpaint} starts after the clip ends ({n / rate:.2f} s)")
        mask = torch.zeros(1, n, dtype=torch.bool, device=self.t2a.device)
        mask[:, start:end] = True
        return mask

    def _loss(self, dit, z: torch.Tensor, e: torch.Tensor, e_mask: torch.Tensor, known: torch.Tensor | None,
              generator: torch.Generator) -> torch.Tensor:
        """The objective's loss of reconstructing z (t uniform); with inpainting, of random spans of the known
        frames from the rest."""
        b, device = self.cfg.batch, z.device
        x1 = z.expand(b, -1, -1)
        noise = torch.randn(x1.shape, generator=generator).to(device)
        x_t, t, target = self.t2a.objective.point(x1, noise, "uniform", generator=generator)
        context = mask = supervised = None
        if known is not None:  # learn random spans of the known frames from the rest; the span stays hidden
            span_frames = max(1, round(0.2 * self.t2a.codec.frame_rate))
            supervised = span_mask(b, z.shape[-1], span_frames, (0.1, 0.5), generator=generator).to(device) & known
            context, mask = x1, supervised | ~known
        v = dit(x_t, t, context=context, mask=mask, text=e.expand(b, -1, -1), text_mask=e_mask.expand(b, -1))
        return flow_loss(v.float(), target, supervised)

    def optimise_embedding(self, z, e_target, e_mask, known=None, progress=False) -> torch.Tensor:
        """Step 1: e_opt from e_target, the DiT frozen."""
        dit = self.t2a.dit
        dit.requires_grad_(False)
        e = e_target.detach().clone().requires_grad_(True)
        generator = torch.Generator().manual_seed(self.cfg.seed)
        _descend("imagic 1/3 embedding", self.cfg.embed_steps, [e], self.cfg.embed_lr,
                 lambda: self._loss(dit, z, e, e_mask, known, generator), progress)
        return e.detach()

    def tune(self, z, e_opt, e_mask, known=None, progress=False):
        """Step 2: the DiT tuned on the same loss with e_opt fixed. Returns (tuned DiT, restore function)."""
        from peft import LoraConfig, get_peft_model

        cfg, base = self.cfg, self.t2a.dit
        if cfg.lora_rank:
            dit = get_peft_model(base, LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_rank,
                                                  target_modules=DIT_LORA_TARGETS))
            lr = cfg.tune_lr or 1e-4

            def restore():
                self.t2a.dit = dit.unload()  # the adapters removed: the bundle's weights, untouched
        else:
            saved = copy.deepcopy(base.state_dict())
            dit, lr = base, cfg.tune_lr or 1e-6
            dit.requires_grad_(True)

            def restore():
                base.load_state_dict(saved)
                base.requires_grad_(False)
        params = [p for p in dit.parameters() if p.requires_grad]
        generator = torch.Generator().manual_seed(self.cfg.seed + 1)
        was_training = dit.training
        dit.train()
        _descend("imagic 2/3 tuning", cfg.tune_steps, params, lr,
                 lambda: self._loss(dit, z, e_opt, e_mask, known, generator), progress)
        dit.train(was_training)
        dit.eval()
        return dit, restore

    @torch.no_grad()
    def sample(self, dit, z, e_target, e_opt, e_mask, etas: list[float], known=None, steps=None, cfg=None,
               rescale=None, seed: int = 0, method: str | None = None) -> torch.Tensor:
        """Step 3: one batched sampling call for every η; latents (len(etas), c, n). With inpainting the
        known frames are the source's, exactly."""
        s, k = self.t2a.sampler, len(etas)
        eta = torch.tensor(etas, dtype=e_opt.dtype, device=e_opt.device)[:, None, None]
        e = eta * e_target + (1 - eta) * e_opt  # (k, l, e)
        null, null_mask = (x.to(e.device) for x in self.t2a.text_encoder([""] * k))
        context = mask = None
        if known is not None:
            context, mask = z.expand(k, -1, -1), (~known).expand(k, -1)
        velocity = guided_velocity(dit, text=e, text_mask=e_mask.expand(k, -1), neg_text=null, neg_mask=null_mask,
                                   context=context, mask=mask, scale=s.cfg if cfg is None else cfg,
                                   rescale=s.rescale if rescale is None else rescale)
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn((1, *z.shape[1:]), generator=generator).to(z.device)
        latents = self.t2a.objective.sample(velocity, noise.expand(k, -1, -1).clone(), steps or s.steps,
                                            method=method or s.method, eta=s.eta, generator=generator)
        if known is not None:
            latents = torch.where(known[:, None, :], z.expand(k, -1, -1), latents)
        return latents

    # ---- the whole edit -------------------------------------------------------------------------------------
    def edit(self, clip: audio.Audio, text: str, progress: bool = False, **sampling) -> ImagicResult:
        cfg, t2a = self.cfg, self.t2a
        self.check_length(clip.duration)
        seconds = {}
        start = time.perf_counter()
        z = self.encode(clip)
        inpaint = self.span(z.shape[-1])
        known = None if inpaint is None else ~inpaint
        e_target, e_mask = (x.to(t2a.device) for x in t2a.text_encoder([text]))
        e_opt = self.optimise_embedding(z, e_target, e_mask, known, progress)
        seconds["embed"] = time.perf_counter() - start
        start = time.perf_counter()
        dit, restore = self.tune(z, e_opt, e_mask, known, progress)
        seconds["tune"] = time.perf_counter() - start
        start = time.perf_counter()
        try:
            etas = cfg.etas if cfg.eta == "auto" else [cfg.eta]
            latents = self.sample(dit, z, e_target, e_opt, e_mask, etas, known, **{"seed": cfg.seed, **sampling})
            if cfg.save_tuned:
                self._save_tuned(dit)
        finally:
            restore()
        waves = t2a.codec.decode(latents).float().cpu().numpy()  # (k, a, s)
        candidates = [{"eta": eta, "audio": audio.restore(w, t2a.codec.sample_rate, clip)} for eta, w in zip(etas, waves)]
        if self.clap is not None:
            for c in candidates:
                c["text_clap"] = self.clap.score(c["audio"], text)
                c["audio_clap"] = _cosine(self.clap, c["audio"], clip)
                c["sum"] = c["text_clap"] + c["audio_clap"]
        best = max(candidates, key=lambda c: c.get("sum", 0.0)) if cfg.eta == "auto" else candidates[0]
        seconds["sample"] = time.perf_counter() - start
        return ImagicResult(best["audio"], best["eta"], candidates, e_opt, seconds)

    def _save_tuned(self, dit) -> None:
        tuned = copy.deepcopy(dit.merge_and_unload() if hasattr(dit, "merge_and_unload") else dit)
        with staged_dir(self.cfg.save_tuned, BUNDLE_FORMAT) as tmp:
            TextToAudio(tuned, self.t2a.codec, None, self.t2a.text_ref, self.t2a.sampler,
                        "imagic-tuned").save_pretrained(tmp)


def _descend(label: str, steps: int, params: list[torch.Tensor], lr: float, loss_fn, progress: bool) -> None:
    """`steps` Adam steps on `params`; how long the stage will take is logged after its first step (measured)."""
    opt = torch.optim.Adam(params, lr=lr)
    start = time.perf_counter()
    for i in tqdm(range(steps), desc=label, disable=not progress, leave=False):
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i == 0 and steps > 1:
            per_step = time.perf_counter() - start
            log.info("%s: %d steps, about %.0f s (%.2f s per step)", label, steps, steps * per_step, per_step)


def check_length(seconds: float | None, duration: float, max_seconds: float | None, name: str = "the input") -> None:
    """Refuse, in one line, a clip much longer than the model's training length (Imagic tunes the model on the
    whole clip: a 5-min file would take hours and all the memory)."""
    limit = max_seconds if max_seconds is not None else 1.5 * duration
    if seconds is not None and seconds > limit:
        raise ValueError(f"{name} is {seconds:.1f} s; Imagic edits one clip of the model's length ({duration:g} s, "
                         f"limit {limit:g} s): cut the part to edit first, e.g. ffmpeg -i IN -ss START -t {duration:g} "
                         "OUT.wav, or raise --max-seconds")


def load_clap(model: str, device: str):
    """The CLAP backbone that scores the η sweep, or one line saying how to do without it."""
    from evaluation.backbones import load_backbone

    try:
        return load_backbone("clap", model, device)
    except Exception as e:  # noqa: BLE001  (offline hub errors, missing files: one line either way)
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(f"eta 'auto' scores its sweep with CLAP ({model}), which cannot be loaded ({reason}); "
                         "pass --clap-model DIR (a local CLAP checkpoint) or a fixed --eta, e.g. --eta 0.6") from None


def _cosine(clap, a: audio.Audio, b: audio.Audio) -> float:
    """Audio-CLAP: the cosine of two clips' (normalised) CLAP embeddings."""
    emb = clap([clap.prepare(a), clap.prepare(b)])["embedding"]
    return float(np.dot(emb[0], emb[1]))


def imagic_edit_file(editor: ImagicEditor, source: str, text: str, out: str, **sampling) -> dict:
    """Edit one file with a loaded editor (reused across a batch); writes the edit, and beside it
    OUT_STEM.candidates/ with every η's audio and scores."""
    result = editor.edit(audio.decode(source), text, progress=True, **sampling)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    audio.write(out, result.audio)
    rows = []
    if len(result.candidates) > 1:
        folder = out.with_name(out.stem + ".candidates")
        folder.mkdir(exist_ok=True)
        for c in result.candidates:
            audio.write(folder / f"eta_{c['eta']:.2f}.wav", c["audio"])
            rows.append({k: v for k, v in c.items() if k != "audio"})
        (folder / "scores.json").write_text(json.dumps({"text": text, "chosen_eta": result.eta, "candidates": rows},
                                                      indent=2) + "\n")
    return {"eta": result.eta, "candidates": rows, "seconds": result.seconds}
