"""Prefix cache blocks on disk (`--prefix-cache DIR`), for later runs and other processes.

    DIR/index.sqlite         key, namespace, parent, dtype, shape, bytes, sha256, last use
    DIR/blocks/ab/<key>.bin  a block's rows as raw bytes (C order): never pickle, never code
    DIR/writer.lock          flock of the one process that writes

A block is written to a temporary file and renamed into place, and only then listed in the
index, in one SQLite transaction: a killed run leaves no half block that is listed (a power loss
that tears a file is caught by its sha256). A listed block is read back only if its bytes match
the index's sha256 and its namespace, dtype and shape are this engine's; anything else is ignored
with a one-line warning (and dropped, by the writer). The first process to take the flock writes
and evicts; the others read only, so any number of readers run beside one writer (SQLite's WAL
lets them read while it commits). The writer keeps the blocks' total under `max_bytes`, evicting
the least recently used blocks that no other block chains after."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np

from .errors import UsageError

DEFAULT_MAX_BYTES = 4 << 30
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)

SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    key TEXT PRIMARY KEY, namespace TEXT NOT NULL, parent TEXT, dtype TEXT NOT NULL,
    shape TEXT NOT NULL, nbytes INTEGER NOT NULL, sha256 TEXT NOT NULL, used REAL NOT NULL);
CREATE INDEX IF NOT EXISTS blocks_parent ON blocks(parent);
CREATE INDEX IF NOT EXISTS blocks_used ON blocks(used);
"""


def parse_size(text: str) -> int:
    """'4G', '500M', '1.5GiB', '123456' -> bytes."""
    m = _SIZE.match(str(text))
    if not m:
        raise UsageError(f"--prefix-cache-size {text!r}: give bytes, or a number with K, M, G or T")
    return int(float(m.group(1)) * 1024 ** " kmgt".index((m.group(2) or " ").lower()))


def _warn(message: str) -> None:
    print(f"edgeds: prefix cache: {message}", file=sys.stderr)


class PrefixStore:
    def __init__(self, folder: str | Path, namespace: str, dtype, shape: tuple[int, ...],
                 max_bytes: int = DEFAULT_MAX_BYTES, warn=_warn):
        """namespace: hex of prefix_cache.namespace; dtype, shape: what every block holds."""
        self.folder = Path(folder)
        self.namespace, self.dtype, self.shape = namespace, np.dtype(dtype), tuple(shape)
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self.max_bytes, self.warn = max_bytes, warn
        self._touched: list[str] = []  # blocks read since the last flush, for their last use
        if self.folder.exists() and not self.folder.is_dir():
            raise UsageError(f"prefix cache '{folder}' is a file, not a folder")
        try:
            (self.folder / "blocks").mkdir(parents=True, exist_ok=True)
            self._lock = open(self.folder / "writer.lock", "a+")
        except OSError as exc:
            raise UsageError(f"prefix cache '{folder}': cannot use it ({exc.strerror})") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.writer = True
        except OSError:
            self.writer = False
            self.warn(f"{folder}: another process writes it; this one only reads it")
        try:
            self.db = sqlite3.connect(self.folder / "index.sqlite", timeout=30,
                                      isolation_level=None)
            self.db.execute("PRAGMA busy_timeout = 30000")
            if self.writer:
                self.db.execute("PRAGMA journal_mode = WAL")
                self.db.execute("PRAGMA synchronous = NORMAL")
                self.db.executescript(SCHEMA)
                self._sweep()
        except sqlite3.DatabaseError as exc:
            raise UsageError(f"prefix cache '{folder}': its index is not usable ({exc}); "
                             "remove the folder to start over") from None

    def flush(self) -> None:
        """Record the last use of the blocks read, in one transaction (writer only: readers
        never write the index)."""
        touched, self._touched = self._touched, []
        if not (self.writer and touched):
            return
        now = time.time()
        try:
            with self.db:
                self.db.execute("BEGIN")
                self.db.executemany("UPDATE blocks SET used = ? WHERE key = ?",
                                    [(now, k) for k in touched])
        except sqlite3.DatabaseError as exc:
            self.warn(f"{self.folder}: cannot update its index ({exc})")

    def close(self) -> None:
        self.flush()
        self.db.close()
        self._lock.close()

    def _path(self, key: str) -> Path:
        return self.folder / "blocks" / key[:2] / f"{key}.bin"

    def _sweep(self) -> None:
        """Remove what a killed writer left: temporary files, and files no row lists."""
        listed = {k for (k,) in self.db.execute("SELECT key FROM blocks")}
        for path in (self.folder / "blocks").glob("*/*"):
            if ".tmp" in path.name or path.stem not in listed:
                path.unlink(missing_ok=True)

    def read(self, key: str) -> np.ndarray | None:
        try:
            row = self.db.execute("SELECT namespace, dtype, shape, nbytes, sha256 FROM blocks "
                                  "WHERE key = ?", (key,)).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None  # a reader ahead of the first writer: nothing stored yet
            self.warn(f"{self.folder}: index unreadable ({exc}); block ignored")
            return None
        except sqlite3.DatabaseError as exc:
            self.warn(f"{self.folder}: index unreadable ({exc}); block ignored")
            return None
        if row is None:
            return None
        namespace, dtype, shape, nbytes, sha = row
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            return None  # evicted by the writer after the row was read
        except OSError as exc:
            self.warn(f"block {key[:16]}: unreadable ({exc.strerror}); ignored")
            return None
        if (namespace, dtype, shape) != (self.namespace, self.dtype.str, json.dumps(self.shape)):
            why = "another artifact's or layout's block"
        elif nbytes != self.nbytes or len(data) != nbytes:
            why = f"{len(data)} bytes, not {self.nbytes}"
        elif hashlib.sha256(data).hexdigest() != sha:
            why = "its bytes do not match its checksum"
        else:
            self._touched.append(key)
            return np.frombuffer(data, self.dtype).reshape(self.shape)
        self.warn(f"block {key[:16]} in {self.folder}: {why}; ignored")
        if self.writer:
            self._drop([key])
        return None

    def write(self, key: str, parent: str | None, rows: np.ndarray) -> bool:
        """Keep a block (writer only); False where it is not written."""
        if not self.writer or rows.dtype != self.dtype or rows.shape != self.shape:
            return False
        if self.nbytes > self.max_bytes:
            return False
        self.flush()  # last uses first: eviction below goes by them
        data = np.ascontiguousarray(rows).tobytes()
        path = self._path(key)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        try:
            if self.db.execute("SELECT 1 FROM blocks WHERE key = ?", (key,)).fetchone():
                return False
            self._make_room(self.nbytes)
            path.parent.mkdir(exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, path)
            self.db.execute("INSERT OR REPLACE INTO blocks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                          (key, self.namespace, parent, self.dtype.str, json.dumps(self.shape),
                           len(data), hashlib.sha256(data).hexdigest(), time.time()))
            return True
        except (OSError, sqlite3.DatabaseError) as exc:
            tmp.unlink(missing_ok=True)
            self.warn(f"{self.folder}: cannot write a block ({exc}); this run writes no more")
            self.writer = False
            return False

    def _make_room(self, nbytes: int) -> None:
        """Evict least recently used leaves until `nbytes` more fit under max_bytes."""
        (total,) = self.db.execute("SELECT COALESCE(SUM(nbytes), 0) FROM blocks").fetchone()
        while total + nbytes > self.max_bytes:
            leaves = self.db.execute(
                "SELECT key, nbytes FROM blocks b WHERE NOT EXISTS "
                "(SELECT 1 FROM blocks c WHERE c.parent = b.key) ORDER BY used LIMIT 64").fetchall()
            if not leaves:
                return
            for key, size in leaves:
                if total + nbytes <= self.max_bytes:
                    break
                self._drop([key])
                total -= size

    def _drop(self, keys: list[str]) -> None:
        self.db.execute(f"DELETE FROM blocks WHERE key IN ({','.join('?' * len(keys))})", keys)
        for key in keys:  # unlisted first: a reader never finds a listed block without its file
            self._path(key).unlink(missing_ok=True)

    def total_bytes(self) -> int:
        return self.db.execute("SELECT COALESCE(SUM(nbytes), 0) FROM blocks").fetchone()[0]
