"""The instruction editor (RFM-Editing §2): a text-to-audio DiT with source-latent input channels and a
Flan-T5 instruction encoder with LoRA adapters, as one trainable module and as a loadable bundle.

Bundle layout (a directory or a hub repo):
    capflow.json     {"format": "capflow-editor", "version": 1, "codec": {...}, "text_encoder": {...},
                      "sampler": {...}, "info": {...}}
    dit/             the DiT (config.json with source_channels, model.safetensors)
    text_lora/       the Flan-T5 LoRA adapter (peft: adapter_config.json, adapter_model.safetensors)

Editing starts at t_start on the path to the source latent and integrates to 1 (sampler.py; an editor trained from
a v-DDPM bundle runs DDIM from the source noised to strength 1 - t_start, objective.py). Guidance, all
branches in one batched forward: instruction-only CFG (v∅ + s·(v_I − v∅), source kept in both branches), or
InstructPix2Pix's two scales v∅∅ + s_src·(v_S − v∅∅) + s·(v_SI − v_S); both with CFG rescaling.
Long inputs are edited in windows of the training duration that overlap by `overlap` seconds, a bounded batch
of windows at a time (encoded, edited and decoded together), crossfaded linearly in the waveform
(shards/windows.py, shared with the separator); `edit_file` streams a file through it (shards/audio.py), so
memory does not grow with the file's length. Shape legend: b batch, c latent channels, n frames, a audio
channels, s samples.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pretrain.codec import AudioCodec, CodecConfig
from pretrain.dit import EzAudioDiT
from pretrain.objective import FLOW, Objective
from pretrain.pipeline import (
    PRECISIONS,
    TextEncoderRef,
    download_bundle,
    embed_component,
    fast_path,
    resolve_ref,
)
from pretrain.sampler import rescale_cfg
from pretrain.text import TextEncoder
from shards import audio, windows

BUNDLE_NAME, EDITOR_FORMAT, EDITOR_VERSION = "capflow.json", "capflow-editor", 1
DIT_DIR, LORA_DIR = "dit", "text_lora"


@dataclass
class EditSampler:
    steps: int = 50
    cfg: float = 3.0  # instruction guidance
    cfg_source: float | None = None  # None: instruction-only CFG; a scale: two-scale guidance
    rescale: float = 0.5
    t_start: float = 0.01  # RFM-Editing's start on the path to the source
    method: str | None = None  # the objective's solver (flow: euler, v-ddpm: ddim) unless one is named
    duration: float = 10.0  # the training window; longer inputs are edited in overlapping windows
    overlap: float = 1.0
    eta: float = 1.0  # DDIM's stochasticity (editors trained from a v-DDPM bundle, such as EzAudio's)


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

    @staticmethod
    def saved_weights(directory: str | Path) -> dict[str, torch.Tensor]:
        """What save_pretrained wrote (the DiT and the LoRA adapter, never the frozen Flan-T5), by this module's
        parameter names: peft saves `...q.lora_A.weight` for the parameter `text.model....q.lora_A.default.weight`."""
        from safetensors.torch import load_file

        directory = Path(directory)
        dit = {f"dit.{k}": v for k, v in EzAudioDiT.saved_weights(directory / DIT_DIR).items()}
        lora = load_file(directory / LORA_DIR / "adapter_model.safetensors")
        return dit | {"text.model." + re.sub(r"\.(lora_[AB])\.weight$", r".\1.default.weight", k): v for k, v in lora.items()}


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
                        sampler: EditSampler, info: dict, objective: Objective = FLOW) -> Path:
    """A bundle from saved weights (a folder with dit/ and text_lora/, as EditorModule.save_pretrained writes)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in (DIT_DIR, LORA_DIR):
        shutil.copytree(weights / name, directory / name, dirs_exist_ok=True)
    pretrained, subfolder = embed_component(codec.pretrained, directory, "codec", codec.subfolder)
    codec = dataclasses.replace(codec, pretrained=pretrained, subfolder=subfolder)
    text_ref = dataclasses.replace(text_ref, pretrained=embed_component(text_ref.pretrained, directory, "text_encoder")[0])
    index = {"format": EDITOR_FORMAT, "version": EDITOR_VERSION, **objective.to_dict(), "codec": codec.to_dict(),
             "text_encoder": dataclasses.asdict(text_ref), "sampler": dataclasses.asdict(sampler), "info": info}
    (directory / BUNDLE_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return directory


class InstructionEditor:
    def __init__(self, dit: EzAudioDiT, codec: AudioCodec, text: TextEncoder, sampler: EditSampler | None = None,
                 info: dict | None = None, objective: Objective = FLOW):
        self.dit, self.codec, self.text = dit, codec, text
        self.sampler, self.info, self.objective = sampler or EditSampler(), info or {}, objective

    @property
    def device(self) -> torch.device:
        return next(self.dit.parameters()).device

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu", dtype: str = "auto",
                        merge: bool = True) -> InstructionEditor:
        """Load an editor bundle; the LoRA adapter is merged into Flan-T5 (merge=False keeps it separate)."""
        from peft import PeftModel

        dtype, _ = fast_path(device, dtype, False)  # auto: bf16 on CUDA, fp32 elsewhere
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
                     EditSampler(**index.get("sampler", {})), index.get("info", {}), Objective.from_index(index))
        for m in (editor.dit, editor.codec, editor.text):
            m.to(device)
        editor.dit.to(PRECISIONS[dtype])
        return editor

    # ---- latents --------------------------------------------------------------------------------------
    @torch.no_grad()
    def edit_latents(self, source: torch.Tensor, instructions: list[str], *, steps: int | None = None,
                     cfg: float | None = None, cfg_source: float | None = None, rescale: float | None = None,
                     t_start: float | None = None, method: str | None = None, seed: int | list[int] = 0) -> torch.Tensor:
        """Edited latents (b, c, n) for normalised source latents (b, c, n). t_start = 0 starts from pure
        noise with the source as condition only. seed: one for the batch, or one per row."""
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
        generator = torch.Generator().manual_seed(seed if isinstance(seed, int) else seed[0])
        if isinstance(seed, int):
            noise = torch.randn(source.shape, generator=generator)
        else:  # a row's noise does not depend on the batch it is in
            noise = torch.stack([torch.randn(source.shape[1:], generator=torch.Generator().manual_seed(k)) for k in seed])
        velocity = editor_velocity(self.dit, source, text.to(device), mask.to(device), null.to(device),
                                   null_mask.to(device), cfg, cfg_source, rescale)
        return self.objective.sample(velocity, noise.to(device), steps, source=source if t_start > 0 else None,
                                     t_start=t_start, method=method, eta=s.eta, generator=generator)

    # ---- audio ------------------------------------------------------------------------------------------
    def _windowed(self, instruction: str, window_batch: int, kwargs: dict):
        """The editor as `audio.through` runs it: windows of the training duration (whole latent frames), edited
        `window_batch` at a time (encode, edit, decode) and crossfaded in the waveform. Window k draws its noise
        from seed + k, so the result does not depend on `window_batch`."""
        codec, s = self.codec, self.sampler
        window = codec.frames(s.duration) * codec.hop
        fade = min(round(s.overlap * codec.sample_rate), window // 2)
        kwargs = dict(kwargs)
        seed = kwargs.pop("seed", 0)

        def process(pieces: torch.Tensor, indices: list[int]) -> torch.Tensor:  # (w, a, s) -> (w, a, s)
            # the VAE one window at a time: its activations at the audio rate are the largest buffers of an
            # edit (600 MB for 8 10-s windows of the tiny codec), and a small share of its time
            z = torch.cat([codec.encode(p[None].to(self.device)) for p in pieces])
            edited = self.edit_latents(z, [instruction] * len(indices), seed=[seed + k for k in indices], **kwargs)
            edited = torch.cat([codec.decode(e[None]).float() for e in edited])
            n = pieces.shape[-1]  # the VAE's length may differ by a hop
            return torch.nn.functional.pad(edited, (0, max(0, n - edited.shape[-1])))[..., :n]

        return lambda blocks: windows.overlap_add(blocks, window, fade, window_batch, process)

    @torch.no_grad()
    def edit(self, clip: audio.Audio, instruction: str, window_batch: int = 8, **kwargs) -> audio.Audio:
        """Edit one clip (any rate, mono or stereo, any length); returned at its rate, channels and length.
        A clip longer than the training window is edited in windows of it that overlap by `sampler.overlap`
        seconds, `window_batch` at a time, crossfaded (`edit_file` streams a file of any length)."""
        codec = self.codec
        pairs = audio.through([clip.samples], clip.sample_rate, clip.channels, codec.sample_rate,
                              codec.audio_channels, self._windowed(instruction, window_batch, kwargs))
        return audio.Audio(np.concatenate([y for _, y in pairs], axis=-1), clip.sample_rate)

    @torch.no_grad()
    def edit_file(self, source: str | Path, output: str | Path, instruction: str, window_batch: int = 8,
                  progress: bool = False, **kwargs) -> float:
        """Edit an audio file into `output` (same rate, channels and length), streamed: memory is that of one
        batch of windows whatever the file's length, and `output` appears only once complete (`progress`: a bar
        in seconds of audio). Returns the gain the output format needed (1.0 unless an integer format was
        scaled to fit)."""
        codec = self.codec
        audio.steady_heap()
        with audio.Reader(source) as reader, audio.Writer(output, reader.sample_rate, reader.channels) as writer:
            for _, edited in audio.through(reader.progress(Path(source).name, progress), reader.sample_rate, reader.channels, codec.sample_rate,
                                           codec.audio_channels, self._windowed(instruction, window_batch, kwargs)):
                writer.write(edited)
            return audio.finish([writer], output)

    def edit_many(self, clips: list[audio.Audio], instructions: list[str], **kwargs) -> list[audio.Audio]:
        if len(clips) != len(instructions):
            raise ValueError(f"{len(clips)} clips but {len(instructions)} instructions")
        return [self.edit(c, i, **kwargs) for c, i in zip(clips, instructions)]


def timed_edits(editor: InstructionEditor, jobs: list[tuple[audio.Audio, str]], **kwargs) -> list[tuple[audio.Audio, float]]:
    """Edit one clip at a time, with the seconds each took (the report's seconds per edit)."""
    out = []
    for clip, text in jobs:
        start = time.perf_counter()
        edited = editor.edit(clip, text, **kwargs)
        out.append((edited, time.perf_counter() - start))
    return out
