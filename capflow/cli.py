"""The `capflow` command: a thin umbrella over each package's own commands."""

from __future__ import annotations

import argparse
import logging
import sys

from captioner import cli as captioner_cli
from evaluation import cli as evaluation_cli
from finetune import cli as finetune_cli
from pretrain import cli as pretrain_cli
from separation import cli as separation_cli
from shards import cli as shards_cli
from shards.cli import run_command

from . import __version__


def _tiny_models(args) -> int:
    from .tiny import write_all_tiny_models

    for name, path in write_all_tiny_models(args.directory, seed=args.seed).items():
        print(f"{name:<10} {path}")
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    run_demo(args.workdir)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="capflow", description="Unlabeled audio -> captioned datasets -> text-to-audio and audio-editing models. "
                                    "Each command has its own --help; the README has the full picture.")
    parser.add_argument("--version", action="version", version=f"capflow {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("tiny-models", help="tiny random models of every kind the pipeline loads (save_pretrained layout)")
    p.add_argument("directory", help="output directory")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=_tiny_models)
    captioner_cli.add_commands(sub)
    shards_cli.add_commands(sub)
    pretrain_cli.add_commands(sub)
    evaluation_cli.add_commands(sub)
    finetune_cli.add_commands(sub)
    separation_cli.add_commands(sub)
    separation_cli.extend_model_info(sub.choices["model-info"])
    p = sub.add_parser("demo", help="the whole pipeline, offline, on tiny models and a synthetic corpus")
    p.add_argument("--workdir", default="demo", help="where everything is written (default ./demo)")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format=shards_cli.LOG_FORMAT,
                        datefmt="%H:%M:%S")
    if not args.verbose:
        shards_cli.quiet_libraries()
    return run_command(args, f"capflow {args.command}", verbose=args.verbose)
