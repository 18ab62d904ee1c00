"""Separation speed, in one run: the real-time factor (seconds of compute per second of audio, batch 1, 10-s
input) of the Hybrid-Sep separator (tiny and paper presets; the paper's query model too), side by side with
AudioSep's ResUNet30 built from its public source with random weights (`--audiosep-src PATH`: a checkout of
github.com/Audio-AGI/AudioSep, plus `pip install torchlibrosa librosa`; nothing is vendored); and training
mixtures/s of the on-the-fly loader alone against loader + ACT step (the loader's headroom).

The paper reports RTF 0.003 on a V100 for Hybrid-Sep; on a GPU the same presets run where CUDA exists.

    python benchmarks/separate_speed.py [--audiosep-src PATH] [--steps 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.timing import best_of  # noqa: E402
from separation.model import Separator, preset  # noqa: E402
from separation.query import QueryModel  # noqa: E402
from separation.query import preset as query_preset  # noqa: E402


def rtf(fn, seconds: float) -> float:
    return best_of(fn, warmup=True) / seconds


@torch.no_grad()
def separator_rtfs(device: str, audiosep_src: str | None) -> None:
    seconds = 10.0
    for name in ("tiny", "paper"):
        cfg = preset(name, ssl_dim=0)
        asm = Separator(cfg).to(device).eval()
        x, e = torch.randn(1, int(seconds * cfg.sample_rate), device=device), torch.randn(1, cfg.embed_dim, device=device)
        r = rtf(lambda asm=asm, x=x, e=e: asm(x, e), seconds)
        query = QueryModel(query_preset(name, sample_rate=cfg.sample_rate)).to(device).eval()
        q = rtf(lambda query=query, x=x, e=e: query(e, x, e), seconds)  # e stands for both CLAP embeddings
        print(f"  Hybrid-Sep {name:<5} separator RTF {r:.4f}  (+ query model {q:.4f} = {r + q:.4f}) "
              f"at {cfg.sample_rate} Hz, {sum(p.numel() for p in asm.parameters()) / 1e6:.1f} M separator parameters")
    if not audiosep_src:
        print("  AudioSep ResUNet30: not measured (give --audiosep-src PATH to a checkout of Audio-AGI/AudioSep)")
        return
    sys.path.insert(0, str(Path(audiosep_src).resolve()))
    try:
        from models.resunet import ResUNet30
    except ImportError as e:
        print(f"  AudioSep ResUNet30: not measured ({e}; pip install torchlibrosa librosa)")
        return
    model = ResUNet30(input_channels=1, output_channels=1, condition_size=512).to(device).eval()
    x, c = torch.randn(1, 1, int(seconds * 32000), device=device), torch.randn(1, 512, device=device)
    r = rtf(lambda: model({"mixture": x, "condition": c}), seconds)
    print(f"  AudioSep ResUNet30           RTF {r:.4f}  at 32000 Hz, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters (random weights, its own code)")


@torch.no_grad()
def gpu_precisions(seconds: float = 10.0) -> None:
    """The paper preset's separator + query model on the GPU under each numeric setting, batch 1 (the paper's
    RTF) and 8 windows per forward (what `separate` runs), with each output's SNR against strict fp32."""
    cfg = preset("paper", ssl_dim=0)
    asm = Separator(cfg).cuda().eval()
    query = QueryModel(query_preset("paper", sample_rate=cfg.sample_rate)).cuda().eval()
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(8, int(seconds * cfg.sample_rate), device="cuda", generator=g)
    e = torch.randn(8, cfg.embed_dim, device="cuda", generator=g)

    def run(batch: int, dtype) -> torch.Tensor:
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            return asm(x[:batch], query(e[:batch], x[:batch], e[:batch]))[0].float()

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    reference = run(8, None)  # strict fp32 (torch's defaults leave TF32 on in cuDNN)
    for name, tf32, dtype in (("fp32", False, None), ("tf32", True, None), ("bf16 autocast", False, torch.bfloat16)):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        one = rtf(lambda dtype=dtype: run(1, dtype), seconds)
        eight = rtf(lambda dtype=dtype: run(8, dtype), 8 * seconds)
        y = run(8, dtype)
        snr = 10 * torch.log10(reference.pow(2).sum() / (y - reference).pow(2).sum().clamp(min=1e-20))
        print(f"  paper preset {name:<14} RTF batch 1 {one:.4f}, 8 windows per forward {eight:.4f} (per second of "
              f"audio); output SNR against fp32 {snr:5.1f} dB")
    torch.backends.cudnn.allow_tf32 = True  # torch's defaults
    torch.backends.cuda.matmul.allow_tf32 = False


def loader_headroom(steps: int, workers: int) -> None:
    from capflow.tiny import write_all_tiny_models
    from separation.config import SeparationConfig
    from separation.train import SeparatorTrainer
    from tests.helpers import two_class_set

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = write_all_tiny_models(tmp / "models")
        shards = two_class_set(tmp / "data", clips=64, seconds=4.0)
        cfg = SeparationConfig.model_validate({
            "output_dir": str(tmp / "run"), "tensorboard": False, "steps": steps, "batch_size": 8, "save_every": 10**6,
            "log_every": 10**6, "data": {"shards": [str(shards)], "micro_batch_size": 8, "num_workers": workers, "shuffle": 16},
            "validation": {"every": 0}, "separation": {"clap_model": str(models["clap"]), "chunk": 2.0}})
        trainer = SeparatorTrainer(cfg)
        batches = iter(trainer.make_stream())
        next(batches)
        start = time.perf_counter()
        for _ in range(steps):
            next(batches)
        loader = steps * 8 / (time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(steps):
            batch = next(trainer.batches)
            d = trainer.discriminator_loss(batch)
            trainer.acc.backward(d)
            trainer.opt_d.step()
            trainer.opt_d.zero_grad()
            trainer.acc.backward(trainer.loss(batch))
            trainer.optimizer.step()
            trainer.optimizer.zero_grad()
        train = steps * 8 / (time.perf_counter() - start)
        print(f"  training, tiny preset, 2-s mixtures, batch 8, mixing {'in a loader worker' if workers else 'in the training process'}: loader alone "
              f"{loader:.1f} mixtures/s, loader + ACT step {train:.1f} mixtures/s (headroom {loader / train:.1f}x)")


@torch.no_grad()
def ssl_features(device: str) -> None:
    """The SSL branch's input path on a training batch (8 mixtures of 4 s at 44.1 kHz, the tiny wav2vec 2.0):
    resampling and normalising the batch on the device (SSLEncoder) against the per-clip path transformers'
    extractor takes (soxr per clip on the CPU, the extractor's numpy normalisation, then the device)."""
    import numpy as np
    import soxr

    from separation.ssl import SSLEncoder, write_tiny_ssl

    with tempfile.TemporaryDirectory() as tmp:  # the tiny encoder alone (the GPU machine lacks panns_inference)
        ssl = SSLEncoder(str(write_tiny_ssl(Path(tmp) / "ssl")), device)
    waves = torch.randn(8, 4 * 44100, device=device)

    def per_clip():
        clips = [soxr.resample(w, 44100, ssl.sample_rate) for w in waves.cpu().numpy()]
        inputs = ssl.extractor([np.asarray(c, np.float32) for c in clips], sampling_rate=ssl.sample_rate,
                               return_tensors="pt", padding=True).to(device)
        return ssl.model(**inputs).last_hidden_state

    batched, clipwise = best_of(lambda: ssl(waves, 44100), warmup=True), best_of(per_clip, warmup=True)
    print(f"  SSL features on {device}, 8 x 4-s mixtures at 44.1 kHz (tiny encoder): batched on the device "
          f"{batched * 1e3:.1f} ms, per clip through the CPU {clipwise * 1e3:.1f} ms ({clipwise / batched:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audiosep-src", default=None)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--gpu-only", action="store_true", help="only the GPU rows (no CPU rows, no loader)")
    args = parser.parse_args()
    if args.gpu_only:
        if torch.cuda.is_available():
            separator_rtfs("cuda", args.audiosep_src)
            gpu_precisions()
            ssl_features("cuda")
        else:
            print("GPU: not measured (no CUDA device)")
        return
    print(f"CPU ({os.cpu_count()} cores), 10-s inputs, batch 1, random weights:")
    separator_rtfs("cpu", args.audiosep_src)
    if torch.cuda.is_available():
        print("GPU:")
        separator_rtfs("cuda", args.audiosep_src)
        gpu_precisions()
    else:
        print("GPU: not measured (no CUDA device)")
    ssl_features("cpu")
    if torch.cuda.is_available():
        ssl_features("cuda")
    else:
        print("  SSL features on cuda: not measured (no CUDA device)")
    for workers in (0, 1):  # mixing in the training process, then in a loader worker beside it
        loader_headroom(args.steps, workers)


if __name__ == "__main__":
    main()
