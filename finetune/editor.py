"""The instruction editor (RFM-Editing §2): a text-to-audio DiT with source-latent input channels and a
Flan-T5 instruction encoder with LoRA adapters, as one trainable module and as a loadable bundle.

Bundle layout (a directory or a hub repo):
    capflow.json     {"format": "capflow-editor", "version": 1, "codec": {...}, "text_encoder": {...},
                      "sampler": {...}, "info": {...}}
    dit/             the DiT (config.json with source_channels, model.safetensors)
    text_lora/       the Flan-T5 LoRA adapter (peft: adapter_config.json, adapter_model.safetensors)

Editing starts at t_start on the path to the source latent and integrates to 1 (sampler.py). Guidance, all
branches in one batched forward: instruction-only CFG (v∅ + s·(v_I − v∅), source kept in both branches), or
InstructPix2Pix's two scales v∅∅ + s_src·(v_S − v∅∅) + s·(v_SI − v_S); both with CFG rescaling.
Long inputs are edited in windows of the training duration that overlap by `overlap` seconds, crossfaded
linearly in latent space and decoded once. Shape legend: b batch, c latent channels, n frames, a audio
channels, s samples.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pretrain.codec import AudioCodec, CodecConfig
from pretrain.dit import EzAudioDiT
from pretrain.flow import start_point
from pretrain.pipeline import PRECISIONS, TextEncoderRef, download_bundle, resolve_ref
from pretrain.sampler import integrate, rescale_cfg
from pretrain.text import TextEncoder
from shards import audio

BUNDLE_NAME, EDITOR_FORMAT, EDITOR_VERSION = "capflow.json", "capflow-editor", 1
DIT_DIR, LORA_DIR = "dit", "text_lora"


@dataclass
class EditSampler:
    steps: int = 50
    cfg: float = 3.0  # instruction guidance
    cfg_source: float | None = None  # None: instruction-only CFG; a scale: two-scale guidance
    rescale: float = 0.5
    t_start: float = 0.01  # RFM-Editing's start on the path to the source
    method: str = "euler"
    duration: float = 10.0  # the training window; longer inputs are edited in overlapping windows
    overlap: float = 1.0


def add_lora(text: TextEncoder, rank: int, alpha: float, dropout: float, targets: list[str]) -> TextEncoder:
    """Flan-T5 with LoRA adapters (peft): the base weights frozen, the adapters trainable."""
    from peft import LoraConfig, get_peft_model

    text.model = get_peft_model(text.model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                                                       target_modules=targets))
    text.frozen = False
    return text


class EditorModule(nn.Module):
    """What the edit stage trains: the DiT (fully) and the instruction encoder's LoRA adapters."""

    def __init__(self, dit: EzAudioDiT, text: TextEncoder):
        super().__init__()
        self.dit, self.text = dit, text

    def forward(self, x_t, t, source, instructions: list[str]) -> torch.Tensor:
        emb, mask = self.text(instructions)
        return self.dit(x_t, t, text=emb, text_mask=mask, source=source)

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        self.dit.save_pretrained(directory / DIT_DIR)
        self.text.model.save_pretrained(directory / LORA_DIR)  # the adapter only
        return directory


def editor_velocity(dit: EzAudioDiT, source: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                    null: torch.Tensor, null_mask: torch.Tensor, cfg: float = 1.0, cfg_source: float | None = None,
                    rescale: float = 0.0):
    """The guided velocity (x, t) -> v in fp32; every branch in one batched forward."""
    b = source.shape[0]
    if cfg_source is None:
        if cfg == 1.0:
            return lambda x, t: dit(x, t, text=text, text_mask=text_mask, source=source).float()
        texts, masks, sources = torch.cat([text, null]), torch.cat([text_mask, null_mask]), torch.cat([source, source])
    else:
        texts, masks = torch.cat([text, null, null]), torch.cat([text_mask, null_mask, null_mask])
        sources = torch.cat([source, source, torch.zeros_like(source)])
    k = texts.shape[0] // b

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v = dit(torch.cat([x] * k), torch.cat([t] * k), text=texts, text_mask=masks, source=sources).float()
        if cfg_source is None:
            v_i, v_0 = v[:b], v[b:]
            return rescale_cfg(v_0 + cfg * (v_i - v_0), v_i, rescale)
        v_si, v_s, v_00 = v[:b], v[b: 2 * b], v[2 * b:]
        return rescale_cfg(v_00 + cfg_source * (v_s - v_00) + cfg * (v_si - v_s), v_si, rescale)

    return velocity


def write_editor_bundle(directory: Path, weights: Path, codec: CodecConfig, text_ref: TextEncoderRef,
                        sampler: EditSampler, info: dict) -> Path:
    """A bundle from saved weights (a folder with dit/ and text_lora/, as EditorModule.save_pretrained writes)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in (DIT_DIR, LORA_DIR):
        shutil.copytree(weights / name, directory / name, dirs_exist_ok=True)
    index = {"format": EDITOR_FORMAT, "version": EDITOR_VERSION, "codec": codec.to_dict(),
             "text_encoder": dataclasses.asdict(text_ref), "sampler": dataclasses.asdict(sampler), "info": info}
    (directory / BUNDLE_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return directory


class InstructionEditor:
    def __init__(self, dit: EzAudioDiT, codec: AudioCodec, text: TextEncoder, sampler: EditSampler | None = None,
                 info: dict | None = None):
        self.dit, self.codec, self.text = dit, codec, text
        self.sampler, self.info = sampler or EditSampler(), info or {}

    @property
    def device(self) -> torch.device:
        return next(self.dit.parameters()).device

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu", dtype: str = "fp32",
                        merge: bool = True) -> InstructionEditor:
        """Load an editor bundle; the LoRA adapter is merged into Flan-T5 (merge=False keeps it separate)."""
        from peft import PeftModel

        if dtype not in PRECISIONS:
            raise ValueError(f"dtype must be one of {sorted(PRECISIONS)}, got {dtype!r}")
        root = Path(directory)
        if not (root / BUNDLE_NAME).is_file():
            if root.exists():
                raise FileNotFoundError(f"{root} is not a capflow editor bundle (no {BUNDLE_NAME}); train one with "
                                        "`capflow finetune`")
            root = download_bundle(str(directory), "train one with `capflow finetune`")
        index = json.loads((root / BUNDLE_NAME).read_text())
        if index.get("format") != EDITOR_FORMAT:
            hint = " (a text-to-audio bundle: edit it with --method imagic)" if index.get("format") == "capflow-t2a" else ""
            raise ValueError(f"{root}: format {index.get('format')!r} is not {EDITOR_FORMAT!r}{hint}")
        codec_cfg = CodecConfig(**index["codec"])
        codec_cfg.pretrained = resolve_ref(codec_cfg.pretrained, root)
        ref = TextEncoderRef(**index["text_encoder"])
        text = TextEncoder(resolve_ref(ref.pretrained, root), ref.max_length, "bfloat16" if dtype == "bf16" else ref.dtype)
        text.model = PeftModel.from_pretrained(text.model, root / LORA_DIR)
        if merge:
            text.model = text.model.merge_and_unload()
        text.model.requires_grad_(False).eval()
        editor = cls(EzAudioDiT.from_pretrained(root / DIT_DIR).eval(), AudioCodec(codec_cfg), text,
                     EditSampler(**index.get("sampler", {})), index.get("info", {}))
        for m in (editor.dit, editor.codec, editor.text):
            m.to(device)
        editor.dit.to(PRECISIONS[dtype])
        return editor

    # ---- latents --------------------------------------------------------------------------------------
    @torch.no_grad()
    def edit_latents(self, source: torch.Tensor, instructions: list[str], *, steps: int | None = None,
                     cfg: float | None = None, cfg_source: float | None = None, rescale: float | None = None,
                     t_start: float | None = None, method: str | None = None, seed: int = 0) -> torch.Tensor:
        """Edited latents (b, c, n) for normalised source latents (b, c, n). t_start = 0 starts from pure
        noise with the source as condition only."""
        s = self.sampler
        steps, method = steps or s.steps, method or s.method
        cfg = s.cfg if cfg is None else cfg
        cfg_source = s.cfg_source if cfg_source is None else cfg_source
        rescale = s.rescale if rescale is None else rescale
        t_start = s.t_start if t_start is None else t_start
        device = self.device
        source = source.to(device, torch.float32)
        text, mask = self.text(instructions)
        null, null_mask = self.text([""] * len(instructions))
        noise = torch.randn(source.shape, generator=torch.Generator().manual_seed(seed)).to(device)
        x = start_point(source, noise, t_start) if t_start > 0 else noise
        velocity = editor_velocity(self.dit, source, text.to(device), mask.to(device), null.to(device),
                                   null_mask.to(device), cfg, cfg_source, rescale)
        return integrate(velocity, x, t_start=t_start, steps=steps, method=method)

    # ---- audio ------------------------------------------------------------------------------------------
    def _windows(self, n: int) -> list[tuple[int, int]]:
        window = self.codec.frames(self.sampler.duration)
        if n <= window:
            return [(0, n)]
        hop = max(1, window - self.codec.frames(self.sampler.overlap))
        starts = list(range(0, n - window, hop)) + [n - window]
        return [(a, a + window) for a in starts]

    @torch.no_grad()
    def edit(self, clip: audio.Audio, instruction: str, **kwargs) -> audio.Audio:
        """Edit one clip (any rate, mono or stereo, any length); returned at its rate and channel count."""
        return self.edit_many([clip], [instruction], **kwargs)[0]

    @torch.no_grad()
    def edit_many(self, clips: list[audio.Audio], instructions: list[str], **kwargs) -> list[audio.Audio]:
        """Edit clips; every window of every clip goes through the sampler in one batch."""
        if len(clips) != len(instructions):
            raise ValueError(f"{len(clips)} clips but {len(instructions)} instructions")
        codec, device = self.codec, self.device
        latents, spans = [], []
        for clip in clips:
            wave = audio.resample(clip, codec.sample_rate).samples
            if wave.shape[0] != codec.audio_channels:
                wave = np.repeat(wave.mean(0, keepdims=True), codec.audio_channels, axis=0)
            z = codec.encode(torch.from_numpy(np.ascontiguousarray(wave))[None].to(device))[0]  # (c, n)
            latents.append(z)
            spans.append(self._windows(z.shape[-1]))
        outputs = []
        for (z, windows), text in zip(zip(latents, spans), instructions):
            batch = torch.stack([z[:, a:b] for a, b in windows])
            edited = self.edit_latents(batch, [text] * len(windows), **kwargs)
            overlap = max((windows[k][1] - windows[k + 1][0] for k in range(len(windows) - 1)), default=0)
            outputs.append(_crossfade(edited, windows, z.shape[-1], overlap))
        result = []
        for clip, z in zip(clips, outputs):
            wave = codec.decode(z[None].to(device))[0].float().cpu().numpy()  # (a, s)
            length = round(clip.duration * codec.sample_rate)
            wave = audio.fit_length(wave, length)
            out = audio.resample(audio.Audio(wave, codec.sample_rate), clip.sample_rate)
            samples = audio.fit_length(out.samples, clip.samples.shape[-1])
            if samples.shape[0] != clip.channels:
                samples = np.repeat(samples.mean(0, keepdims=True), clip.channels, axis=0)
            result.append(audio.Audio(samples.astype(np.float32), clip.sample_rate))
        return result


def _crossfade(edited: torch.Tensor, windows: list[tuple[int, int]], n: int, overlap: int) -> torch.Tensor:
    """Overlapping window latents (w, c, frames) -> (c, n): linear fades over `overlap` frames at the inner
    edges of the windows, normalised by the summed weights (weights sum to one across every overlap)."""
    out = torch.zeros(edited.shape[1], n, device=edited.device)
    weight = torch.zeros(n, device=edited.device)
    for k, ((a, b), z) in enumerate(zip(windows, edited)):
        ramp = torch.ones(b - a, device=edited.device)
        fade = torch.linspace(0, 1, overlap + 2, device=edited.device)[1:-1]
        if k > 0 and overlap:
            ramp[:overlap] = fade
        if k < len(windows) - 1 and overlap:
            ramp[-overlap:] = torch.minimum(ramp[-overlap:], fade.flip(0))
        out[:, a:b] += z * ramp
        weight[a:b] += ramp
    return out / weight.clamp_min(1e-6)


def timed_edits(editor: InstructionEditor, jobs: list[tuple[audio.Audio, str]], **kwargs) -> list[tuple[audio.Audio, float]]:
    """Edit one clip at a time, with the seconds each took (the report's seconds per edit)."""
    out = []
    for clip, text in jobs:
        start = time.perf_counter()
        edited = editor.edit(clip, text, **kwargs)
        out.append((edited, time.perf_counter() - start))
    return out
