"""Captioner commands: `capflow synth-corpus` (also `python -m captioner ...`)."""

from __future__ import annotations

import argparse

from shards.cli import package_main


def _synth(args) -> int:
    from .synth import synth_corpus

    out = synth_corpus(args.directory, num_clips=args.clips, num_missing=args.missing, num_corrupt=args.corrupt,
                       seed=args.seed)
    print(f"wrote an AudioSet-format corpus to {out}")
    return 0


def _caption(args) -> int:
    import json

    from shards.config import load_config

    from .config import CaptionConfig
    from .job import run_caption_job

    cfg = load_config(CaptionConfig, args.config, args.set)
    summary = run_caption_job(cfg, ray_address=args.ray_address)
    print(json.dumps({k: v for k, v in summary.items() if k != "stage_seconds"}, indent=2))
    return 1 if summary["failed_units"] else 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("caption", help="caption a corpus into audio shards (ALM captions, label enrichment, CLAP)")
    p.add_argument("--config", required=True, help="YAML config, e.g. configs/caption/tiny.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set clap.threshold=0.35 (repeatable)")
    p.add_argument("--ray-address", default=None, help="join a Ray cluster (e.g. auto); default: embedded local Ray")
    p.set_defaults(func=_caption)

    p = sub.add_parser("synth-corpus", help="a small AudioSet-format corpus of procedural sounds")
    p.add_argument("directory", help="output directory")
    p.add_argument("--clips", type=int, default=24, help="clips with audio (default 24)")
    p.add_argument("--missing", type=int, default=2, help="listed clips with no audio file (default 2)")
    p.add_argument("--corrupt", type=int, default=2, help="clips whose file is not decodable (default 2)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=_synth)


def main(argv: list[str] | None = None) -> int:
    return package_main("captioner", add_commands, argv)
