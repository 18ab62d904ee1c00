"""Hub cards and publishing: the dataset card of a release (YAML header checked through huggingface_hub's
DatasetCardData, every statement derived from the shard set), license checks, and `publish` to the Hub.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from . import format as fmt

# License identifiers the Hub accepts in card metadata (https://huggingface.co/docs/hub/repositories-licenses),
# the ones datasets use; anything else is `other` with --license-name and --license-link.
LICENSES = ("apache-2.0", "mit", "cc0-1.0", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0", "cc-by-nc-sa-4.0",
            "cc-by-nc-nd-4.0", "cc-by-nd-4.0", "cc-by-3.0", "cc-by-sa-3.0", "cc-by-nc-3.0", "cc-by-2.0",
            "odc-by", "odbl", "pddl", "cdla-permissive-2.0", "cdla-sharing-1.0", "openrail", "bsd-3-clause",
            "gpl-3.0", "unknown", "other")


def check_license(license: str, name: str | None = None, link: str | None = None) -> None:
    if license not in LICENSES:
        raise ValueError(f"--license {license!r} is not a Hub license id; use one of {', '.join(LICENSES)} "
                         "(or `other` with --license-name and --license-link)")
    if license == "other" and not (name and link):
        raise ValueError("--license other needs --license-name (a short id) and --license-link (the license text's URL)")


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                         (10_000_000, "1M<n<10M")):
        if n < limit:
            return label
    return "10M<n<100M"


def _model(ref: str | None) -> str | None:
    """A model reference fit for a public card: a hub id as it is, a local path by its last part only."""
    if not ref:
        return None
    return ref if not Path(ref).is_absolute() and not Path(ref).exists() else f"a local model ({Path(ref).name})"


def dataset_card(name: str, license: str, manifest: dict, stats: dict, rows: dict[str, int], files: list[Path],
                 out: Path, with_audio: bool, license_name: str | None = None, license_link: str | None = None) -> str:
    from huggingface_hub import DatasetCardData

    config = manifest.get("config", {})
    source = config.get("source", {})
    audioset = source.get("kind") == "audioset"
    alm, llm = config.get("alm") or {}, (config.get("labels") or {}).get("engine") or {}
    labels_on = (config.get("labels") or {}).get("enabled", False)
    clap = config.get("clap") or {}
    data = DatasetCardData(
        pretty_name=name, license=license, language=["en"], annotations_creators=["machine-generated"],
        language_creators=["machine-generated"], multilinguality=["monolingual"],
        size_categories=[_size_category(stats["samples"])],
        source_datasets=["extended|audioset"] if audioset else ["original"],
        task_categories=["text-to-audio"], tags=["audio", "captions", "capflow", "clap"],
        configs=[{"config_name": "default",
                  "data_files": [{"split": s, "path": f"data/{s}/*.parquet"} for s in sorted(rows)]}],
        **({"license_name": license_name, "license_link": license_link} if license == "other" else {}),
    )
    header = data.to_dict()
    yaml.safe_load(yaml.safe_dump(header))  # the header round-trips as YAML
    thr = stats.get("clap_threshold")
    clap_mean = stats["kept_clap"].get("mean")
    lines = [
        "---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "",
        f"# {name}", "",
        "Audio clips with captions written by machines: an audio-language model listened to each clip and wrote "
        "several candidate captions" + (", an LLM wrote captions from the clip's (strong) labels" if labels_on else "")
        + ", and a CLAP model scored every candidate against its clip. The kept captions are the best-scoring "
        "candidates" + (f" with a CLAP score ≥ {thr:g}" if thr is not None else "") + "; human captions of the source, "
        "when it has them, are kept as they are. Every candidate is included with its score, so you can re-filter "
        "with another threshold.", "",
        "## How the captions were made", "",
        "| | |", "|---|---|",
        f"| audio-language model | {_model(alm.get('model')) or 'none'} ({alm.get('kind', '-')}, "
        f"{(alm.get('sampling') or {}).get('n', '-')} samples per prompt) |",
        f"| label LLM | {_model(llm.get('model')) if labels_on else 'none'} |",
        f"| CLAP scorer | {_model(clap.get('model')) or '-'}, threshold {thr if thr is not None else '-'}, "
        f"top {clap.get('top_k', '-')} kept |",
        f"| source | {source.get('kind', '-')}{' (AudioSet)' if audioset else ''} |",
        f"| shard-set config hash | `{manifest.get('config_hash', '')[:16]}` (a hash of the captioning config, "
        "not of the data) |", "",
        "## Splits", "",
        "| split | clips |", "|---|---|", *[f"| {s} | {n} |" for s, n in sorted(rows.items())], "",
        ("Splits follow the source: AudioSet's `eval` clips are kept apart from `balanced_train` and "
         "`unbalanced_train`, so evaluation clips do not leak into training." if audioset else
         "Splits follow the source manifest's `split` column (`train` when it has none)."), "",
        "## Load", "", "```python", "import datasets",
        f'ds = datasets.load_dataset("path/to/{out.name}")  # or the Hub repo id', "```", "",
    ]
    if with_audio:
        lines += [
            "The `audio` column holds FLAC bytes. `datasets` ≥ 4 decodes audio with torchcodec; where torchcodec "
            "cannot be installed (its PyPI wheel is a CUDA build), read the bytes and decode with soundfile:", "",
            "```python", "from shards.hf import decode_audio_column  # capflow; or: soundfile.read(io.BytesIO(b))",
            'ds = ds.cast_column("audio", datasets.Audio(decode=False))',
            'wave, rate = decode_audio_column(ds[0]["audio"])', "```", "",
        ]
    else:
        lines += ["Captions and metadata only: join back to your copy of the audio by `ytid`, `start`, `end` "
                  "(AudioSet) or `id`.", ""]
    lines += [
        "## Statistics", "",
        "| | |", "|---|---|",
        f"| clips | {stats['samples']} |",
        f"| hours of audio | {stats['hours']:.3f} |",
        f"| items that failed | {stats['items'] - stats['samples']} "
        f"({', '.join(f'{k}: {v}' for k, v in stats['status'].items() if k != fmt.STATUS_OK) or 'none'}) |",
        f"| captions kept | {stats['captions_kept']} |",
        f"| clips with a kept caption | {stats['clips_with_captions']} |",
        f"| caption candidates | {stats['candidates']} "
        f"({', '.join(f'{k}: {v}' for k, v in stats.get('candidates_by_kind', {}).items()) or '-'}) |",
        f"| kept-caption CLAP mean | {'-' if clap_mean is None else f'{clap_mean:.3f}'} |",
        f"| audio included | {'yes (FLAC)' if with_audio else 'no (captions and metadata only)'} |", "",
        *[f"![{p}](plots/{p})" for p in stats["plots"]], "",
        "## Rights", "",
        f"The captions and metadata are released under `{license}`"
        + (f" ({license_name}: {license_link})" if license == "other" else "") + ". ",
    ]
    if with_audio:
        lines[-1] += ("The audio is not ours: " + ("AudioSet clips are excerpts of YouTube videos whose rights belong "
                      "to their uploaders; AudioSet itself distributes only labels (CC BY 4.0). " if audioset else
                      "it keeps the rights of its source. ") + "Check that you may redistribute it before publishing "
                      "this dataset, and honour takedown requests.")
    lines += ["", "## Checksums", "", "sha256 of every data file: `checksums.json`.", ""]
    return "\n".join(lines)


def publish(folder: str | Path, repo_id: str, repo_type: str = "dataset", private: bool = False,
            dry_run: bool = False) -> list[str]:
    """Upload `folder` to the Hub repo (created if needed). Files already on the Hub are not sent again, so a
    rerun after an interruption resumes. dry_run: print what would be uploaded and the equivalent command."""
    folder = Path(folder)
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    size = sum((folder / f).stat().st_size for f in files)
    if dry_run:
        print(f"would upload {len(files)} files ({size / 2**20:.1f} MiB) to {repo_type} {repo_id}"
              f"{' (private)' if private else ''}:")
        for f in files:
            print(f"  {f}")
        print(f"equivalent command: hf upload {repo_id} {folder} . --repo-type {repo_type}"
              f"{' --private' if private else ''} --exclude '.*'")
        return files
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type=repo_type, ignore_patterns=[".*", "**/.*"],
                      commit_message=f"capflow release of {folder.name}")
    return files
