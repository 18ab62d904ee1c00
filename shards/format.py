"""The shard format contract (documented in shards/FORMAT.md): names, keys, members, sidecar schema.

Bump SCHEMA_VERSION on any change a reader could notice, and describe the change in FORMAT.md.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

SCHEMA_VERSION = 5  # 2: sidecar split, candidate_kinds; 3: edit-group sets (kind "edit", edit_* columns);
# 4: edit_span_methods, group identities; 5: json `span` of clips cut from longer files
MANIFEST_NAME = "manifest.json"
TAR_MTIME = 0  # fixed member mtime: identical input gives byte-identical tars
TAR_USER = "capflow"

# Member extensions. webdataset splits a member name at the first dot, so keys never contain one.
AUDIO, META, LATENT = "flac", "json", "npy"
# Edit-group samples hold three audios: the background x and the mixtures xa, xb (`x.flac`, `xa.flac`, ...).
EDIT_ROLES = ("x", "xa", "xb")


def audio_members(members) -> list[str]:
    """The audio members of a sample (`flac`, or `x.flac`, `xa.flac`, `xb.flac` for an edit group), sorted."""
    return sorted(m for m in members if m == AUDIO or m.endswith("." + AUDIO))


def latent_member(audio_member: str) -> str:
    """The latent member that encodes an audio member: `flac` -> `npy`, `x.flac` -> `x.npy`."""
    return audio_member[: -len(AUDIO)] + LATENT
KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")

STATUS_OK = "ok"
# A failure row's status: the audio is missing, undecodable, or a later stage failed on the clip.
FAILURE_STATUSES = ("missing", "unreadable", "failed")


class InvalidKey(ValueError):
    """A sample key breaks the format's key rules."""


def suggest_key(key: str) -> str:
    """The conforming spelling of a key: dots dropped, other characters replaced by '_'."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", key.replace(".", ""))


def check_key(key: str) -> str:
    if not KEY_RE.match(key):
        hint = "dots split webdataset member names" if "." in key else "allowed: [A-Za-z0-9_-]"
        raise InvalidKey(f"invalid sample key {key!r} ({hint}); use {suggest_key(key)!r}")
    return key


def make_key(source: str, item_id: str) -> str:
    """`{source}-{id}` with the id made conforming: AudioSet `YTID_30.000` becomes `YTID_30000`."""
    return check_key(f"{suggest_key(source)}-{suggest_key(item_id)}")


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}"


TAR_SUFFIX, SIDECAR_SUFFIX, STATS_SUFFIX = ".tar", ".parquet", "_stats.json"

# One row per input item, failures included. Derived from each sample's json metadata.
SIDECAR_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("source", pa.string()),
    ("id", pa.string()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("duration", pa.float64()),
    ("sample_rate", pa.int64()),
    ("channels", pa.int64()),
    ("labels", pa.list_(pa.string())),
    ("num_candidates", pa.int64()),
    ("candidate_scores", pa.list_(pa.float64())),
    ("captions", pa.list_(pa.string())),
    ("caption_scores", pa.list_(pa.float64())),
    ("bytes", pa.int64()),
    ("split", pa.string()),
    ("candidate_kinds", pa.list_(pa.string())),
    # edit groups (empty lists otherwise): SNR and onset of events a and b, CLAP of x, xa, xb to their captions
    ("edit_snr_db", pa.list_(pa.float64())),
    ("edit_onset_s", pa.list_(pa.float64())),
    ("edit_clap", pa.list_(pa.float64())),
    ("edit_span_methods", pa.list_(pa.string())),  # how the spans of events a and b were found
])


def sidecar_row(key: str, meta: dict, status: str = STATUS_OK, error: str | None = None, nbytes: int = 0) -> dict:
    """The parquet row of one input item, from its json metadata (possibly partial for failures)."""
    candidates = meta.get("candidates") or []
    mix, clap = meta.get("mix") or {}, meta.get("clap") if isinstance(meta.get("clap"), dict) else {}
    scores = {c["text"]: c.get("clap") for c in candidates}
    return {
        "key": key,
        "source": meta.get("source"),
        "id": meta.get("id"),
        "status": status,
        "error": error,
        "duration": meta.get("duration"),
        "sample_rate": meta.get("sample_rate"),
        "channels": meta.get("channels"),
        "labels": list(meta.get("labels") or []),
        "num_candidates": len(candidates),
        "candidate_scores": [c["clap"] for c in candidates if c.get("clap") is not None],
        "captions": list(meta.get("captions") or []),
        "caption_scores": [scores[t] for t in meta.get("captions") or [] if scores.get(t) is not None],
        "bytes": nbytes,
        "split": meta.get("split"),
        "candidate_kinds": [c.get("kind") for c in candidates],
        "edit_snr_db": [mix[e]["snr_db"] for e in ("a", "b") if e in mix],
        "edit_onset_s": [mix[e]["onset_s"] for e in ("a", "b") if e in mix],
        "edit_clap": [clap[r] for r in EDIT_ROLES if clap.get(r) is not None],
        "edit_span_methods": [m for m in ((meta.get("span_method") or {}).get(e) for e in ("a", "b")) if m],
    }


class UnsafeMember(ValueError):
    """A tar member that is not a plain file named KEY.EXT with a safe key (a directory, a link, a path)."""


def _raise(info: tarfile.TarInfo) -> None:
    raise UnsafeMember(f"unsafe or unexpected tar member {info.name!r}")


def tar_samples(tar: tarfile.TarFile, member: Callable[[tarfile.TarInfo], Any], size: int | None = None,
                unsafe: Callable[[tarfile.TarInfo], None] = _raise) -> Iterator[tuple[str, dict[str, Any]]]:
    """(key, {ext: member(info)}) per sample of an open tar, its members grouped in order by key (the name up to
    its first dot): the one grouping of tar members every shard reader uses. A member that is not a plain file
    with a safe key goes to `unsafe` (raises UnsafeMember unless it is given another handler; skipped then).
    With the file's `size`, a member ending past it raises EOFError: a seekable tar cut short would otherwise
    read as a clean end of archive."""
    key, sample = None, {}
    for info in tar:
        if size is not None and info.offset_data + info.size > size:
            raise EOFError(f"member {info.name!r} ends at byte {info.offset_data + info.size}, the file has {size}")
        k, _, ext = info.name.partition(".")
        if not info.isfile() or not KEY_RE.match(k):
            unsafe(info)
            continue
        if k != key and key is not None:
            yield key, sample
            sample = {}
        key = k
        sample[ext] = member(info)
    if key is not None:
        yield key, sample
