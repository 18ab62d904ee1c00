"""Captioning speed at Qwen2-Audio-7B size on one GPU (issue #20), in one run: the transformers engine's
clips/s with one clip per decode (the old engine) and with `clips_per_decode` clips, for each KV cache of the
sampling loop (`decode`: dynamic, static, compiled = static + the decode step compiled with CUDA graphs),
against plain `generate(num_return_sequences=n)` one clip at a time and 8 clips per call, with peak GPU memory
of each and the compiled decode's first-call (compile) time.

The model is built from its config with random weights (Whisper-large-v3 encoder + 7B Qwen LM, 8.4 B
parameters, bf16; nothing downloaded) around the tiny processor of `capflow tiny-models`; 10-s clips, 20
samples x 64 new tokens, top-k 50, top-p 0.95 (random weights never sample the end token, so every sample is
64 tokens). Target: >= 4 clips/s per H100. Without CUDA it prints "not measured"; `decode_rates` is the CPU
proxy that benchmarks/caption_throughput.py runs on the tiny model.

    python benchmarks/caption_gpu.py [--clips 16 --samples 20 --tokens 64 --clips-per-decode 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from captioner.engines import DEFAULT_PROMPT, EngineConfig, Request, SamplingConfig, TransformersEngine  # noqa: E402


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def clips(count: int, seconds: float = 10.0, rate: int = 16000) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(int(seconds * rate))).astype(np.float32) for _ in range(count)]


def decode_rates(engine: TransformersEngine, waves: list[np.ndarray], per_decode: list[int], samples: int,
                 decode: str = "dynamic") -> dict:
    """{clips_per_decode: clips/s} of the engine on the same requests (after a warm-up decode of each size,
    whose seconds go to engine.timings["warm-up"])."""
    rates = {}
    for size in per_decode:
        engine.cfg = engine.cfg.model_copy(update={"clips_per_decode": size, "decode": decode})
        start = time.perf_counter()
        engine.generate([Request(DEFAULT_PROMPT, w, seed=0, n=samples) for w in waves[:size]])  # warm-up
        sync()
        engine.timings["warm-up"] = time.perf_counter() - start
        start = time.perf_counter()
        engine.generate([Request(DEFAULT_PROMPT, w, seed=i, n=samples) for i, w in enumerate(waves)])
        sync()
        rates[size] = len(waves) / (time.perf_counter() - start)
    return rates


def full_size_alm(tiny_config):
    """Qwen2-Audio-7B's architecture (Whisper-large-v3 encoder, Qwen-7B LM), random bf16 weights on the GPU,
    with the tiny processor's special-token ids."""
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioEncoderConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2Config,
    )

    audio = Qwen2AudioEncoderConfig(num_mel_bins=128, encoder_layers=32, encoder_attention_heads=20,
                                    encoder_ffn_dim=5120, d_model=1280, max_source_positions=1500)
    text = Qwen2Config(vocab_size=156032, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=8192,
                       eos_token_id=tiny_config.text_config.eos_token_id, pad_token_id=tiny_config.text_config.pad_token_id)
    config = Qwen2AudioConfig(audio_config=audio, text_config=text, audio_token_index=tiny_config.audio_token_index)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = Qwen2AudioForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    model.generation_config.eos_token_id = text.eos_token_id
    model.generation_config.pad_token_id = text.pad_token_id
    return model.eval()


@torch.no_grad()
def plain_rate(engine: TransformersEngine, waves: list[np.ndarray], per_call: int, samples: int, tokens: int) -> float:
    """clips/s of plain generate(num_return_sequences=samples), `per_call` clips per call (no shared prefill)."""
    from captioner.engines import render_prompt

    text = render_prompt(engine.processor, DEFAULT_PROMPT, audio=True)

    def run(batch):
        inputs = engine.processor(text=[text] * len(batch), audio=batch, sampling_rate=engine.sample_rate,
                                  return_tensors="pt", padding=True).to(engine.device)
        engine.model.generate(**inputs, do_sample=True, top_k=50, top_p=0.95, max_new_tokens=tokens,
                              num_return_sequences=samples)

    run(waves[:per_call])  # warm-up
    sync()
    start = time.perf_counter()
    for at in range(0, len(waves), per_call):
        run(waves[at: at + per_call])
    sync()
    return len(waves) / (time.perf_counter() - start)


def peak(fn, *args):
    """(fn(*args), peak GiB allocated on the GPU while it ran)."""
    torch.cuda.reset_peak_memory_stats()
    value = fn(*args)
    return value, torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--clips-per-decode", type=int, default=8)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("GPU captioning at Qwen2-Audio-7B size (engine, plain generate, batched): not measured (no CUDA)")
        return
    from transformers import AutoConfig

    from captioner.tiny import write_tiny_alm

    with tempfile.TemporaryDirectory() as tmp:
        tiny = write_tiny_alm(Path(tmp) / "alm")
        engine = TransformersEngine(EngineConfig(model=str(tiny), device="cuda",
                                                 sampling=SamplingConfig(n=args.samples, max_new_tokens=args.tokens)))
        start = time.perf_counter()
        engine.model = full_size_alm(AutoConfig.from_pretrained(tiny))
        params = sum(p.numel() for p in engine.model.parameters())
        print(f"{torch.cuda.get_device_name()}: Qwen2-Audio-7B-size model, {params / 1e9:.2f} B parameters bf16, "
              f"random weights (built in {time.perf_counter() - start:.0f} s); {args.clips} clips of 10 s, "
              f"{args.samples} samples x {args.tokens} tokens, top-k 50, top-p 0.95")
        waves = clips(args.clips)
        few = waves[: max(args.clips // 2, 1)]
        many = args.clips_per_decode

        def engine_row(size: int, decode: str) -> None:
            rates, mem = peak(decode_rates, engine, few if size == 1 else waves, [size], args.samples, decode)
            rate = rates[size]
            print(f"engine, {size} clip(s) per decode, {decode:8s} cache: {rate:6.2f} clips/s  "
                  f"({rate * args.samples * args.tokens:7.0f} new tokens/s), peak {mem:5.1f} GiB, "
                  f"first decode {engine.timings['warm-up']:5.1f} s")

        for size, decode in ((1, "dynamic"), (many, "dynamic"), (many, "static")):
            engine_row(size, decode)
        engine._static = None  # the static cache is freed for the plain-generate rows
        torch.cuda.empty_cache()
        for per_call in (1, 8):
            rate, mem = peak(plain_rate, engine, few, per_call, args.samples, args.tokens)
            print(f"plain generate(num_return_sequences={args.samples}), {per_call} clip(s) per call: {rate:6.2f} clips/s, "
                  f"peak {mem:5.1f} GiB")
        print("target: engine >= 4 clips/s per H100")
        engine_row(many, "compiled")  # last: its first decode compiles (minutes at this size)


if __name__ == "__main__":
    main()
