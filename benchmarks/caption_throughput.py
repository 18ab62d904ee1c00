"""Captioning throughput with the tiny models: clips/s end to end, milliseconds per clip for each stage,
and encoder forward passes per clip (one process, no Ray start-up in these numbers). Then, in the same run:

- planning: driver time and peak memory to read an AudioSet-format segment list, partition it and hash its
  units, per million rows (a synthetic list of --plan-rows rows, measured in a child process);
- decode batching (CPU proxy of benchmarks/caption_gpu.py): the ALM engine's clips/s with one clip per decode
  and with 8, on the same 10-s clips, and with 8 through the static KV cache (`alm.decode: static`);
- layouts: the same job on local Ray in the `pools` layout (ALM, LLM and CLAP actor pools fed by unit
  writers) and the `combined` layout (each actor holds every model), clips/s of each, start-up included.

Target (issue #3): CPU-side work (decode, resample, feature extraction, CLAP features, writing: everything
but the model forward passes) at most 25 ms per 10-second clip per core.

    python benchmarks/caption_throughput.py [--clips 48 --samples 20 --plan-rows 200000 --layout-clips 32]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.caption_gpu import clips as noise_clips  # noqa: E402
from benchmarks.caption_gpu import decode_rates  # noqa: E402
from capflow.tiny import write_all_tiny_models  # noqa: E402
from captioner.config import CaptionConfig  # noqa: E402
from captioner.sources import SourceConfig, load_items, partition  # noqa: E402
from captioner.synth import synth_corpus  # noqa: E402
from captioner.worker import CaptionWorker  # noqa: E402

CPU_STAGES = ("decode", "resample", "alm_features", "clap_features", "write")
MODEL_STAGES = ("alm_generate", "llm_generate", "clap")


def _plan(segments: Path, audio_dir: Path, unit_size: int, traced: bool, queue) -> None:
    """Child process: the driver's planning work, reporting seconds or (traced) the peak of Python
    allocations (tracemalloc: what planning holds, without the interpreter and library baseline; it slows
    allocation, so time is measured in a run without it)."""
    import tracemalloc

    from captioner.job import unit_hash

    if traced:
        tracemalloc.start()
    start = time.perf_counter()
    items = load_items(SourceConfig(kind="audioset", audio_dir=str(audio_dir), segments=[str(segments)]))
    hashes = [unit_hash(u) for u in partition(items, unit_size)]
    seconds = time.perf_counter() - start
    queue.put((len(items), len(hashes), seconds, tracemalloc.get_traced_memory()[1]))


def planning(tmp: Path, rows: int, unit_size: int = 1000) -> tuple[int, float, float]:
    """(rows, seconds, peak bytes) of planning a synthetic AudioSet segment list of `rows` rows."""
    import numpy as np

    rng = np.random.default_rng(0)
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
    ids = ["".join(r) for r in alphabet[rng.integers(0, len(alphabet), size=(rows, 11))]]
    segments = tmp / "segments.csv"
    with open(segments, "w") as f:
        f.write("# YTID, start_seconds, end_seconds, positive_labels\n")
        for ytid in ids:
            f.write(f'{ytid}, 30.000, 40.000, "/m/09x0r,/m/05zppz"\n')
    audio_dir = tmp / "plan_audio"
    audio_dir.mkdir()
    (audio_dir / f"{ids[0]}_30000.flac").write_bytes(b"")  # one clip present: the source is not empty
    results = []
    for traced in (False, True):
        queue = multiprocessing.get_context("spawn").Queue()
        child = multiprocessing.get_context("spawn").Process(target=_plan, args=(segments, audio_dir, unit_size,
                                                                                   traced, queue))
        child.start()
        results.append(queue.get())
        child.join()
    return results[0][0], results[0][2], results[1][3]


def layouts(tmp: Path, models: dict, clips: int, samples: int) -> dict[str, float]:
    """clips/s of the same job in the pools and the combined layout on local Ray (start-up included)."""
    import ray

    from captioner.job import run_caption_job

    corpus = synth_corpus(tmp / "layout_corpus", num_clips=clips, num_missing=0, num_corrupt=0)
    rates = {}
    for layout in ("pools", "combined"):
        cfg = CaptionConfig.model_validate({
            "source": SourceConfig(kind="audioset", audio_dir=str(corpus / "audio"),
                                   segments=[str(corpus / "balanced_train_segments.csv")],
                                   strong=[str(corpus / "audioset_train_strong.tsv")]).model_dump(),
            "output": str(tmp / f"layout_{layout}"), "unit_size": 8, "batch_clips": 4,
            "alm": {"model": str(models["alm"]), "sampling": {"n": samples, "max_new_tokens": 16}},
            "labels": {"engine": {"model": str(models["llm"]), "prompts": [], "sampling": {"n": 3, "max_new_tokens": 16}}},
            "clap": {"model": str(models["clap"]), "threshold": -1.0},
            "ray": {"layout": layout, "workers": 2, "num_cpus": 0.25}})
        start = time.perf_counter()
        summary = run_caption_job(cfg, progress=False)
        rates[layout] = summary["ok"] / (time.perf_counter() - start)
        ray.shutdown()
    return rates


FREEZE_DIR: Path | None = None  # set by frozen_actor; the actor class is pickled by value, with it


class _FreezingEngineActor:
    """The first ALM actor to start freezes its whole process (SIGSTOP) on its second call, in every
    incarnation Ray restarts: the frozen-GPU case of issue #35 (a hung driver, a stuck NCCL call)."""

    def __init__(self, spec: dict):
        import ray

        from captioner.pools import EngineActor

        self.inner = EngineActor(spec)
        claim, me = FREEZE_DIR / "claim", ray.get_runtime_context().get_actor_id()
        try:
            with open(claim, "x") as f:
                f.write(me)
        except FileExistsError:
            pass
        self.frozen = spec["model"].endswith("alm") and claim.read_text() == me
        self.calls = 0

    def info(self):
        return self.inner.info()

    def generate(self, requests):
        import signal

        self.calls += 1
        if self.frozen and self.calls > 1:
            os.kill(os.getpid(), signal.SIGSTOP)
        return self.inner.generate(requests)


def frozen_actor(tmp: Path, models: dict, clips: int, samples: int, actors: int = 3) -> dict[str, float]:
    """clips/s of the pools layout with `actors` ALM actors, none frozen and one frozen, in one run."""
    import cloudpickle
    import ray

    import captioner.pools as pools
    from captioner.job import run_caption_job

    global FREEZE_DIR
    corpus = synth_corpus(tmp / "frozen_corpus", num_clips=clips, num_missing=0, num_corrupt=0)
    rates = {}
    for case in ("none frozen", "one frozen"):
        FREEZE_DIR = tmp / f"freeze_{case.split()[0]}"
        FREEZE_DIR.mkdir()
        original = pools.EngineActor
        if case == "one frozen":
            cloudpickle.register_pickle_by_value(sys.modules[__name__])
            pools.EngineActor = _FreezingEngineActor
        cfg = CaptionConfig.model_validate({
            "source": SourceConfig(kind="audioset", audio_dir=str(corpus / "audio"),
                                   segments=[str(corpus / "balanced_train_segments.csv")]).model_dump(),
            "output": str(tmp / f"frozen_{case.split()[0]}"), "unit_size": 4, "batch_clips": 2,
            "alm": {"model": str(models["alm"]), "sampling": {"n": samples, "max_new_tokens": 16}},
            "labels": {"enabled": False}, "clap": {"model": str(models["clap"]), "threshold": -1.0},
            "ray": {"workers": actors, "num_cpus": 0.1, "alm": {"actors": actors, "num_cpus": 0.1},
                    "clap": {"num_cpus": 0.1}, "call_timeout": 15.0, "max_restarts": 1}})
        try:
            start = time.perf_counter()
            summary = run_caption_job(cfg, progress=False)
            rates[case] = summary["ok"] / (time.perf_counter() - start)
        finally:
            pools.EngineActor = original
            if case == "one frozen":
                cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
            ray.shutdown()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--samples", type=int, default=20, help="captions per clip (AF-AudioSet: 20)")
    parser.add_argument("--unit-size", type=int, default=16)
    parser.add_argument("--plan-rows", type=int, default=200_000, help="rows of the synthetic planning list")
    parser.add_argument("--layout-clips", type=int, default=32, help="clips of the pools-vs-combined comparison")
    parser.add_argument("--frozen-only", action="store_true",
                        help="only the frozen-actor comparison (3 ALM actors, one SIGSTOPped, against none)")
    args = parser.parse_args()
    if args.frozen_only:
        with tempfile.TemporaryDirectory() as tmp:
            models = write_all_tiny_models(Path(tmp) / "models")
            rates = frozen_actor(Path(tmp), models, args.layout_clips, args.samples)
        print(f"pools layout, 3 ALM actors, {args.layout_clips} clips: none frozen {rates['none frozen']:.2f} clips/s, "
              f"one frozen {rates['one frozen']:.2f} clips/s -> {rates['one frozen'] / rates['none frozen']:.2f} "
              "(2/3 = 0.67 if the frozen one only left the routing; deadlines and restarts cost more)")
        return
    torch.set_num_threads(1)  # "per core"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = synth_corpus(tmp / "corpus", num_clips=args.clips, num_missing=0, num_corrupt=0)
        models = write_all_tiny_models(tmp / "models")
        cfg = CaptionConfig.model_validate({
            "source": SourceConfig(kind="audioset", audio_dir=str(corpus / "audio"),
                                   segments=[str(corpus / "balanced_train_segments.csv")],
                                   strong=[str(corpus / "audioset_train_strong.tsv")]).model_dump(),
            "output": str(tmp / "shards"), "unit_size": args.unit_size,
            "alm": {"model": str(models["alm"]), "sampling": {"n": args.samples, "max_new_tokens": 16}},
            "labels": {"engine": {"model": str(models["llm"]), "prompts": [], "sampling": {"n": 3, "max_new_tokens": 16}}},
            "clap": {"model": str(models["clap"]), "threshold": -1.0}, "ray": {"workers": 0}})
        worker = CaptionWorker(cfg)
        encoder_calls = []
        worker.alm.model.model.audio_tower.register_forward_hook(
            lambda m, args, out: encoder_calls.append(args[0].shape[0]))  # clips per encoder pass
        units = partition(load_items(cfg.source), cfg.unit_size)
        worker.process_unit(0, units[0][:2], tmp / "warmup")  # warm-up: lazy imports, first-call allocations
        encoder_calls.clear()
        totals: Counter[str] = Counter()
        start = time.perf_counter()
        clips = 0
        for i, unit in enumerate(units):
            result = worker.process_unit(i, unit, tmp / "shards")
            totals.update(result["timings"])
            clips += result["samples"]
        wall = time.perf_counter() - start
        encoder_passes = list(encoder_calls)
        # The ALM's log-mel alone (it runs inside alm_features), to show what a GPU node keeps on its CPUs:
        # there both log-mels run on the GPU (the Whisper extractor is given device=cuda, CLAP's is torch).
        wave = (0.1 * torch.randn(16000 * 10)).numpy()
        fe = worker.alm.processor.feature_extractor
        t0 = time.perf_counter()
        for _ in range(10):
            fe([wave], sampling_rate=16000, padding="max_length", return_attention_mask=True, return_tensors="pt")
        whisper_ms = (time.perf_counter() - t0) * 100
        date = time.strftime("%Y-%m-%d")
        batching = decode_rates(worker.alm, noise_clips(16), [1, 8], args.samples)
        static = decode_rates(worker.alm, noise_clips(16), [8], args.samples, decode="static")[8]
        plan_rows, plan_s, plan_bytes = planning(tmp, args.plan_rows)
        torch.set_num_threads(os.cpu_count() or 1)
        rates = layouts(tmp, models, args.layout_clips, args.samples)

    print(f"{clips} clips of 10 s, {args.samples} ALM samples + 3 LLM samples per clip, 1 thread, tiny models")
    print(f"end to end: {clips / wall:.2f} clips/s ({1e3 * wall / clips:.1f} ms/clip)")
    print(f"{'stage':<16}{'ms/clip':>10}")
    for stage in CPU_STAGES + MODEL_STAGES:
        print(f"{stage:<16}{1e3 * totals.get(stage, 0.0) / clips:>10.2f}")
    cpu = sum(totals.get(s, 0.0) for s in CPU_STAGES) * 1e3 / clips
    print(f"CPU-side work, all on this CPU: {cpu:.1f} ms per 10-s clip per core (target <= 25): ratio {cpu / 25:.2f}")
    gpu_node = cpu - whisper_ms - 1e3 * totals.get("clap_features", 0.0) / clips
    print(f"  of which log-mels (ALM {whisper_ms:.1f} ms, CLAP {1e3 * totals.get('clap_features', 0.0) / clips:.1f} ms) "
          f"run on the GPU on a GPU node; CPU-side left there: {gpu_node:.1f} ms: ratio {gpu_node / 25:.2f} ({date})")
    print(f"audio-encoder passes per clip: {sum(encoder_passes) / clips:.2f} (with {args.samples} samples/clip), "
          f"{sum(encoder_passes) / max(len(encoder_passes), 1):.1f} clips per pass")
    print(f"decode batching, tiny ALM, 16 clips x {args.samples} samples: 1 clip per decode {batching[1]:.2f} clips/s, "
          f"8 per decode {batching[8]:.2f} clips/s -> {batching[8] / batching[1]:.2f}x; 8 per decode with the static "
          f"cache {static:.2f} clips/s -> {static / batching[8]:.2f}x the dynamic one")
    per_m = 1e6 / plan_rows
    print(f"planning {plan_rows:,} AudioSet rows: {plan_s:.2f} s, peak +{plan_bytes / 2**20:.0f} MiB -> per million rows "
          f"{plan_s * per_m:.1f} s and {plan_bytes * per_m / 2**30:.2f} GiB")
    print(f"layouts on local Ray ({args.layout_clips} clips, 2 writers/actors, start-up included): pools "
          f"{rates['pools']:.2f} clips/s, combined {rates['combined']:.2f} clips/s -> pools/combined "
          f"{rates['pools'] / rates['combined']:.2f}")


if __name__ == "__main__":
    main()
