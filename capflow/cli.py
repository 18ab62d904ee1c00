"""The `capflow` command: a thin umbrella over each package's own commands."""

from __future__ import annotations

import argparse
import logging
import sys

from captioner import cli as captioner_cli
from shards import cli as shards_cli
from shards.manifest import ConfigMismatch

from . import __version__


def _demo(args) -> int:
    from .demo import run_demo

    run_demo(args.workdir)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="capflow", description=__doc__)
    parser.add_argument("--version", action="version", version=f"capflow {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    captioner_cli.add_commands(sub)
    shards_cli.add_commands(sub)
    p = sub.add_parser("demo", help="the whole pipeline, offline, on tiny models and a synthetic corpus")
    p.add_argument("--workdir", default="demo", help="where everything is written (default ./demo)")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ConfigMismatch) as e:
        # Errors at the edges carry a message that says what to fix; print it without a traceback.
        if args.verbose:
            raise
        print(f"capflow {args.command}: error: {e}", file=sys.stderr)
        return 2
