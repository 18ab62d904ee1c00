"""Separation commands: `capflow train-separator | separate` (also `python -m separation ...`; `python -m
separation --config C` alone trains, for `accelerate launch -m separation --config C`)."""

from __future__ import annotations

import argparse
import sys

from shards.cli import package_main


def _train(args) -> int:
    from shards.config import load_config

    from .config import SeparationConfig
    from .train import run_separation

    overrides = args.set + (["separation.one_stage=true"] if args.one_stage else [])
    print(f"exported {run_separation(load_config(SeparationConfig, args.config, overrides), resume=args.resume)}")
    return 0


def _separate(args) -> int:
    import torch

    from pretrain.pipeline import check_bundle
    from shards.cli import check_jobs, check_test_set_output, read_batch

    from .pipeline import LanguageSeparator

    if args.batch:
        jobs = read_batch(args.batch, ("input", "query", "output"), ("residual",), ("input", "output", "residual"))
    elif len(args.args) == 2:
        jobs = [{"input": args.args[0], "query": args.args[1], "output": args.output, "residual": args.residual}]
    elif not args.test_set:
        raise ValueError('give MIXTURE and QUERY (e.g. mix.wav "dog barking" -o dog.wav), --batch F or --test-set D')
    else:
        jobs = []
    check_jobs(jobs, "query", "query", outputs=("output", "residual"))  # before any model loads
    if args.test_set:
        check_test_set_output(args.output)
        from shards.ontology import Ontology

        Ontology.load(args.ontology)
    check_bundle(args.checkpoint, "capflow-separator")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    separator = LanguageSeparator.from_pretrained(args.checkpoint, device=device, dtype=args.dtype)
    if args.test_set:
        from .eval_set import separation_test_set

        manifest = separation_test_set(separator, args.test_set, args.output, mixtures=args.mixtures, seed=args.seed,
                                       ontology=args.ontology)
        print(f"{manifest}\nevaluate: capflow evaluate {manifest} --metrics sdr,sdri,si_sdr,clap,clap_a,fad "
              f"(and {manifest.with_name('no_processing.jsonl')} for the no-processing row)")
        return 0
    for job in jobs:
        separator.separate_file(job["input"], job["query"], job["output"], job.get("residual"),
                                window_batch=args.window_batch, progress=sys.stderr.isatty())
        print(f"{job['output']}  <- {job['input']} + {job['query']!r}" + (f" (rest: {job['residual']})" if job.get("residual") else ""))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-separator", help="train Hybrid-Sep: stage query (query model) or separator (ACT)")
    p.add_argument("--config", required=True, help="YAML config, e.g. configs/separation/tiny-separator.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint directory: continue the same run exactly")
    p.add_argument("--one-stage", action="store_true",
                   help="ablation: condition the separator on the CLAP text embedding (no query model)")
    p.set_defaults(func=_train)

    p = sub.add_parser("separate", help="extract what a text describes from a mixture (and the rest: 'remove X')")
    p.add_argument("--checkpoint", required=True, help="a separation bundle (the export of stage separator)")
    p.add_argument("--window-batch", type=int, default=8,
                   help="windows of a long input separated per forward, all their channels (memory is one batch "
                        "whatever the input's length: files are streamed)")
    p.add_argument("args", nargs="*", metavar="MIXTURE QUERY", help="input audio (any format, rate, channels, length) "
                                                                   "and the text query")
    p.add_argument("-o", "--output", default=None, help="the extracted sound, e.g. dog.wav (--test-set: a folder)")
    p.add_argument("--residual", default=None, help="also write the mixture minus the target (removing the query)")
    p.add_argument("--batch", default=None, help="JSONL with input, query, output[, residual] per line")
    p.add_argument("--test-set", default=None, metavar="SHARDS",
                   help="separate synthetic mixtures (SNR -15..15 dB) of this shard set, for `capflow evaluate`")
    p.add_argument("--mixtures", type=int, default=100, help="with --test-set: how many mixtures")
    p.add_argument("--ontology", help="with --test-set: AudioSet's ontology.json; the two clips of a mixture then "
                                      "have no related labels (Music vs Guitar), as in training")
    p.add_argument("--seed", type=int, default=0, help="with --test-set: the mixing seed")
    p.add_argument("--device", default=None, help="cpu | cuda[:i] (default: cuda when available)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"],
                   help="the separator's precision; auto: bf16 autocast on CUDA (2.4x fp32's speed on an H100), fp32 "
                        "on CPUs")
    p.set_defaults(func=_separate)


def model_info(preset: str) -> str:
    """Parameter counts of a separation preset (`capflow model-info --preset sep-paper`)."""
    import torch

    from .model import Separator
    from .model import preset as separator_preset
    from .query import parameter_counts

    name = preset.removeprefix("sep-")
    query = parameter_counts(name)
    with torch.device("meta"):
        asm = Separator(separator_preset(name))
        cd = Separator(separator_preset(name), denoiser=True)
    count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    return (f"Hybrid-Sep preset {name!r} (millions of parameters)\n"
            f"  FE  (STFT + 3 transformer layers)   {query['fe']:9.2f}   (paper: 40)\n"
            f"  AET (deep transformer)              {query['aet']:9.2f}   (paper: 415)\n"
            f"  ASM (separator)                     {count(asm):9.2f}   (paper: 25)\n"
            f"  CD  (conditional denoiser, training only) {count(cd):6.2f}")


def extend_model_info(parser: argparse.ArgumentParser) -> None:
    """`capflow model-info --preset sep-tiny|sep-paper`: the DiT's command also counts the separation presets."""
    dit_info = parser.get_default("func")

    def info(args) -> int:
        if not args.preset.startswith("sep-"):
            return dit_info(args)
        print(model_info(args.preset))
        return 0

    parser.set_defaults(func=info)


def main(argv: list[str] | None = None) -> int:
    return package_main("separation", add_commands, argv, default="train-separator")
