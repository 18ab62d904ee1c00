"""Finetune commands: `capflow edit-data | finetune | edit` (also `python -m finetune ...`; `python -m finetune
--config C` alone trains, for `accelerate launch -m finetune --config C`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from shards.cli import package_main, positive


def _edit_data(args) -> int:
    from shards.config import load_config

    from .config import EditDataConfig
    from .edit_data import run_edit_data

    cfg = load_config(EditDataConfig, args.config, args.set)
    summary = run_edit_data(cfg, ray_address=args.ray_address)
    print(json.dumps(summary, indent=2))
    return 1 if summary["failed_units"] else 0


def _finetune(args) -> int:
    from shards.config import load_config

    from .config import FinetuneConfig
    from .train import run_finetune

    out = run_finetune(load_config(FinetuneConfig, args.config, args.set), resume=args.resume)
    print(f"exported {out}")
    if args.push_to_hub and (out / "capflow.json").is_file():
        from shards.card import publish

        publish(out, args.push_to_hub, "model", private=args.private, dry_run=args.dry_run)
    return 0


def _jobs(args) -> list[dict]:
    """{input, instruction, output, type, caption} of a single edit or of a --batch JSONL, checked (inputs readable,
    texts not empty, outputs writable) before any model loads."""
    from shards.cli import check_jobs, read_batch

    if args.batch:
        jobs = read_batch(args.batch, ("input", "instruction", "output"), ("type", "caption"))
    elif len(args.args) != 2:
        raise ValueError("give INPUT and INSTRUCTION (e.g. in.wav \"Remove the siren\" -o out.wav), --batch F or --test-set D")
    else:
        jobs = [{"input": args.args[0], "instruction": args.args[1], "output": args.output, "type": None, "caption": None}]
    check_jobs(jobs, "instruction", "instruction" if args.method == "instruction" else "target text")
    return jobs


def _write_manifest(args, rows: list[dict], text_is_caption: bool) -> None:
    """A --batch run's outputs as a `capflow evaluate` manifest beside the batch file (BATCH.edits.jsonl).
    CLAP scores an edit against the caption of what it should sound like: Imagic's text is that caption; an
    instruction ("Remove the bell") is not, so instruction edits carry the batch line's `caption` or none."""
    if not args.batch:
        return
    path = Path(args.batch).with_suffix(".edits.jsonl")
    root = path.parent.resolve()
    lines = []
    for r in rows:
        row = {"id": Path(r["output"]).stem, "path": os.path.relpath(Path(r["output"]).resolve(), root),
               "source": os.path.relpath(Path(r["input"]).resolve(), root), "group": r["type"],
               "instruction": r["instruction"], "seconds": round(r["seconds"], 4)}
        caption = r["instruction"] if text_is_caption else r.get("caption")
        lines.append(json.dumps(row | ({"caption": caption} if caption else {})))
    path.write_text("\n".join(lines) + "\n")
    with_caption = text_is_caption or all(r.get("caption") for r in rows)
    metrics = "clap,clap_src" if with_caption else "clap_src (text-CLAP needs each line's target `caption`)"
    print(f"{path}: the edits as a manifest for `capflow evaluate {path} --metrics {metrics}`")


def _span(text: str | None) -> tuple[float, float]:
    try:
        start, end = (float(v) for v in (text or "").split(":"))
    except ValueError:
        raise ValueError(f"--inpaint {text!r}: expected START:END in seconds, e.g. 3.0:5.5") from None
    if not 0 <= start < end:
        raise ValueError(f"--inpaint {text}: need 0 <= START < END")
    return start, end


def _inpaint(args, device: str, sampling: dict) -> int:
    """EzAudio's inpainting on any T2A bundle: regenerate a span from the text, the rest as context."""
    from pretrain.pipeline import TextToAudio, check_bundle
    from shards import audio

    if args.test_set or args.cfg_source is not None or args.t_start is not None:
        raise ValueError("--method inpaint takes INPUT TEXT or --batch with --inpaint START:END; --test-set, "
                         "--cfg-source and --t-start are for the instruction editor")
    start, end = _span(args.inpaint)
    jobs = _jobs(args)
    check_bundle(args.checkpoint, "capflow-t2a")
    t2a = TextToAudio.from_pretrained(args.checkpoint, device=device, dtype=args.dtype)
    for job in jobs:
        clip = audio.decode(job["input"])
        out = t2a.inpaint(clip, job["instruction"], start, end, boundary=args.boundary, **sampling)
        Path(job["output"]).parent.mkdir(parents=True, exist_ok=True)
        audio.write(job["output"], out)
        print(f"{job['output']}  <- {job['input']} with [{start:g}, {end:g}) s regenerated from {job['instruction']!r} "
              "(only the span changed, crossfaded inside its edges)")
    return 0


def _edit(args) -> int:
    import time

    import torch

    from pretrain.pipeline import check_bundle

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    sampling = {k: v for k, v in {"steps": args.steps, "cfg": args.cfg, "cfg_source": args.cfg_source,
                                  "rescale": args.rescale, "t_start": args.t_start, "method": args.sampler,
                                  "seed": args.seed}.items() if v is not None}
    from pretrain.pipeline import check_sampler

    check_sampler(args.checkpoint, args.sampler)  # before any model loads
    if args.method == "inpaint":
        return _inpaint(args, device, sampling)
    if args.method == "imagic":
        from pretrain.pipeline import TextToAudio

        from .imagic import ImagicConfig, ImagicEditor, check_length, imagic_edit_file, load_clap

        if args.test_set or args.cfg_source is not None or args.t_start is not None:
            raise ValueError("--method imagic takes INPUT TEXT or --batch; --test-set, --cfg-source and --t-start are "
                             "for the instruction editor")
        if args.dtype not in ("auto", "fp32"):
            raise ValueError(f"--method imagic fine-tunes the DiT, which it does in fp32; drop --dtype {args.dtype}")
        cfg = ImagicConfig(eta=args.eta, embed_steps=args.embed_steps, embed_lr=args.embed_lr, tune_steps=args.tune_steps,
                           tune_lr=args.tune_lr, lora_rank=None if args.full else args.lora_rank, inpaint=args.inpaint,
                           save_tuned=args.save_tuned, clap_model=args.clap_model, max_seconds=args.max_seconds)
        jobs = _jobs(args)
        check_bundle(args.checkpoint, "capflow-t2a")
        duration = _bundle_duration(args.checkpoint)
        for job in jobs:  # before any model loads
            check_length(job["seconds_in"], duration, cfg.max_seconds, job["input"])
        if cfg.save_tuned:
            from pretrain.pipeline import BUNDLE_FORMAT
            from shards.outputs import check_output_dir

            check_output_dir(cfg.save_tuned, BUNDLE_FORMAT, "--save-tuned")
        clap = load_clap(cfg.clap_model, device) if cfg.eta == "auto" and cfg.clap_model else None
        # one T2A bundle and one CLAP for the whole batch; the bundle is unchanged after every edit
        editor = ImagicEditor(TextToAudio.from_pretrained(args.checkpoint, device=device, dtype="fp32", compile=False),
                              cfg, clap=clap)
        for job in jobs:
            start = time.perf_counter()
            result = imagic_edit_file(editor, job["input"], job["instruction"], job["output"], **sampling)
            job["seconds"] = time.perf_counter() - start
            print(f"{job['output']}  <- {job['input']} + {job['instruction']!r} (eta {result['eta']:g})")
        _write_manifest(args, jobs, text_is_caption=True)
        return 0
    from .editor import InstructionEditor

    if args.test_set:
        from shards.cli import check_test_set_output

        check_test_set_output(args.output)
    jobs = [] if args.test_set else _jobs(args)
    check_bundle(args.checkpoint, "capflow-editor")
    editor = InstructionEditor.from_pretrained(args.checkpoint, device=device, dtype=args.dtype)
    if args.test_set:
        from .edit_eval import edit_test_set

        print(edit_test_set(editor, args.test_set, args.output, split=args.split, limit=args.limit, **sampling))
        return 0
    for job in jobs:
        start = time.perf_counter()
        editor.edit_file(job["input"], job["output"], job["instruction"], window_batch=args.window_batch,
                         progress=sys.stderr.isatty(), **sampling)
        job["seconds"] = time.perf_counter() - start
        print(f"{job['output']}  <- {job['input']} + {job['instruction']!r}")
    _write_manifest(args, jobs, text_is_caption=False)
    return 0


def _bundle_duration(checkpoint: str) -> float:
    """The seconds a T2A bundle generates (its sampler defaults), read without loading it."""
    from pretrain.pipeline import BUNDLE_NAME, SamplerDefaults

    path = Path(checkpoint) / BUNDLE_NAME
    sampler = json.loads(path.read_text()).get("sampler", {}) if path.is_file() else {}
    return SamplerDefaults(**sampler).duration


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("edit-data", help="captioned audio shards -> add/remove/replace edit-group shards")
    p.add_argument("--config", required=True, help="YAML config, e.g. configs/edit/audioset.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set max_groups=1000 (repeatable)")
    p.add_argument("--ray-address", default=None,
                   help="run on a Ray cluster (e.g. auto); default: ray.workers actors, or this process when 0")
    p.set_defaults(func=_edit_data)

    p = sub.add_parser("finetune", help="train the instruction editor (stage edit) from a text-to-audio bundle")
    p.add_argument("--config", required=True, help="YAML config, e.g. configs/finetune/tiny-edit.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint directory: continue the same run exactly")
    p.add_argument("--push-to-hub", default=None, metavar="REPO", help="upload the export to this Hub model repo")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    p.add_argument("--dry-run", action="store_true", help="with --push-to-hub: print what would be uploaded")
    p.set_defaults(func=_finetune)

    p = sub.add_parser("edit", help="edit audio: an instruction with an editor bundle, or --method imagic with a "
                                    "text-to-audio bundle and a target text")
    p.add_argument("--checkpoint", required=True, help="editor bundle (instruction) or T2A bundle (imagic); dir or hub id")
    p.add_argument("args", nargs="*", metavar="INPUT INSTRUCTION", help="input audio (any format, rate, channels) and "
                                                                       "the instruction (imagic: the target text)")
    p.add_argument("-o", "--output", default=None, help="output audio file, e.g. edited.wav (--test-set: a folder)")
    p.add_argument("--method", choices=["instruction", "imagic", "inpaint"], default="instruction",
                   help="instruction: the trained editor (default); imagic: non-rigid editing on a T2A model; "
                        "inpaint: regenerate the --inpaint span of INPUT from TEXT on a T2A model (EzAudio's editing)")
    p.add_argument("--batch", default=None, help="JSONL with input, instruction, output (optionally type, and caption: the target's caption, which text-CLAP scores) per line")
    p.add_argument("--test-set", default=None, metavar="EDIT_SET",
                   help="edit one triplet per operation of each group of --split in this audio edit-group set, "
                        "writing OUTPUT/edits.jsonl for `capflow evaluate`")
    p.add_argument("--split", default="test", help="with --test-set: the split (default test)")
    p.add_argument("--limit", type=int, default=None, help="with --test-set: at most this many groups")
    p.add_argument("--t-start", type=float, default=None, help="start on the path to the source (default 0.01; 0: noise)")
    p.add_argument("--steps", type=positive(int), default=None, help="sampling steps (default: the bundle's)")
    p.add_argument("--cfg", type=float, default=None, help="instruction (imagic: text) guidance scale")
    p.add_argument("--cfg-source", type=float, default=None, help="source guidance scale (two-scale guidance)")
    p.add_argument("--rescale", type=float, default=None, help="CFG rescale factor")
    p.add_argument("--sampler", choices=["euler", "heun", "ddim"], default=None,
                   help="solver (default: the bundle's): euler | heun for flow bundles, ddim for v-DDPM ones")
    p.add_argument("--seed", type=int, default=None, help="noise seed (default 0)")
    p.add_argument("--device", default=None, help="cpu | cuda[:i] (default: cuda when available)")
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="DiT precision (auto: bf16 on GPUs, fp32 on CPUs; imagic always fine-tunes in fp32)")
    p.add_argument("--window-batch", type=int, default=8,
                   help="windows of a long input edited per forward (memory is one batch whatever the input's length: "
                        "files are streamed)")
    p.add_argument("--inpaint", default=None, metavar="START:END",
                   help="imagic and inpaint: fill this span (seconds), keep the rest")
    p.add_argument("--boundary", type=float, default=2.0,
                   help="inpaint: seconds of context on each side of the span that the model hears (EzAudio: 2)")
    g = p.add_argument_group("imagic (--method imagic)")
    g.add_argument("--eta", default="auto", help="interpolation weight of the target text, or auto (a batched sweep)")
    g.add_argument("--embed-steps", type=int, default=500, help="text-embedding optimisation steps (paper: 500)")
    g.add_argument("--embed-lr", type=float, default=2e-3, help="its Adam learning rate (paper: 2e-3)")
    g.add_argument("--tune-steps", type=int, default=1500, help="DiT fine-tuning steps (paper: 1500)")
    g.add_argument("--tune-lr", type=float, default=None, help="its learning rate (default 1e-4 LoRA, 1e-6 full)")
    g.add_argument("--lora-rank", type=int, default=16, help="LoRA rank of the tuning step")
    g.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA (the paper's setting)")

    g.add_argument("--save-tuned", default=None, metavar="DIR", help="save the tuned model as a T2A bundle")
    g.add_argument("--max-seconds", type=float, default=None,
                   help="longest input Imagic takes (default 1.5 x the bundle's duration; it tunes on the whole clip)")
    g.add_argument("--clap-model", default="laion/larger_clap_general",
                   help="CLAP that scores the eta sweep (hub id or directory)")
    p.set_defaults(func=_edit)


def main(argv: list[str] | None = None) -> int:
    return package_main("finetune", add_commands, argv, default="finetune")  # `accelerate launch -m finetune --config C`
