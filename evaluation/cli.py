"""`capflow evaluate` (also `python -m evaluation`)."""

from __future__ import annotations

import argparse
import json
import sys


def _evaluate(args) -> int:
    from shards.config import load_config

    from .evaluate import EvalConfig, evaluate

    overrides = list(args.set)
    for flag, key in (("generated", "generated"), ("reference", "reference"), ("captions", "captions"),
                      ("models", "models"), ("out", "out")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    if args.metrics:
        overrides.append(f"metrics={json.dumps(args.metrics.split(','))}")
    if args.strict:
        overrides.append("strict=true")
    cfg = load_config(EvalConfig, args.config, overrides)
    report = evaluate(cfg)
    from .evaluate import skipped_generated

    if skipped := skipped_generated(report):
        first = next(iter(skipped))
        print(f"warning: {len(skipped)} of {report['n_generated']} generated clips could not be scored (first: "
              f"{first}: {skipped[first]}); the metrics are over the rest; see {cfg.out}/report.md (--strict "
              "refuses such a set)", file=sys.stderr)
    for name, result in report["metrics"].items():
        value = result.get("value")
        print(f"{name:<8} {'n/a' if value is None else f'{value:.4f}'}  ({result.get('backbone') or 'waveform'}, "
              f"{result.get('n_clips')} clips)")
    print(f"report: {cfg.out}/report.json, {cfg.out}/report.md")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="metrics of generated audio against a reference, with their protocol")
    p.add_argument("generated", nargs="?", default=None, help="folder of audio, JSONL/CSV manifest or shard set")
    p.add_argument("--reference", default=None, help="reference clips (same forms), matched by id")
    p.add_argument("--captions", default=None, help="JSONL/CSV with id and caption, for text-CLAP")
    p.add_argument("--metrics", default=None, help="comma-separated: fd,kl,is,fad,fad_inf,clap,clap_a,clap_src,lsd,mel,sdr,"
                   "sdri,si_sdr (default fd,kl,is,fad,clap)")
    p.add_argument("--models", default=None, help="a folder laid out like `capflow tiny-models` output "
                   "(panns-cnn14/, vggish/, clap/): every backbone is loaded from it")
    p.add_argument("--out", default=None, help="report folder (default ./eval)")
    p.add_argument("--config", default=None, help="YAML config (evaluation.evaluate.EvalConfig); flags override it")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--strict", action="store_true",
                   help="refuse a generated set with an unreadable, empty or non-finite clip (default: score the rest "
                        "and say how many were left out)")
    p.set_defaults(func=_evaluate)


def main(argv: list[str] | None = None) -> int:
    from shards.cli import package_main

    return package_main("evaluation", add_commands, argv)
