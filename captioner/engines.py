"""Caption engines behind one interface: `generate(requests) -> list of n texts per request`.

- `transformers` (default): any transformers audio-text-to-text model with a chat template (Qwen2-Audio,
  Audio Flamingo 3) or a text LLM. Requests whose prompts have the same length (10-s clips under one prompt)
  decode together, `clips_per_decode` at a time: the audio encoder and the prompt prefill (minus the last
  prompt token) run once per request at batch `clips_per_decode`, the KV cache is repeated n times per
  request, and the sampled continuations run at batch clips_per_decode x n. No padding is involved, so a
  request's samples come from the same distribution whatever it is batched with. `decode` picks the KV cache
  of the sampling loop: `static` (one preallocated cache written in place, reused across decodes), `dynamic`
  (transformers' default: it grows by concatenation, so every step copies the whole cache) or `compiled`
  (static, and transformers compiles the decode step with CUDA graphs; CUDA only). All three sample the same
  texts from the same seed. `auto` (the default, `auto_decode`) is compiled for audio models on CUDA (4.39
  clips/s on an H100 at Qwen2-Audio-7B size against 2.68 static and 2.47 dynamic, after a 47-s compile), static
  for text LLMs and on CPUs, dynamic for models with sliding-window layers.
- `vllm` (extra `capflow[vllm]`): vLLM's offline engine; `SamplingParams(n=...)` shares the prefill.
"""

from __future__ import annotations

import inspect
import logging
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from shards.config import Strict

log = logging.getLogger(__name__)

DEFAULT_PROMPT = "Can you briefly describe what you hear in this audio?"  # AF-AudioSet's captioning prompt


class SamplingConfig(Strict):
    n: int = 20  # AF-AudioSet: 20 samples per clip, top-k 50, top-p 0.95
    top_k: int = 50
    top_p: float = 0.95
    temperature: float = 1.0
    max_new_tokens: int = 64


class EngineConfig(Strict):
    kind: str = "transformers"
    model: str = "Qwen/Qwen2-Audio-7B-Instruct"  # hub id or local save_pretrained directory
    prompts: list[str] = [DEFAULT_PROMPT]
    system_prompt: str | None = None
    sampling: SamplingConfig = SamplingConfig()
    device: str = "auto"  # auto: cuda when available
    dtype: str = "auto"  # auto: bfloat16 on GPU, float32 on CPU
    trust_remote_code: bool = False
    # transformers engine: requests sampled in one decode (batch clips_per_decode x n). A 7B ALM decoding one
    # clip's 20 samples is bound by launch overhead, not the GPU; 8 clips x 20 samples x ~350 tokens of KV cache
    # is ~28 GB at Qwen2-Audio-7B size (lower it on smaller GPUs). vLLM schedules its own batches.
    clips_per_decode: int = Field(8, ge=1)
    # transformers engine: the sampling loop's KV cache (see the module docstring). `compiled` runs every decode
    # at batch clips_per_decode x n (a short chunk is padded with its last clip) so that shapes never change.
    decode: Literal["auto", "static", "dynamic", "compiled"] = "auto"
    vllm: dict = {}  # extra keyword arguments for vllm.LLM (tensor_parallel_size, max_model_len, ...)


@dataclass
class Request:
    prompt: str
    audio: np.ndarray | None  # mono float32 at the engine's sample_rate, or None for text-only
    seed: int
    n: int


def render_prompt(processor, prompt: str, audio: bool, system: str | None = None) -> str:
    """The model's own chat template around one user turn (with one audio placeholder when audio)."""
    content = [{"type": "audio", "audio": "clip"}, {"type": "text", "text": prompt}] if audio else prompt
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def clean_caption(text: str) -> str:
    """Whitespace collapsed, wrapping quotes/bullets removed, first letter capitalised, final period."""
    text = re.sub(r"\s+", " ", text).strip().strip("\"'`*-• ").strip()
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


def dedupe(candidates: list[dict]) -> list[dict]:
    """Candidates with a non-empty, new text, in first-seen order; case and punctuation do not make a
    caption new."""
    seen, out = set(), []
    for c in candidates:
        norm = re.sub(r"[^a-z0-9 ]", "", c["text"].lower()).strip()
        if norm and norm not in seen:
            seen.add(norm)
            out.append(c)
    return out


def _resolve_device(device: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def auto_decode(full_attention: bool, cuda: bool, audio: bool) -> str:
    """What `decode: auto` runs. compiled where decodes keep one shape: an audio model on CUDA, whose prompts
    (clips of one duration) share one length (4.39 clips/s on an H100 at Qwen2-Audio-7B size against 2.68
    static). A text LLM's prompts vary in length: compiled would pad most chunks to `clips_per_decode` clips and
    recompile per cache size, so static. dynamic where the static cache cannot hold the model (sliding windows)."""
    if not full_attention:
        return "dynamic"
    return "compiled" if cuda and audio else "static"


class TransformersEngine:
    def __init__(self, cfg: EngineConfig):
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoProcessor
        from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES

        self.cfg = cfg
        self.name = f"transformers:{cfg.model}"
        self.device = _resolve_device(cfg.device)
        dtype = {"auto": torch.bfloat16 if self.device.startswith("cuda") else torch.float32,
                 "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.dtype]
        self.processor = AutoProcessor.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
        config = AutoConfig.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
        model_type = config.model_type
        features = getattr(self.processor, "feature_extractor", None)
        if cfg.decode != "dynamic":
            from transformers import StaticCache
            from transformers.cache_utils import StaticLayer

            full_attention = all(type(layer) is StaticLayer for layer in StaticCache(config=config, max_cache_len=1).layers)
            if cfg.decode == "auto":
                decode = auto_decode(full_attention, self.device.startswith("cuda"), audio=features is not None)
                self.cfg = cfg = cfg.model_copy(update={"decode": decode})
            elif not full_attention:
                raise ValueError(f"decode: {cfg.decode} needs full attention in every layer and {cfg.model} has "
                                 "sliding-window or other layers: use decode: dynamic")
        if cfg.decode == "compiled" and not self.device.startswith("cuda"):
            log.warning("decode: compiled compiles the decode step on CUDA only; on %s it runs as static", self.device)
        # Audio-language models (Qwen2-Audio, Audio Flamingo 3) are registered as seq2seq-causal LMs.
        auto = AutoModelForSeq2SeqLM if model_type in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES else AutoModelForCausalLM
        self.model = auto.from_pretrained(cfg.model, dtype=dtype, trust_remote_code=cfg.trust_remote_code)
        self.model.to(self.device).eval()
        self.sample_rate = int(features.sampling_rate) if features is not None else None
        # transformers >= 5.24 names the KV cache `cache` (`past_key_values` before, deprecated after)
        self._cache = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        self._fe_takes_device = features is not None and "device" in inspect.signature(features.__call__).parameters
        # the preallocated cache of `decode: static | compiled`, reused while its (rows, capacity) hold
        self._static, self._static_shape = None, None
        self.timings: dict[str, float] = defaultdict(float)  # seconds per stage, for the benchmark

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    def _inputs(self, req: Request) -> dict:
        text = render_prompt(self.processor, req.prompt, req.audio is not None, self.cfg.system_prompt)
        if req.audio is None:
            return self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        if self.sample_rate is None:
            raise ValueError(f"{self.cfg.model} has no audio feature extractor; it cannot caption audio")
        # Whisper-style extractors compute the log-mel on the model's device when asked: off the CPU on GPUs.
        extra = {"device": self.device} if self._fe_takes_device else {}
        return self.processor(text=text, audio=[req.audio], sampling_rate=self.sample_rate, return_tensors="pt", **extra)

    @torch.no_grad()
    def _sample(self, reqs: list[Request], inputs: list[dict]) -> list[list[str]]:
        """n samples for each of `reqs`, whose inputs have the same length, in one decode."""
        start = time.perf_counter()
        batch = {k: torch.cat([i[k] for i in inputs]).to(self.device) for k in inputs[0]}
        ids, mask = batch.pop("input_ids"), batch.pop("attention_mask")
        # Prefill everything but the last prompt token once per request (audio encoder included) ...
        prefill = self.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], use_cache=True, **batch)
        cache = getattr(prefill, self._cache)
        n, s = reqs[0].n, self.cfg.sampling
        if self.cfg.decode == "dynamic":
            cache.batch_repeat_interleave(n)
        else:
            cache = self._static_copy(cache, n, ids.shape[1] + s.max_new_tokens)
        # ... then sample n continuations per request from the shared cache (generate feeds only the last token).
        torch.manual_seed(reqs[0].seed)
        out = self.model.generate(input_ids=ids.repeat_interleave(n, 0), attention_mask=mask.repeat_interleave(n, 0),
                                  **{self._cache: cache}, do_sample=True, top_k=s.top_k, top_p=s.top_p,
                                  temperature=s.temperature, max_new_tokens=s.max_new_tokens,
                                  disable_compile=self.cfg.decode != "compiled")
        texts = self.tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
        self.timings["generate"] += time.perf_counter() - start
        return [texts[i * n: (i + 1) * n] for i in range(len(reqs))]

    def _static_copy(self, prefilled, n: int, length: int):
        """The prefilled cache, each request's rows repeated n times, copied into the engine's StaticCache. The
        cache holds `length` tokens rounded up to 64 and is reused while that and the batch hold, so a compiled
        decode step keeps its buffers (and CUDA graphs) from one decode to the next."""
        from transformers import StaticCache

        batch, _, prompt, _ = prefilled.layers[0].keys.shape
        rows = batch * n
        capacity = -(-length // 64) * 64
        if self._static is None or self._static_shape != (rows, capacity):
            self._static = None  # the old cache is freed before the new one is allocated
            self._static = StaticCache(config=self.model.config, max_cache_len=capacity)
            self._static_shape = (rows, capacity)
        for layer, source in zip(self._static.layers, prefilled.layers):
            if not layer.is_initialized:
                layer.lazy_initialization(*[t.new_empty((rows, *t.shape[1:2], 0, t.shape[3]))
                                            for t in (source.keys, source.values)])
            for to, block in ((layer.keys, source.keys), (layer.values, source.values)):
                to.view(batch, n, *to.shape[1:])[:, :, :, :prompt].copy_(block.unsqueeze(1))
                to[:, :, prompt:].zero_()  # masked until written, and nothing of the previous decode lingers
            layer.cumulative_length.fill_(prompt)
        return self._static

    def generate(self, requests: list[Request]) -> list[list[str]]:
        start = time.perf_counter()
        inputs = [self._inputs(r) for r in requests]
        self.timings["features"] += time.perf_counter() - start
        groups = defaultdict(list)  # same prompt length and n: one decode, no padding
        for i, (r, x) in enumerate(zip(requests, inputs)):
            groups[(x["input_ids"].shape[1], r.n, r.audio is None)].append(i)
        out: list[list[str] | None] = [None] * len(requests)
        for members in groups.values():
            for at in range(0, len(members), self.cfg.clips_per_decode):
                chunk = members[at: at + self.cfg.clips_per_decode]
                # a compiled decode keeps one batch size: a short chunk is padded with its last request
                pad = self.cfg.clips_per_decode - len(chunk) if self.cfg.decode == "compiled" else 0
                padded = chunk + chunk[-1:] * pad
                for i, texts in zip(chunk, self._sample([requests[i] for i in padded], [inputs[i] for i in padded])):
                    out[i] = texts
        return out


class VLLMEngine:
    """Thin adapter over vllm.LLM: requests are built here, scheduling and batching are vLLM's."""

    def __init__(self, cfg: EngineConfig):
        try:
            from vllm import LLM
        except ImportError as e:
            raise ImportError("the vllm engine needs vLLM: pip install 'capflow[vllm]' (GPU machines)") from e
        from transformers import AutoProcessor

        self.cfg = cfg
        self.name = f"vllm:{cfg.model}"
        self.processor = AutoProcessor.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
        features = getattr(self.processor, "feature_extractor", None)
        self.sample_rate = int(features.sampling_rate) if features is not None else None
        self.llm = LLM(**vllm_engine_args(cfg))
        self.timings: dict[str, float] = defaultdict(float)

    def generate(self, requests: list[Request]) -> list[list[str]]:
        from vllm import SamplingParams

        prompts, params = build_vllm_requests(self.processor, requests, self.cfg, self.sample_rate)
        start = time.perf_counter()
        outputs = self.llm.generate(prompts, sampling_params=[SamplingParams(**p) for p in params], use_tqdm=False)
        self.timings["generate"] += time.perf_counter() - start
        return parse_vllm_outputs(outputs)


def vllm_engine_args(cfg: EngineConfig) -> dict:
    """vllm.LLM's keyword arguments. Tensor parallelism inside a Ray actor follows vLLM's Ray documentation: the
    `ray` executor backend, whose rank workers take the GPUs of the actor's placement group (pools.actor_options
    reserves one GPU bundle per rank); no CUDA_VISIBLE_DEVICES is pinned here, Ray sets it per worker."""
    args = {"model": cfg.model, "trust_remote_code": cfg.trust_remote_code, "seed": 0, **cfg.vllm}
    if int(args.get("tensor_parallel_size", 1)) > 1:
        args.setdefault("distributed_executor_backend", "ray")
    return args


def build_vllm_requests(processor, requests: list[Request], cfg: EngineConfig,
                        sample_rate: int | None) -> tuple[list[dict], list[dict]]:
    """vLLM prompt dicts (text + multi_modal_data) and SamplingParams keyword dicts, one per request."""
    prompts, params = [], []
    s = cfg.sampling
    for r in requests:
        prompt = {"prompt": render_prompt(processor, r.prompt, r.audio is not None, cfg.system_prompt)}
        if r.audio is not None:
            prompt["multi_modal_data"] = {"audio": [(r.audio, sample_rate)]}
        prompts.append(prompt)
        params.append({"n": r.n, "seed": r.seed, "top_k": s.top_k, "top_p": s.top_p, "temperature": s.temperature,
                       "max_tokens": s.max_new_tokens})
    return prompts, params


def parse_vllm_outputs(outputs) -> list[list[str]]:
    """RequestOutput list -> texts per request, in request order (vLLM returns them in order)."""
    return [[c.text for c in out.outputs] for out in outputs]


ENGINES = {"transformers": TransformersEngine, "vllm": VLLMEngine}


def make_engine(cfg: EngineConfig):
    if cfg.kind not in ENGINES:
        raise ValueError(f"unknown caption engine {cfg.kind!r}; valid: {sorted(ENGINES)}")
    return ENGINES[cfg.kind](cfg)
