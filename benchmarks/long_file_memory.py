"""Peak memory of `capflow edit` and `capflow separate` on long files, in one run: a 2-min and a 10-min stereo
44.1-kHz FLAC edited (the instruction editor) and separated (target + residual) from file to file, each in a fresh
process, the whole process's peak RSS printed with its ratio to the first file's. Files are streamed
(shards/audio.py: decoded a block at a time, windowed by shards/windows.py, written through a temporary file), so
the ratio should stay near 1 (issue #34's goal: at most 1.1x for 10 minutes against 2, at the commands' default
`--window-batch 8`). The in-memory path (`decode` -> `edit` -> `write`) runs beside it for comparison.

Tiny random models (`capflow tiny-models`); the model's own memory is the same at every length, so a real model
only adds a constant. The model's working memory is that of `--window-batch` windows.

    python benchmarks/long_file_memory.py [--minutes 2 10] [--window-batch 8] [--jobs edit] [--streamed-only]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _input(path: Path, minutes: float) -> None:
    """A stereo 44.1-kHz FLAC of noise, written a minute at a time."""
    import numpy as np
    import soundfile as sf

    rng, rate, left = np.random.default_rng(0), 44100, round(44100 * 60 * minutes)
    with sf.SoundFile(str(path), "w", rate, 2) as f:
        while left:
            n = min(left, rate * 60)
            f.write((0.1 * rng.standard_normal((n, 2))).astype(np.float32))
            left -= n


def _peak_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from the parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: kB on Linux, bytes on macOS


def _run(job: str, streamed: bool, source: str, models: str, out: str, window_batch: int, queue) -> None:
    """In a fresh process: load the model, then edit or separate `source`; report peak RSS (MB) at both points."""
    import torch

    from shards import audio

    torch.set_num_threads(1)
    if job == "edit":
        from finetune.editor import EditSampler, InstructionEditor
        from pretrain.pipeline import TextToAudio

        t2a = TextToAudio.from_pretrained(Path(models) / "t2a-untrained")
        editor = InstructionEditor(t2a.dit.add_source_input(), t2a.codec, t2a.text_encoder, EditSampler(steps=2))
        loaded = _peak_mb()
        if streamed:
            editor.edit_file(source, Path(out) / "edited.flac", "Remove the noise", window_batch=window_batch)
        else:
            audio.write(Path(out) / "edited.flac", editor.edit(audio.decode(source), "Remove the noise", window_batch=window_batch))
    else:
        from separation.embedder import Embedder
        from separation.model import Separator, preset
        from separation.pipeline import LanguageSeparator

        clap = Embedder(str(Path(models) / "clap"), "cpu")
        cfg = preset("tiny", ssl_dim=0, embed_dim=clap.dim)
        separator = LanguageSeparator(Separator(cfg).eval(), None, clap, None, cfg.sample_rate, 1.0, one_stage=True)
        loaded = _peak_mb()
        if streamed:
            separator.separate_file(source, "hum", Path(out) / "t.flac", Path(out) / "r.flac", window_batch=window_batch)
        else:
            target, rest = separator.separate(audio.decode(source), "hum", window_batch=window_batch)
            audio.write(Path(out) / "t.flac", target)
            audio.write(Path(out) / "r.flac", rest)
    queue.put((loaded, _peak_mb()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[2, 10],
                        help="file lengths; ratios are to the first (default 2 and 10: issue #34's goal, <= 1.1x)")
    parser.add_argument("--window-batch", type=int, default=8,
                        help="windows per forward (default 8, the commands' default)")
    parser.add_argument("--jobs", nargs="+", choices=["edit", "separate"], default=["edit", "separate"])
    parser.add_argument("--streamed-only", action="store_true", help="skip the in-memory path")
    args = parser.parse_args()
    from capflow.tiny import write_all_tiny_models

    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_all_tiny_models(root / "models")
        for minutes in args.minutes:
            _input(root / f"{minutes:g}.flac", minutes)
        for job in args.jobs:
            for streamed in (True,) if args.streamed_only else (True, False):
                base = None
                for minutes in args.minutes:
                    queue = ctx.Queue()
                    proc = ctx.Process(target=_run, args=(job, streamed, str(root / f"{minutes:g}.flac"),
                                                          str(root / "models"), tmp, args.window_batch, queue))
                    proc.start()
                    proc.join()
                    if proc.exitcode:
                        raise SystemExit(f"{job} of the {minutes:g}-min file failed (exit {proc.exitcode}); see above")
                    loaded, peak = queue.get()
                    base = base or peak
                    print(f"{job:<8} {'streamed' if streamed else 'in memory':<9} {minutes * 60:6.0f}-s file: peak RSS "
                          f"{peak:6.0f} MB (model loaded: {loaded:4.0f}), {peak / base:5.2f}x the first", flush=True)


if __name__ == "__main__":
    main()
