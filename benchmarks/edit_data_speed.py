"""Edit-data speed on this machine, in one run: groups/s of `capflow edit-data` on CPU with the share of time
in decoding, mixing, CLAP scoring and FLAC encoding, and peak memory for N and 4N groups (flat means the job
streams: memory must not grow with the number of groups).

Clips are 10-s procedural sounds (16 kHz mono and 22.05 kHz stereo) mixed at 44.1 kHz, as a VAE-rate job
would; CLAP is the random tiny one of `capflow tiny-models` (laion's CLAP costs more per clip: on a GPU it
is a few ms per 10-s clip).

    python benchmarks/edit_data_speed.py [--groups 24]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def child(models: Path, inputs: Path, out: Path, groups: int) -> None:
    """One edit-data job in this process; prints its summary and peak RSS as JSON."""
    from finetune.config import EditDataConfig
    from finetune.edit_data import run_edit_data

    cfg = EditDataConfig(inputs=[str(inputs)], output=str(out), unit_size=16, llm=None, max_groups=groups,
                         sample_rate=44100, groups_per_background=8, splits={"valid": 0.0, "test": 0.0},
                         clap={"model": str(models / "clap")})
    summary = run_edit_data(cfg, progress=False)
    summary["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(summary))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=24)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        models, inputs, out, groups = args.child
        return child(Path(models), Path(inputs), Path(out), int(groups))
    from capflow.tiny import write_all_tiny_models
    from captioner.synth import synth_captioned_set

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_all_tiny_models(tmp / "models")
        inputs = synth_captioned_set(tmp / "audio", num_clips=40, clips_per_shard=20, seconds=10.0, eval_share=0.0)
        print(f"edit-data on CPU ({os.cpu_count()} cores), 10-s clips mixed at 44.1 kHz, tiny CLAP")
        results = {}
        for n in (args.groups, 4 * args.groups):
            proc = subprocess.run([sys.executable, __file__, "--child", str(tmp / "models"), str(inputs),
                                   str(tmp / f"edit{n}"), str(n)], capture_output=True, text=True, check=True)
            results[n] = json.loads(proc.stdout.strip().splitlines()[-1])
        for r in results.values():
            stages = r["stage_seconds"]
            total = sum(stages.values())
            shares = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in sorted(stages.items(), key=lambda kv: -kv[1]) if v)
            print(f"  {r['ok']:4d} groups: {r['ok'] / r['seconds']:6.2f} groups/s ({shares}); peak RSS {r['peak_rss_mb']:.0f} MB")
        small, large = results[args.groups], results[4 * args.groups]
        print(f"  peak memory {4 * args.groups} groups / {args.groups} groups: "
              f"{large['peak_rss_mb'] / small['peak_rss_mb']:.2f} (1.00 = flat)")


if __name__ == "__main__":
    main()
