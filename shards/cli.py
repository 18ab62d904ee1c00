"""`capflow shards validate|stats|release` (also `python -m shards ...`)."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a JSONL (one object per line) or CSV/TSV (with a header) file."""
    import csv

    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ","))


def read_batch(path: str | Path, required: tuple[str, ...], optional: tuple[str, ...] = (),
               path_keys: tuple[str, ...] = ("input", "output")) -> list[dict]:
    """The jobs of a --batch JSONL file (one JSON object per line; `path_keys` relative to the file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--batch {path}: no such file")
    jobs = []
    for n, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {n + 1} is not JSON ({e.msg})") from None
        if missing := [k for k in required if k not in row]:
            raise ValueError(f"{path}: line {n + 1} lacks {missing} (each line: {', '.join(required)}"
                             + (f", optionally {', '.join(optional)})" if optional else ")"))
        jobs.append({k: str(path.parent / row[k]) if k in path_keys and row.get(k) else row.get(k)
                     for k in (*required, *optional)})
    if not jobs:
        raise ValueError(f"{path}: no jobs (one JSON object per line)")
    return jobs


def positive(kind=float):
    """argparse type: a number above zero (0 steps or 0 seconds is a mistake, never "the default")."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return value
    return parse


def check_jobs(jobs: list[dict], text_key: str, text_name: str, outputs: tuple[str, ...] = ("output",)) -> None:
    """Every job's input decodable (its header read; `seconds` recorded in the job), its text not empty, its
    outputs writable with an audio format soundfile writes: checked before any model loads, one line naming
    what to fix."""
    import soundfile as sf

    from . import audio

    for job in jobs:
        job["seconds_in"] = audio.check_readable(job["input"])
        if not str(job.get(text_key) or "").strip():
            raise ValueError(f"{job['input']}: empty {text_name}; say what to do (the empty text is the model's "
                             "null condition for guidance, not a request)")
        for key in outputs:
            out = job.get(key)
            if not out and key == outputs[0]:
                raise ValueError(f"{job['input']}: no output; give -o OUT.wav (or `output` on the --batch line)")
            if not out:
                continue
            out = Path(out)
            if out.suffix.lower().lstrip(".").upper() not in sf.available_formats():
                raise ValueError(f"{out}: cannot write {out.suffix or 'a file without suffix'} audio; use .wav, .flac "
                                 "or .ogg")
            check_output_file(out)


def check_test_set_output(out: str | None) -> Path:
    """The folder a --test-set run writes its outputs and manifest into (files added, none removed)."""
    from .outputs import OutputError, check_writable

    if not out:
        raise ValueError("--test-set writes its outputs and a manifest into a folder: give -o DIR")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"-o {out} is a file; --test-set writes into a folder")
    return check_writable(out / "edits.jsonl")


def check_output_file(out: str | Path, what: str = "-o") -> Path:
    """An output file's path, refused in one line before any work when it is a folder or its folder cannot
    take a file (probed)."""
    from .outputs import OutputError, check_writable

    out = Path(out)
    if out.is_dir():
        raise OutputError(f"{what} {out} is a folder; give a file name, e.g. {out / 'out.wav'}")
    return check_writable(out, what)


def _validate(args) -> int:
    from .validate import validate

    problems = validate(args.directory, check_hashes=not args.no_hashes, progress=sys.stderr.isatty())
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} problem(s) in {args.directory}", file=sys.stderr)
        return 1
    print(f"{args.directory}: ok")
    return 0


def _stats(args) -> int:
    from .stats import write_stats

    stats = write_stats(args.directory, args.out, min_clap=args.min_clap)
    print(json.dumps({k: v for k, v in stats.items() if k != "top_labels"}, indent=2))
    return 0


def _release(args) -> int:
    from .card import publish
    from .release import release

    out = release(args.directory, args.out, with_audio=args.with_audio, license=args.license, name=args.name,
                  license_name=args.license_name, license_link=args.license_link, overwrite=args.overwrite,
                  progress=sys.stderr.isatty())
    print(f"released {args.directory} -> {out} (load with datasets.load_dataset({str(out)!r}))")
    if args.push_to_hub:
        publish(out, args.push_to_hub, "dataset", private=args.private, dry_run=args.dry_run)
    else:
        print(f"publish with: {release_command(args)} --push-to-hub USER/NAME "
              f"(or: hf upload USER/NAME {shlex.quote(str(out))} . --repo-type dataset --exclude '.*')")
    return 0


def release_command(args) -> str:
    """The command line that makes this same release again (the identity a publishing rerun must match)."""
    argv = ["capflow", "shards", "release", str(args.directory), str(args.out), "--license", args.license]
    argv += ["--with-audio"] if args.with_audio else []
    for flag in ("name", "license_name", "license_link"):
        if getattr(args, flag):
            argv += [f"--{flag.replace('_', '-')}", getattr(args, flag)]
    return shlex.join(argv)


def add_commands(sub: argparse._SubParsersAction) -> None:
    shards = sub.add_parser("shards", help="validate, summarise and release shard sets")
    cmds = shards.add_subparsers(dest="shards_command", required=True)

    p = cmds.add_parser("validate", help="check a shard set against its manifest (exit 1 on any problem)")
    p.add_argument("directory", help="shard set directory (with manifest.json)")
    p.add_argument("--no-hashes", action="store_true", help="skip sha256 checks (faster on large sets)")
    p.set_defaults(func=_validate)

    p = cmds.add_parser("stats", help="statistics and plots from the parquet sidecars")
    p.add_argument("directory", help="shard set directory")
    p.add_argument("--out", default=None, help="where to write stats.json and PNGs (default DIR/stats)")
    p.add_argument("--min-clap", type=float, default=0.35,
                   help="edit-group sets: the read-time CLAP filter whose kept triplets are counted (default 0.35)")
    p.set_defaults(func=_stats)

    p = cmds.add_parser("release", help="export as a Hugging Face dataset with a dataset card")
    p.add_argument("directory", help="shard set directory")
    p.add_argument("out", help="output directory (loadable with datasets.load_dataset)")
    p.add_argument("--with-audio", action="store_true", help="include the FLAC audio (default: captions and metadata)")
    p.add_argument("--license", default="unknown", help="Hub license id of the captions (e.g. cc-by-4.0; default unknown); `other` "
                   "needs --license-name and --license-link")
    p.add_argument("--license-name", default=None, help="short id of an `other` license")
    p.add_argument("--license-link", default=None, help="URL of an `other` license's text")
    p.add_argument("--name", default=None, help="dataset name on the card (default: the directory name)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier release in OUT (default: refuse)")
    p.add_argument("--push-to-hub", default=None, metavar="REPO", help="upload the release to this Hub dataset repo")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    p.add_argument("--dry-run", action="store_true", help="with --push-to-hub: print what would be uploaded")
    p.set_defaults(func=_release)


def run_command(args, prog: str, verbose: bool = False) -> int:
    """Run a parsed command. Errors at the edges (bad config, missing file, refused resume, a job that made
    nothing) carry a message that says what to fix: print it in one line, exit 2; others keep their trace."""
    from .config import JobFailed
    from .manifest import ConfigMismatch

    try:
        return args.func(args)
    except KeyboardInterrupt:  # one line, not the traces of every thread and actor; finished work is kept
        rerun = shlex.join([*prog.split()[:-1], *sys.argv[1:]])
        print(f"{prog}: interrupted; what finished is kept, and `{rerun}` goes on from there", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, NotADirectoryError, ConfigMismatch, JobFailed) as e:
        if verbose:
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def quiet_libraries() -> None:
    """accelerate/DeepSpeed log every file they save at INFO; keep the step line readable."""
    for name in ("accelerate", "DeepSpeed", "deepspeed", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.WARNING)


def package_main(package: str, add_commands, argv: list[str] | None, default: str | None = None) -> int:
    """`python -m PACKAGE COMMAND ...` with capflow's logging and errors. With `default`, arguments that start with
    an option run that command: `accelerate launch -m pretrain --config C` trains."""
    parser = argparse.ArgumentParser(prog=f"python -m {package}")
    add_commands(parser.add_subparsers(dest="command", required=True))
    argv = list(sys.argv[1:] if argv is None else argv)
    if default and argv and argv[0].startswith("-"):
        argv = [default, *argv]
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, datefmt="%H:%M:%S")
    quiet_libraries()
    return run_command(args, f"python -m {package} {args.command}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shards")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["shards", *(sys.argv[1:] if argv is None else argv)])
    return run_command(args, "python -m shards")
