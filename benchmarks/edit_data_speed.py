"""Edit-data speed and memory on this machine, in one run: groups/s of `capflow edit-data` on CPU with the
share of time in decoding, mixing, CLAP scoring and FLAC encoding, and peak memory at two unit sizes (N/4
and N groups per unit, `batch_groups` N/4; the job's numpy allocations, traced): flat means a unit streams (at AudioSet scale a unit is 1000
groups). Beside it, the unit held whole (batch_groups = unit size: what edit-data did before it streamed).

Clips are 10-s procedural sounds (16 kHz mono and 22.05 kHz stereo) mixed at 44.1 kHz, as a VAE-rate job
would; CLAP is the random tiny one of `capflow tiny-models` (laion's CLAP costs more per clip: on a GPU it
is a few ms per 10-s clip).

    python benchmarks/edit_data_speed.py [--groups 32]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def child(models: Path, inputs: Path, out: Path, groups: int, unit: int, batch: int) -> None:
    """One edit-data job in this process; prints its summary and peak RSS as JSON."""
    from finetune.config import EditDataConfig
    from finetune.edit_data import run_edit_data

    cfg = EditDataConfig(inputs=[str(inputs)], output=str(out), unit_size=unit, batch_groups=batch, llm=None,
                         max_groups=groups, sample_rate=44100, groups_per_background=8, splits={"valid": 0.0, "test": 0.0},
                         clap={"model": str(models / "clap")})
    tracemalloc.start()  # numpy's buffers are traced: the job's own peak, not the imports' (torch, CLAP)
    summary = run_edit_data(cfg, progress=False)
    summary["peak_traced_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
    summary["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(summary))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=32)
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        models, inputs, out, *numbers = args.child
        return child(Path(models), Path(inputs), Path(out), *map(int, numbers))
    from capflow.tiny import write_all_tiny_models
    from captioner.synth import synth_captioned_set

    n, small = args.groups, max(1, args.groups // 4)
    runs = {"unit N/4, streamed": (small, small), "unit N, streamed": (n, small), "unit N, held whole": (n, n)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_all_tiny_models(tmp / "models")
        inputs = synth_captioned_set(tmp / "audio", num_clips=40, clips_per_shard=20, seconds=10.0, eval_share=0.0)
        print(f"edit-data on CPU ({os.cpu_count()} cores), {n} groups of 10-s clips mixed at 44.1 kHz stereo, tiny CLAP")
        results = {}
        for name, (unit, batch) in runs.items():
            proc = subprocess.run([sys.executable, __file__, "--child", str(tmp / "models"), str(inputs),
                                   str(tmp / name.replace(" ", "_").replace(",", "").replace("/", "")), str(n),
                                   str(unit), str(batch)], capture_output=True, text=True, check=True)
            r = results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
            stages = r["stage_seconds"]
            total = sum(stages.values())
            shares = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in sorted(stages.items(), key=lambda kv: -kv[1]) if v)
            print(f"  {name:20s} ({unit:3d} groups/unit, batches of {batch:3d}): {r['ok'] / r['seconds']:6.2f} groups/s "
                  f"({shares}); peak allocated {r['peak_traced_mb']:.0f} MB (process RSS {r['peak_rss_mb']:.0f} MB)")
        rss = {k: v["peak_traced_mb"] for k, v in results.items()}
        print(f"  peak memory, unit N / unit N/4, streamed: {rss['unit N, streamed'] / rss['unit N/4, streamed']:.2f} "
              f"(1.00 = flat); held whole: {rss['unit N, held whole'] / rss['unit N/4, streamed']:.2f}")


if __name__ == "__main__":
    main()
