"""Editing a held-out split of edit groups for `capflow evaluate`: one triplet per operation and group
(add_a, remove_a, replace_ab, first wording), written as source / target / edited WAVs and a manifest
(`edits.jsonl`: id, path, caption = the target caption, reference = the ground-truth target, source = the
input, group = the operation, instruction, seconds = the time the edit took)."""

from __future__ import annotations

import json
import logging
import shlex
from pathlib import Path

from tqdm.auto import tqdm

from shards import audio
from shards import format as fmt
from shards.manifest import read_manifest
from shards.reader import iter_tar_samples

from .editor import InstructionEditor, timed_edits
from .instructions import TRIPLETS

log = logging.getLogger(__name__)
TEST_TRIPLETS = ("add_a", "remove_a", "replace_ab")  # one per operation


def test_triplets(edit_set: str | Path, split: str = "test", limit: int | None = None):
    """(group key, triplet name, source Audio, target Audio, instruction, target caption) of a split."""
    edit_set = Path(edit_set)
    manifest = read_manifest(edit_set)
    if manifest.get("kind") != "edit":
        raise ValueError(f"{edit_set}: an audio edit-group set (`capflow edit-data` output) is needed, this one is "
                         f"{manifest.get('kind')!r}")
    count = 0
    for entry in manifest["shards"]:
        for key, sample in iter_tar_samples(edit_set / entry["tar"]):
            meta = json.loads(sample[fmt.META])
            if meta.get("split") != split:
                continue
            for name in TEST_TRIPLETS:
                src, tgt, _ = TRIPLETS[name]
                yield (key, name, audio.decode(sample[f"{src}.{fmt.AUDIO}"]), audio.decode(sample[f"{tgt}.{fmt.AUDIO}"]),
                       meta["instructions"][name][0], meta["caption"][tgt])
            count += 1
            if limit is not None and count >= limit:
                return


def edit_test_set(editor: InstructionEditor, edit_set: str | Path, out: str | Path, split: str = "test",
                  limit: int | None = None, progress: bool = True, **sampling) -> Path:
    """Edit every test triplet; returns the manifest for `capflow evaluate`."""
    out = Path(out)
    for sub in ("source", "target", "edited"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rows = []
    # streamed: one group's audio in memory at a time, whatever the split's size
    items = test_triplets(edit_set, split, limit)
    for key, name, source, target, instruction, caption in tqdm(items, desc="editing", unit="edit", disable=not progress):
        clip_id = f"{key}_{name}"
        (edited, seconds), = timed_edits(editor, [(source, instruction)], **sampling)
        for sub, clip in (("source", source), ("target", target), ("edited", edited)):
            audio.write(out / sub / f"{clip_id}.wav", clip)
        rows.append({"id": clip_id, "path": f"edited/{clip_id}.wav", "caption": caption,
                     "reference": f"target/{clip_id}.wav", "source": f"source/{clip_id}.wav",
                     "group": TRIPLETS[name][2], "instruction": instruction, "seconds": round(seconds, 4)})
    if not rows:
        raise ValueError(f"{edit_set} has no group in split {split!r}")
    manifest = out / "edits.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    log.info("%d edits of %s written to %s; evaluate them with: %s", len(rows), edit_set, out, evaluate_command(manifest))
    return manifest


def evaluate_command(manifest: Path) -> str:
    """The `capflow evaluate` line for an edit test set's manifest (its rows carry target, source and caption)."""
    return shlex.join(["capflow", "evaluate", str(manifest), "--metrics", "fd,kl,is,fad,clap,clap_src,lsd,mel"])
