"""Model and training commands: `capflow encode | train-codec | pretrain | generate | model-info` (also `python -m pretrain ...`;
`python -m pretrain --config C` alone trains, for `accelerate launch -m pretrain --config C`)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from shards.cli import package_main, positive


def _model_info(args) -> int:
    from .info import format_info, model_info

    info = model_info(args.preset, adaln=args.adaln, text=not args.no_text, long_skip=not args.no_long_skip)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40] or "untitled"


def read_prompts(path: Path) -> list[dict]:
    """{id, caption} rows of a prompts file: JSONL or CSV/TSV with `id` and `caption` (or `prompt`/`text`)
    columns, e.g. AudioCaps' test captions with their ids; or plain text, one prompt per line (blank and `#`
    lines skipped), ids made from the line number and the prompt."""
    from shards.cli import read_rows

    if not path.is_file():
        raise FileNotFoundError(f"--prompts-file {path}: no such file")
    if path.suffix.lower() not in (".jsonl", ".csv", ".tsv"):
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
        return [{"id": f"{i:04d}_{_slug(line)}", "caption": line} for i, line in enumerate(lines)]
    rows, out = read_rows(path), []
    for n, row in enumerate(rows):
        caption = next((row[k] for k in ("caption", "prompt", "text") if row.get(k) is not None), None)
        if caption is None:
            raise ValueError(f"{path}: row {n + 1} has no caption (columns: id, caption)")
        clip_id = str(row.get("id") if row.get("id") not in (None, "") else f"{n:04d}_{_slug(caption)}")
        out.append({"id": re.sub(r"[^A-Za-z0-9_.-]", "_", clip_id), "caption": str(caption).strip()})
    return out


def _prompts(args) -> list[dict]:
    """The {id, caption} prompts of a generate call, and its output checked, before any model loads: no empty
    prompt, no id twice; one prompt writes the file -o, several write ID.wav each into the folder -o."""
    import soundfile as sf

    from shards.cli import check_output_file
    from shards.outputs import OutputError, check_writable

    prompts = [{"id": f"{i:04d}_{_slug(p)}", "caption": p} for i, p in enumerate(args.prompt)]
    if args.prompts_file:
        prompts += read_prompts(Path(args.prompts_file))
    if not prompts:
        raise ValueError("give a prompt, or --prompts-file with one prompt per line")
    if any(not p["caption"].strip() for p in prompts):
        raise ValueError("empty prompt; say what to generate (the empty text is the model's null condition for "
                         "guidance, not a request)")
    if len({p["id"] for p in prompts}) < len(prompts):
        raise ValueError("an id is given to two prompts; ids name the output files and must be unique")
    out = Path(args.output)
    if len(prompts) == 1:
        if out.suffix.lstrip(".").upper() not in sf.available_formats():
            raise ValueError(f"-o {out}: cannot write {out.suffix or 'a file without suffix'} audio; use .wav, "
                             ".flac or .ogg")
        check_output_file(out)
    elif out.suffix.lstrip(".").upper() in sf.available_formats() or out.is_file():
        raise OutputError(f"-o {out}: {len(prompts)} prompts write one file each into a folder; give a folder, "
                          f"e.g. -o {out.with_suffix('')}")
    else:
        check_writable(out / MANIFEST)
    return prompts


MANIFEST = "prompts.jsonl"  # a folder of generations: id, path, caption per clip, for `capflow evaluate`


def _generate(args) -> int:
    import torch

    from shards.audio import Audio, write

    from .pipeline import TextToAudio, check_sampler

    prompts, out = _prompts(args), Path(args.output)
    check_sampler(args.checkpoint, args.sampler)
    single = len(prompts) == 1
    for i, p in enumerate(prompts):  # prompt i uses seed + i, whatever its batch: a rerun goes on where it stopped
        p["seed"], p["path"] = args.seed + i, out if single else out / f"{p['id']}.wav"
    todo = [p for p in prompts if single or not p["path"].is_file()]  # outputs appear whole (written, renamed)
    if len(todo) < len(prompts):
        print(f"{len(prompts) - len(todo)} of {len(prompts)} clips are already in {out}: generating the rest")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = TextToAudio.from_pretrained(args.checkpoint, device=device, dtype=args.dtype, compile=args.compile) \
        if todo else None
    for start in range(0, len(todo), args.batch_size):
        batch = todo[start: start + args.batch_size]
        waves = model.generate([p["caption"] for p in batch], negative=args.negative, steps=args.steps, cfg=args.cfg,
                               rescale=args.rescale, seed=[p["seed"] for p in batch], duration=args.duration,
                               method=args.sampler, progress=True)
        for p, wave in zip(batch, waves):
            write(p["path"], Audio(wave.cpu().numpy(), model.codec.sample_rate))
            print(f"{p['path']}  <- {p['caption']!r}")
    if not single:
        from shards.writer import write_jsonl_atomic

        manifest = out / MANIFEST
        write_jsonl_atomic(manifest, [{"id": p["id"], "path": p["path"].name, "caption": p["caption"]} for p in prompts])
        print(f"{manifest}: the clips with their ids and captions; evaluate with: capflow evaluate {manifest} "
              "--metrics is,clap (and --reference DIR, clips named by the same ids, for fd,kl,fad)")
    return 0


def _encode(args) -> int:
    from shards.config import load_config

    from .encode import EncodeConfig, run_encode

    manifest = run_encode(load_config(EncodeConfig, args.config, args.set))
    if manifest:
        print(f"{manifest['num_samples']} clips in {manifest['num_shards']} latent shards "
              f"({manifest['extra']['latent_channels']} channels at {manifest['extra']['frame_rate']:g} frames/s)")
    return 0


def _pretrain(args) -> int:
    from shards.config import load_config

    from .config import PretrainConfig

    cfg = load_config(PretrainConfig, args.config, args.set)
    if args.export_only:
        from shards.outputs import check_output_dir

        from .checkpoint import export_bundle, list_checkpoints
        from .pipeline import BUNDLE_FORMAT
        from .train import data_provenance

        check_output_dir(args.export_only, BUNDLE_FORMAT, "--export-only")
        found = list_checkpoints(cfg.output_dir)
        if not found:
            raise FileNotFoundError(f"no checkpoint under {cfg.output_dir}/checkpoints to export")
        codec, _, hashes = data_provenance(cfg)
        out = export_bundle(cfg, found[-1], args.export_only, codec, use_ema=not args.raw, info={"data_hashes": hashes})
    else:
        from .train import run_pretrain

        out = run_pretrain(cfg, resume=args.resume)
    print(f"exported {out}")
    if args.push_to_hub and Path(out / "capflow.json").is_file():  # rank 0 exported it
        from shards.card import publish

        publish(out, args.push_to_hub, "model", private=args.private, dry_run=args.dry_run)
    return 0


def _train_codec(args) -> int:
    from shards.config import load_config

    from .codec_train import CodecTrainConfig, run_train_codec

    out = run_train_codec(load_config(CodecTrainConfig, args.config, args.set), resume=args.resume)
    scores = json.loads((out / "capflow.json").read_text()).get("reconstruction") if (out / "capflow.json").is_file() else None
    if scores:
        t, u = scores["trained"], scores["untrained"]
        print(f"held-out reconstruction ({t['clips']} clips): MR-STFT {t['mrstft']:.3f} (untrained {u['mrstft']:.3f}), "
              f"SI-SDR {t['si_sdr']:.1f} dB (untrained {u['si_sdr']:.1f} dB)")
    print(f"exported {out}\nencode with it: capflow encode --config C --set codec.pretrained={out} --set codec.subfolder=null")
    return 0


def _import(args) -> int:
    from .ezaudio import import_ezaudio

    out = import_ezaudio(args.dit, args.vae, args.output, size=args.size, text_encoder=args.text_encoder)
    size = json.loads((out / "capflow.json").read_text())["info"]["imported_from"]["size"]
    print(f"{out}  (EzAudio-{size.upper()}, v-prediction DDPM)\ngenerate: capflow generate --checkpoint {out} "
          '"a dog barks while rain falls" -o dog.wav')
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("encode", help="audio shards -> VAE latent shards (resumable, with codec provenance)")
    p.add_argument("--config", required=True, help="YAML config, e.g. configs/encode/tiny.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value (repeatable)")
    p.set_defaults(func=_encode)

    p = sub.add_parser("pretrain", help="train a stage (mask | align | sft); many GPUs: accelerate launch -m pretrain")
    p.add_argument("--config", required=True, help="YAML config, e.g. configs/pretrain/tiny-mask.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint directory: continue the same run exactly")
    p.add_argument("--export-only", default=None, metavar="OUT", help="export the latest checkpoint to OUT and exit")
    p.add_argument("--raw", action="store_true", help="with --export-only: raw weights instead of the EMA")
    p.add_argument("--push-to-hub", default=None, metavar="REPO", help="upload the export to this Hub model repo")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    p.add_argument("--dry-run", action="store_true", help="with --push-to-hub: print what would be uploaded")
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("train-codec", help="train an Oobleck VAE on audio shards (the codec `encode` and bundles use)")
    p.add_argument("--config", required=True, help="YAML config, e.g. configs/codec/tiny.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint directory: continue the same run exactly")
    p.set_defaults(func=_train_codec)

    p = sub.add_parser("import", help="public weights as a capflow bundle: `import ezaudio` (EzAudio-L/XL DiT + VAE)")
    p.add_argument("source", choices=["ezaudio"], help="whose checkpoints (ezaudio: OpenSound/EzAudio)")
    p.add_argument("--dit", default="OpenSound/EzAudio", help="the DiT checkpoint (.pt with {'model': ...}), or a hub "
                   "repo[:path] (default OpenSound/EzAudio: ckpts/s3/ezaudio_s3_{size}.pt)")
    p.add_argument("--vae", default="OpenSound/EzAudio", help="the VAE checkpoint (ckpts/vae/1m.pt: {'state_dict': "
                   "...}), or a hub repo[:path]")
    p.add_argument("--size", choices=["l", "xl"], default=None, help="which hub file to download (default l); the size "
                   "is read from the DiT's tensors, and a --size that disagrees is refused")
    p.add_argument("--text-encoder", default=None, help="hub id or directory (default: google/flan-t5-large | -xl)")
    p.add_argument("-o", "--output", required=True, help="bundle directory to write")
    p.set_defaults(func=_import)

    p = sub.add_parser("model-info", help="parameter counts of a DiT preset by group (no weights allocated)")
    p.add_argument("--preset", default="dit-l", help="tiny | small | dit-l | dit-xl (default dit-l); with `capflow`: "
                   "also sep-tiny | sep-paper (the Hybrid-Sep query model and separator)")
    p.add_argument("--adaln", choices=["sola", "full", "single"], default=None, help="AdaLN variant (default: preset's)")
    p.add_argument("--no-text", action="store_true", help="without text modules (a stage-mask model)")
    p.add_argument("--no-long-skip", action="store_true", help="without U-ViT long skips (ablation)")
    p.add_argument("--json", action="store_true", help="print one JSON object with a `total` field")
    p.set_defaults(func=_model_info)

    p = sub.add_parser("generate", help="text-to-audio with a trained bundle")
    p.add_argument("--checkpoint", required=True, help="bundle directory or hub id (an export of `capflow pretrain`)")
    p.add_argument("prompt", nargs="*", help="one or more prompts")
    p.add_argument("--prompts-file", default=None, help="a text file with one prompt per line (blank lines and lines "
                                                        "starting with # are skipped)")
    p.add_argument("-o", "--output", required=True, help="output audio file, e.g. dog.wav (one prompt) or folder "
                                                         "(several prompts: NNNN_prompt.wav each)")
    p.add_argument("--steps", type=positive(int), default=None, help="sampling steps (default: the bundle's)")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale w (default: the bundle's, EzAudio 5)")
    p.add_argument("--rescale", type=float, default=None, help="CFG rescale factor φ (default: the bundle's, 0.75)")
    p.add_argument("--negative", default=None, help="negative prompt (default: the empty string)")
    p.add_argument("--sampler", choices=["euler", "heun", "ddim"], default=None,
                   help="solver (default: the bundle's): euler | heun for flow bundles, ddim for v-DDPM ones (EzAudio)")
    p.add_argument("--duration", type=positive(float), default=None, help="seconds of audio (default: the bundle's)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (prompt i of a file uses seed + i)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per forward batch")
    p.add_argument("--device", default=None, help="cpu | cuda[:i] (default: cuda when available)")
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="DiT precision; auto: bf16 on GPUs, fp32 on CPUs (sampling integrates in fp32 either way)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the DiT; default: on with CUDA (the fast path: a 10-s clip at 50 steps in "
                        "0.6-0.7 s on an H100/H200, against ~1.7 s eager bf16; the first clip pays the compile, about a "
                        "minute), off on CPUs")
    p.set_defaults(func=_generate)


def main(argv: list[str] | None = None) -> int:
    return package_main("pretrain", add_commands, argv, default="pretrain")  # `accelerate launch -m pretrain --config C`
