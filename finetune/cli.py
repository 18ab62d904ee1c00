"""Finetune commands: `capflow edit-data` (also `python -m finetune ...`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from shards.cli import run_command


def _edit_data(args) -> int:
    from shards.config import load_config

    from .config import EditDataConfig
    from .edit_data import run_edit_data

    cfg = load_config(EditDataConfig, args.config, args.set)
    summary = run_edit_data(cfg, ray_address=args.ray_address)
    print(json.dumps(summary, indent=2))
    return 1 if summary["failed_units"] else 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("edit-data", help="captioned audio shards -> add/remove/replace edit-group shards")
    p.add_argument("--config", required=True, help="YAML config, e.g. configs/edit/audioset.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set max_groups=1000 (repeatable)")
    p.add_argument("--ray-address", default=None,
                   help="run on a Ray cluster (e.g. auto); default: ray.workers actors, or this process when 0")
    p.set_defaults(func=_edit_data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    return run_command(args, f"python -m finetune {args.command}")
