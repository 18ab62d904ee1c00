"""A text-to-audio model as one loadable bundle: DiT weights + codec and text-encoder references + sampler
defaults. Layout (a directory, or a hub repo with the same files):

    capflow.json        {"format": "capflow-t2a", "version": 1, "codec": {...}, "text_encoder": {...},
                         "sampler": {...}, "stage": "...", "info": {...}}
    dit/config.json, dit/model.safetensors

Codec and text-encoder references are hub ids or paths; a relative path is taken relative to the bundle.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .codec import AudioCodec, CodecConfig
from .dit import EzAudioDiT
from .objective import FLOW, Objective
from .sampler import guided_velocity
from .text import TextEncoder

log = logging.getLogger(__name__)
EZAUDIO_EDITING = {"cfg": 3.5, "rescale": 0.0}  # EzAudio's editing_audio defaults (api/ezaudio.py), for v-ddpm
BUNDLE_NAME, BUNDLE_FORMAT, BUNDLE_VERSION = "capflow.json", "capflow-t2a", 1
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# what each bundle kind is for, so that a bundle given to the wrong command says which one takes it
BUNDLE_USES = {"capflow-t2a": "`capflow generate` or `capflow edit --method imagic`", "capflow-editor": "`capflow edit`",
               "capflow-separator": "`capflow separate`",
               "capflow-separation-query": "`capflow train-separator` (separation.query_from)"}


def check_bundle(directory: str | Path, expected: str | tuple[str, ...]) -> str | None:
    """The format of a local bundle, refused in one line (naming the command that takes it) unless it is one of
    `expected`; None for a hub id (checked when downloaded). Reads only capflow.json: no model loads."""
    root, expected = Path(directory), (expected,) if isinstance(expected, str) else expected
    if not root.exists():
        return None
    if not (root / BUNDLE_NAME).is_file():
        raise FileNotFoundError(f"{root} is not a capflow bundle (no {BUNDLE_NAME}); export one with the training "
                                "command of its kind")
    found = json.loads((root / BUNDLE_NAME).read_text()).get("format")
    if found not in expected:
        raise ValueError(f"{root} is a {found} bundle, not {' or '.join(expected)}; use it with "
                         f"{BUNDLE_USES.get(found, 'the command that made it')}")
    return found


def check_sampler(directory: str | Path, method: str | None) -> None:
    """A local bundle's objective takes `method` (read from capflow.json, before any model loads)."""
    index = Path(directory) / BUNDLE_NAME
    if method is not None and index.is_file():
        Objective.from_index(json.loads(index.read_text())).check_sampler(method)


def fast_path(device: str | torch.device, dtype: str = "auto", compile: bool | None = None) -> tuple[str, bool]:
    """The DiT's precision and whether to compile it. "auto"/None: bf16 and torch.compile on CUDA (a 10-s clip
    at 50 steps: 0.59 s on an H100 against 1.69 s bf16 eager, issue #22; batch-1 sampling is launch-bound, so
    compiling is what pays), fp32 eager elsewhere (CPUs gain little and would pay the compile time)."""
    cuda = torch.device(device).type == "cuda"
    if dtype == "auto":
        dtype = "bf16" if cuda else "fp32"
    if dtype not in PRECISIONS:
        raise ValueError(f"dtype must be auto or one of {sorted(PRECISIONS)}, got {dtype!r}")
    return dtype, cuda if compile is None else compile


@dataclass
class SamplerDefaults:
    steps: int = 50
    cfg: float = 5.0  # EzAudio §3.4: CFG 5 with rescale 0.75
    rescale: float = 0.75
    method: str | None = None  # None: the objective's solver (flow: euler; v-ddpm: ddim); euler | heun | ddim
    duration: float = 10.0
    negative: str = ""
    eta: float = 1.0  # DDIM's stochasticity (v-ddpm bundles; EzAudio samples with 1)


def bundle_objective(root: str | Path | None) -> Objective:
    """The objective of the bundle at `root` (what training from it continues in); flow without one."""
    if root is None:
        return Objective()
    path = Path(root) / BUNDLE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"init_from: {root} is not a capflow bundle (no {BUNDLE_NAME})")
    return Objective.from_index(json.loads(path.read_text()))


@dataclass
class TextEncoderRef:
    pretrained: str
    max_length: int = 100
    dtype: str = "float32"


def write_bundle(directory: str | Path, dit: EzAudioDiT, codec: CodecConfig, text_ref: TextEncoderRef | None,
                 sampler: SamplerDefaults, stage: str, info: dict | None = None,
                 objective: Objective = FLOW) -> Path:
    """Write a bundle without loading the codec or the text encoder (only their references are stored).
    objective: capflow's flow matching, or a v-prediction DDPM such as EzAudio's (objective.py)."""
    directory = Path(directory)
    dit.save_pretrained(directory / "dit")
    pretrained, subfolder = embed_component(codec.pretrained, directory, "codec", codec.subfolder)
    codec = dataclasses.replace(codec, pretrained=pretrained, subfolder=subfolder)
    if text_ref is not None:
        text_ref = dataclasses.replace(text_ref, pretrained=embed_component(text_ref.pretrained, directory,
                                                                            "text_encoder")[0])
    index = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "stage": stage, **objective.to_dict(),
             "codec": codec.to_dict(), "text_encoder": dataclasses.asdict(text_ref) if text_ref else None,
             "sampler": dataclasses.asdict(sampler), "info": info or {}}
    (directory / BUNDLE_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return directory


def download_bundle(repo: str, hint: str = "export one with `capflow pretrain`") -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo))
    except (HFValidationError, LocalEntryNotFoundError, OSError) as e:
        raise FileNotFoundError(f"no capflow bundle at {repo}: not a local directory, and not a hub repo that can "
                                f"be fetched ({type(e).__name__}); {hint}") from None


def resolve_ref(ref: str, root: Path, what: str = "component") -> str:
    """A component a bundle names: its folder inside the bundle (a relative name), or the hub id as recorded. A
    bundle-relative name whose folder is gone (a bundle copied without it) is one line."""
    candidate = root / ref
    if not Path(ref).is_absolute() and candidate.exists():
        return str(candidate)
    if ref in EMBEDDED_NAMES:
        raise FileNotFoundError(f"{root}: its {what} folder `{ref}` is missing; copy the whole bundle folder")
    return ref


EMBEDDED_NAMES = ("codec", "text_encoder", "clap", "ssl")  # the folders local components are copied into


def embed_component(ref: str | None, root: Path, name: str, subfolder: str | None = None) -> tuple[str | None, str | None]:
    """(reference, subfolder) for a component a bundle names, made portable: a local folder (its `subfolder`) is
    copied into the bundle as `name` and named relatively; one already inside the bundle keeps its name; a hub
    id stays an id. A bundle never records a local path (it would break when copied, and leak when pushed)."""
    if ref is None or (not Path(ref).is_absolute() and (root / ref).exists()):
        return ref, subfolder
    path = Path(ref)
    if not path.exists():
        return ref, subfolder  # a hub id
    source = path / subfolder if subfolder else path
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: not a model folder to put in the bundle")
    shutil.copytree(source, root / name, dirs_exist_ok=True)
    return name, None


class TextToAudio:
    def __init__(self, dit: EzAudioDiT, codec: AudioCodec, text_encoder: TextEncoder | None,
                 text_ref: TextEncoderRef | None, sampler: SamplerDefaults | None = None, stage: str = "",
                 info: dict | None = None, objective: Objective = FLOW):
        self.dit, self.codec, self.text_encoder, self.text_ref = dit, codec, text_encoder, text_ref
        self.sampler = sampler or SamplerDefaults()
        self.stage, self.info = stage, info or {}
        self.objective = objective  # flow, or v-ddpm with its DDIMScheduler config

    @property
    def device(self) -> torch.device:
        return next(self.dit.parameters()).device

    def to(self, device) -> TextToAudio:
        for m in (self.dit, self.codec, self.text_encoder):
            if m is not None:
                m.to(device)
        return self

    # ---- persistence --------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        return write_bundle(directory, self.dit, self.codec.config, self.text_ref, self.sampler, self.stage, self.info,
                            self.objective)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu", dtype: str = "auto",
                        compile: bool | None = None) -> TextToAudio:
        """Load a bundle. dtype (auto | fp32 | bf16 | fp16) is the DiT's precision; the sampler integrates in fp32
        whatever it is. Flan-T5 runs in bf16 with a bf16 DiT and in fp32 otherwise (T5 overflows in fp16);
        the VAE decodes in fp32 (once per clip, a small share of the time). compile: torch.compile the DiT.
        The defaults are the fast path of the device (`fast_path`): bf16 + compile on CUDA, fp32 eager on CPUs."""
        dtype, compile = fast_path(device, dtype, compile)
        root = Path(directory)
        if not (root / BUNDLE_NAME).is_file():
            if root.exists():
                raise FileNotFoundError(f"{root} is not a capflow text-to-audio bundle (no {BUNDLE_NAME}); "
                                        "export one with `capflow pretrain ... export`")
            root = download_bundle(str(directory))
        index = json.loads((root / BUNDLE_NAME).read_text())
        if index.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"{root / BUNDLE_NAME}: format {index.get('format')!r} is not {BUNDLE_FORMAT!r}")
        codec_cfg = CodecConfig(**index["codec"])
        codec_cfg.pretrained = resolve_ref(codec_cfg.pretrained, root, "codec")
        dit = EzAudioDiT.from_pretrained(root / "dit")
        text_ref = TextEncoderRef(**index["text_encoder"]) if index.get("text_encoder") else None
        text_encoder = None
        if text_ref is not None:  # resolved, so a bundle saved from this model elsewhere still finds it
            text_ref.pretrained = resolve_ref(text_ref.pretrained, root, "text encoder")
        if text_ref is not None and dit.has_text:
            text_dtype = "bfloat16" if dtype == "bf16" else text_ref.dtype
            text_encoder = TextEncoder(text_ref.pretrained, text_ref.max_length, text_dtype)
        model = cls(dit.eval(), AudioCodec(codec_cfg), text_encoder, text_ref,
                    SamplerDefaults(**index.get("sampler", {})), index.get("stage", ""), index.get("info", {}),
                    Objective.from_index(index))
        model.to(device)
        model.dit.to(PRECISIONS[dtype])
        if compile:
            model.dit.compile()
        return model

    # ---- inference ----------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list[str], *, duration: float | None = None, source: torch.Tensor | None = None,
                 context: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """Waveforms (b, a, samples) at codec.sample_rate for the prompts (`sample_latents`, decoded).

        source (b, c, n): normalised latents to start from at t_start (editing); default: pure noise at 0.
        context (b, c, n) + mask (b, n) (True: generate): the masked-context input, for inpainting; the frames
        outside the mask are taken from the context in the result.
        """
        duration = duration or self.sampler.duration
        latents = self.sample_latents(prompts, duration=duration, source=source, context=context, **kwargs)
        wave = self.codec.decode(latents)
        n = latents.shape[-1]
        target = round(duration * self.codec.sample_rate) if source is None and context is None else n * self.codec.hop
        return torch.nn.functional.pad(wave, (0, max(0, target - wave.shape[-1])))[..., :target]

    @torch.no_grad()
    def sample_latents(self, prompts: list[str], *, negative: str | None = None, steps: int | None = None,
                       cfg: float | None = None, rescale: float | None = None, seed: int | list[int] = 0,
                       duration: float | None = None, method: str | None = None, source: torch.Tensor | None = None,
                       t_start: float = 0.0, context: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                       progress: bool = False) -> torch.Tensor:
        """Normalised latents (b, c, n) for the prompts, as `generate` decodes them (its arguments)."""
        s = self.sampler
        steps, cfg, rescale = steps or s.steps, s.cfg if cfg is None else cfg, s.rescale if rescale is None else rescale
        duration, method = duration or s.duration, method or s.method
        negative = s.negative if negative is None else negative
        b, device = len(prompts), self.device
        n = next((x.shape[-1] for x in (source, context) if x is not None), None) or self.codec.frames(duration)
        c = self.dit.config.latent_channels
        if isinstance(seed, int):
            generator = torch.Generator(device="cpu").manual_seed(seed)
            noise = torch.randn(b, c, n, generator=generator).to(device)
        else:  # a generator per prompt (its noise, and DDIM's per step): a prompt's clip does not depend on its batch
            if len(seed) != b:
                raise ValueError(f"{len(seed)} seeds for {b} prompts")
            generator = [torch.Generator().manual_seed(k) for k in seed]
            noise = torch.stack([torch.randn(c, n, generator=g) for g in generator]).to(device)
        text = text_mask = neg = neg_mask = None
        if self.dit.has_text:
            text, text_mask = (t.to(device) for t in self.text_encoder(prompts))
            neg, neg_mask = (t.to(device) for t in self.text_encoder([negative] * b))
        elif any(prompts):
            log.warning("this is a stage-%r model without text modules: prompts are ignored", self.stage)
        if context is not None:
            context, mask = context.to(device), mask.to(device)
        velocity = guided_velocity(self.dit, text=text, text_mask=text_mask, neg_text=neg, neg_mask=neg_mask,
                                   context=context, mask=mask, scale=cfg, rescale=rescale)
        # v-ddpm (EzAudio): DDIM on the guided v-prediction, its eta noise from the same seed
        latents = self.objective.sample(velocity, noise, steps, source=None if source is None else source.to(device),
                                        t_start=t_start, method=method, eta=s.eta, generator=generator, progress=progress)
        if context is not None:  # EzAudio's editing: the known frames are the context's exactly
            latents = torch.where(mask[:, None, :], latents, context)
        return latents

    @torch.no_grad()
    def inpaint(self, clip, text: str, start: float, end: float, boundary: float = 2.0, fade: float = 0.05,
                **sampling):
        """EzAudio's inpainting (`editing_audio`): regenerate [start, end) seconds of a clip from the text with
        up to `boundary` seconds on each side as masked context (the DiT's masked-audio input; EzAudio caps it at
        half the span), the clip peak-normalised for the model as EzAudio does and its gain restored. Only the
        span is replaced: samples outside it are the input's to the bit (EzAudio splices the whole window, so its
        context comes back as the VAE's reconstruction), with `fade`-second linear crossfades inside the span's
        inner edges. A span past the end extends the clip (outpainting). v-DDPM bundles (EzAudio's) default to
        EzAudio's editing guidance (CFG 3.5, no rescale). Returns the clip at its own rate and channel count."""
        from shards import audio

        if not 0 <= start < end:
            raise ValueError(f"inpainting span [{start}, {end}) s: need 0 <= start < end")
        if self.objective.name == "v-ddpm":
            sampling = {**EZAUDIO_EDITING, **sampling}
        rate, hop, sr = self.codec.sample_rate, self.codec.hop, clip.sample_rate
        length = max(clip.samples.shape[-1] / sr, end)
        y = audio.fit_length(clip.samples, round(length * sr)).copy()  # the clip, extended for outpainting
        if boundary > (end - start) / 2:
            log.info("inpaint: %g s of context on each side, not --boundary %g: EzAudio's editing caps it at half "
                     "the span", (end - start) / 2, boundary)
            boundary = (end - start) / 2
        gain = 1.0 / (float(np.abs(y).max()) + 1e-9)  # EzAudio: gt / max|gt|
        w0, w1 = max(0.0, start - boundary), min(length, end + boundary)
        a, b = round(w0 * sr), round(w1 * sr)
        window = audio.conform(audio.Audio(gain * y[:, a:b], sr), rate, self.codec.audio_channels)
        context = self.codec.encode(torch.from_numpy(np.ascontiguousarray(window))[None].to(self.device))  # (1, c, n)
        mask = torch.zeros(1, context.shape[-1], dtype=torch.bool)
        mask[:, round((start - w0) * rate / hop): round((end - w0) * rate / hop)] = True
        wave = self.generate([text], context=context, mask=mask, **sampling)[0].cpu().numpy()  # (a, n·hop)
        made = audio.restore(wave, rate, audio.Audio(y[:, a:b], sr)).samples / gain  # (a, b - a) at the clip's rate
        s0, s1 = round(start * sr), round(end * sr)
        ramp = np.ones(s1 - s0, dtype=np.float32)
        f = min(round(fade * sr), (s1 - s0) // 2)
        if f and s0 > 0:
            ramp[:f] = np.linspace(0, 1, f + 2, dtype=np.float32)[1:-1]
        if f and s1 < clip.samples.shape[-1]:  # an outpainted tail has nothing to fade from
            ramp[-f:] = np.minimum(ramp[-f:], np.linspace(1, 0, f + 2, dtype=np.float32)[1:-1])
        y[:, s0:s1] = (1 - ramp) * y[:, s0:s1] + ramp * made[:, s0 - a: s1 - a]  # only the span changes
        return audio.Audio(y, sr)
