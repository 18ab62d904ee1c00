"""Shard writers: one shard (tar + parquet sidecar + stats, atomically, stats last) and a rolling set.

A shard is done when its `_stats.json` exists. Every file is written under a temporary name unique to its
writer (`NAME.tmp-HOST-PID-RANDOM`), and the commit (sidecar, renames, stats) happens under an exclusive
lock on the set's `.commit.lock` after checking that the shard is not done yet: two writers of one shard (a
rerun racing a stale actor of a killed job) never mix their files, and the first to finish wins. A writer
holds a lock on its temporary tar while it writes, so `sweep_stale_tmp` can remove what dead writers left
without touching a live one's.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import queue
import socket
import tarfile
import threading
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import format as fmt


class _TarFile:
    """Deterministic uncompressed tar written member by member, with its sha256 computed on the way.

    Headers come from the standard library (TarInfo.tobuf, POSIX pax format); each member goes out as
    header, data and padding in whole writes (tarfile's stream mode copies in 10 KiB records, which made
    the writer 2.5x slower). A helper thread hashes the same buffers while the main thread writes them
    (hashlib releases the GIL on large buffers); the bounded queue keeps memory flat.
    """

    def __init__(self, path: Path):
        self._f = open(path, "wb")
        fcntl.flock(self._f.fileno(), fcntl.LOCK_EX)  # "alive": sweep_stale_tmp leaves this file alone
        self.sha256 = hashlib.sha256()
        self.nbytes = 0
        self._queue: queue.Queue = queue.Queue(maxsize=64)
        self._hasher = threading.Thread(target=self._hash, daemon=True)
        self._hasher.start()

    def _hash(self) -> None:
        while (blocks := self._queue.get()) is not None:
            for block in blocks:
                self.sha256.update(block)

    def _write(self, *blocks: bytes) -> None:
        self._queue.put(blocks)
        for block in blocks:
            self._f.write(block)
            self.nbytes += len(block)

    def add(self, name: str, data: bytes) -> int:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), fmt.TAR_MTIME, 0o444
        info.uname = info.gname = fmt.TAR_USER
        header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        self._write(header, data, bytes(-len(data) % tarfile.BLOCKSIZE))
        return len(data)

    def close(self) -> None:
        end = 2 * tarfile.BLOCKSIZE  # two zero blocks end the archive; pad to a whole record like tarfile
        self._write(bytes(end + (-(self.nbytes + end)) % tarfile.RECORDSIZE))
        self._queue.put(None)
        self._hasher.join()
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()

    def abort(self) -> None:
        if not self._f.closed:
            self._queue.put(None)
            self._hasher.join()
            self._f.close()


def tmp_name(path: Path) -> Path:
    """A temporary name unique to this writer: two writers of one file never share it."""
    return path.with_name(f"{path.name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def commit_lock(directory: Path):
    """Exclusive lock of a shard set's commits (flock: released by the kernel if the holder dies)."""
    with open(directory / COMMIT_LOCK, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def sweep_stale_tmp(directory: str | Path) -> int:
    """Remove temporary files whose writers are gone (killed jobs); returns how many. Live writers hold a
    lock on their temporary tar, and their other temporary files exist only inside the commit lock."""
    directory, removed = Path(directory), 0
    if not directory.is_dir():
        return 0
    with commit_lock(directory):
        for path in directory.glob("*.tmp-*"):
            with open(path, "ab") as f:  # LOCK_EX needs a file open for writing on NFS (flock(2))
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live writer's
                path.unlink(missing_ok=True)
                removed += 1
    return removed


COMMIT_LOCK = ".commit.lock"


def npy_bytes(array: np.ndarray) -> bytes:
    """.npy bytes of a plain numeric array (never pickled)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def encode_members(members: dict) -> dict[str, bytes]:
    """bytes for each member: json dicts are serialised, npy arrays saved, bytes passed through."""
    out = {}
    for ext, value in members.items():
        if ext == fmt.META and isinstance(value, dict):
            out[ext] = json.dumps(value, ensure_ascii=False, sort_keys=True).encode()
        elif ext.split(".")[-1] == fmt.LATENT and isinstance(value, np.ndarray):
            out[ext] = npy_bytes(value)
        elif isinstance(value, (bytes, bytearray, memoryview)):
            out[ext] = bytes(value)
        else:
            raise TypeError(f"member {ext!r}: expected bytes (or a dict for json, an array for npy), got {type(value)}")
    return out


class ShardWriter:
    """Writes one shard `{prefix}-{index:06d}` into `directory`."""

    def __init__(self, directory: str | Path, prefix: str, index: int, extra_stats: dict | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.name = fmt.shard_name(prefix, index)
        self.index = index
        self.extra_stats = extra_stats or {}
        self._tar_path = self.directory / (self.name + fmt.TAR_SUFFIX)
        self._tar_tmp = tmp_name(self._tar_path)
        self._tar = _TarFile(self._tar_tmp)
        self.rows: list[dict] = []
        self.keys: set[str] = set()
        self.members: set[str] = set()
        self.samples = 0
        self.duration = 0.0
        self.stats: dict | None = None  # set once closed

    @property
    def nbytes(self) -> int:
        return self._tar.nbytes

    def _claim(self, key: str) -> None:
        fmt.check_key(key)
        if key in self.keys:
            raise ValueError(f"{self.name}: duplicate sample key {key!r}")
        self.keys.add(key)

    def write(self, key: str, members: dict) -> None:
        """Add one sample. `members` maps extension to bytes, or a dict for `json`, an array for `npy`."""
        if fmt.META not in members:
            raise ValueError(f"sample {key!r}: every sample needs a {fmt.META!r} member with its metadata")
        self._claim(key)
        encoded = encode_members(members)
        meta = members[fmt.META] if isinstance(members[fmt.META], dict) else json.loads(encoded[fmt.META])
        nbytes = sum(self._tar.add(f"{key}.{ext}", encoded[ext]) for ext in sorted(encoded))  # fixed member order
        self.members.update(encoded)
        self.rows.append(fmt.sidecar_row(key, meta, nbytes=nbytes))
        self.samples += 1
        self.duration += float(meta.get("duration") or 0.0)

    def add_failure(self, key: str, status: str, error: str, meta: dict | None = None) -> None:
        """Record an input item that produced no sample (a sidecar row with its status and error)."""
        if status not in fmt.FAILURE_STATUSES:
            raise ValueError(f"failure status must be one of {fmt.FAILURE_STATUSES}, got {status!r}")
        self._claim(key)
        self.rows.append(fmt.sidecar_row(key, meta or {}, status=status, error=error))

    def close(self) -> dict:
        """Finish the tar, then (under the commit lock, if no other writer finished this shard first) the
        sidecar, the renames and the stats file (the done marker). Returns the shard's stats."""
        if self.stats is not None:
            return self.stats
        self._tar.close()
        stats_path = self.directory / (self.name + fmt.STATS_SUFFIX)
        with commit_lock(self.directory):
            if stats_path.exists():  # another writer of this shard finished first: its files stand
                self._tar_tmp.unlink(missing_ok=True)
                self.stats = json.loads(stats_path.read_text())
                return self.stats
            os.replace(self._tar_tmp, self._tar_path)
            sidecar = self.directory / (self.name + fmt.SIDECAR_SUFFIX)
            tmp = tmp_name(sidecar)
            pq.write_table(pa.Table.from_pylist(self.rows, schema=fmt.SIDECAR_SCHEMA), tmp)
            os.replace(tmp, sidecar)
            self.stats = self._stats()
            write_json_atomic(stats_path, self.stats)
        return self.stats

    def _stats(self) -> dict:
        return {
            "shard": self.name,
            "index": self.index,
            "schema_version": fmt.SCHEMA_VERSION,
            "samples": self.samples,
            "rows": len(self.rows),
            "status": dict(Counter(r["status"] for r in self.rows)),
            "members": sorted(self.members),
            "duration_s": round(self.duration, 3),
            "bytes": self._tar.nbytes,
            "sha256": self._tar.sha256.hexdigest(),
            **self.extra_stats,
        }

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        elif self.stats is None:  # leave no half shard behind: the tmp tar is removed, nothing was renamed
            self._tar.abort()
            self._tar_tmp.unlink(missing_ok=True)


class ShardSetWriter:
    """Writes a stream of samples as consecutive shards, rolling over by sample count and by bytes."""

    def __init__(self, directory: str | Path, prefix: str = "shard", max_count: int = 1000,
                 max_bytes: int = 1 << 30, start_index: int = 0):
        if max_count < 1 or max_bytes < 1:
            raise ValueError("max_count and max_bytes must be positive")
        self.directory, self.prefix = Path(directory), prefix
        self.max_count, self.max_bytes = max_count, max_bytes
        self.next_index = start_index
        self.current: ShardWriter | None = None
        self.stats: list[dict] = []

    def _writer(self) -> ShardWriter:
        if self.current is not None and (len(self.current.rows) >= self.max_count or self.current.nbytes >= self.max_bytes):
            self.stats.append(self.current.close())
            self.current = None
        if self.current is None:
            self.current = ShardWriter(self.directory, self.prefix, self.next_index)
            self.next_index += 1
        return self.current

    def write(self, key: str, members: dict) -> None:
        self._writer().write(key, members)

    def add_failure(self, key: str, status: str, error: str, meta: dict | None = None) -> None:
        self._writer().add_failure(key, status, error, meta)

    def close(self) -> list[dict]:
        if self.current is not None:
            self.stats.append(self.current.close())
            self.current = None
        return self.stats

    def __enter__(self) -> ShardSetWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        elif self.current is not None:
            self.current.__exit__(exc_type)


def write_json_atomic(path: str | Path, data) -> None:
    path = Path(path)
    tmp = tmp_name(path)
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_jsonl_atomic(path: str | Path, rows: list[dict]) -> None:
    """One JSON object per line, written under a temporary name and renamed."""
    path = Path(path)
    tmp = tmp_name(path)
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    os.replace(tmp, path)
