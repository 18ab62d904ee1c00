"""`capflow evaluate` (also `python -m evaluation`)."""

from __future__ import annotations

import argparse
import json


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
    cfg = load_config(EvalConfig, args.config, overrides)
    report = evaluate(cfg)
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
    p.set_defaults(func=_evaluate)


def main(argv: list[str] | None = None) -> int:
    from shards.cli import package_main

    return package_main("evaluation", add_commands, argv)
