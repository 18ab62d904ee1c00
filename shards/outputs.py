"""What capflow may write and replace: the one rule every command's outputs follow.

- An output file or folder is checked before any work: its folder must take a file (probed by creating and
  removing one, which `os.access` cannot tell: it says yes to root everywhere and to a file as a parent).
- A folder output is replaced only when it is absent, empty, or holds a capflow output of the same kind: a
  `capflow.json` whose `format` is that kind. A folder of the user's (a download, notes, a run's checkpoints)
  or a capflow output of another kind is refused in one line, untouched.
- A folder output is written beside its target under a name unique to this writer and swapped in when
  complete: an interrupted export leaves the old output (or nothing) at OUT, never half a folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path

MARKER = "capflow.json"  # {"format": KIND, ...}: what makes a folder a capflow output that capflow may replace


class OutputError(ValueError):
    """An output that cannot be written, or a folder that is not capflow's to replace (one line, exit 2)."""


def unique_sibling(path: Path, tag: str = "tmp") -> Path:
    """A name beside `path` unique to this writer (host, process, random): never the user's."""
    return path.with_name(f"{path.name}.{tag}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def output_kind(directory: str | Path) -> str | None:
    """The kind of capflow output a folder holds (its marker's `format`), or None."""
    marker = Path(directory) / MARKER
    try:
        found = json.loads(marker.read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        return None
    return found if isinstance(found, str) else None


def check_writable(path: str | Path, what: str = "output") -> Path:
    """Refuse, in one line, an output path whose folder cannot take a file: probed by creating and removing a
    temporary file in the nearest existing folder (a file as parent, /proc, read-only mounts, permissions)."""
    path = Path(path)
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{what} {path}: {parent} is a file, not a folder; choose another path")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".capflow-probe-"):
            pass
    except OSError as e:
        raise OutputError(f"{what} {path}: not writable ({e.strerror or type(e).__name__} in {parent}); "
                          "check the folder and its permissions") from None
    return path


def check_output_dir(out: str | Path, kind: str, what: str = "output folder") -> Path:
    """Refuse, before any work, an output folder capflow may not (re)place: a file, a non-empty folder that is
    not a capflow output of `kind`, or a place where nothing can be written. Returns the path."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{what} {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()):
        found = output_kind(out)
        if found != kind:
            held = f"holds a {found} output" if found else f"is not empty and holds no capflow output (no {MARKER})"
            raise OutputError(f"{what} {out} {held}; capflow replaces only an empty folder or a {kind} output it "
                              "wrote: choose a new folder")
    check_writable(out / MARKER, what)
    return out


@contextlib.contextmanager
def staged_dir(out: str | Path, kind: str):
    """Write a capflow output folder of `kind` (the block must write its MARKER): written under a unique name
    beside OUT and swapped in when the block completes; an old OUT is replaced only if `check_output_dir`
    allows it (checked again here, and best checked by the caller before the work). Yields the folder."""
    out = check_output_dir(out, kind)
    tmp = unique_sibling(out)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        assert output_kind(tmp) == kind, f"{tmp}: the block wrote no {MARKER} of format {kind}"
        check_output_dir(out, kind)  # the folder may have changed while the block ran
        old = unique_sibling(out, "old") if out.exists() else None
        if old is not None:
            out.rename(old)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # ours: a unique name this block made
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)  # a capflow output of this kind (checked above)
