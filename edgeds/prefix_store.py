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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .errors import UsageError

DEFAULT_MAX_BYTES = 4 << 30
_KEYS_PER_QUERY = 500  # under SQLite's least limit of bound parameters (999)
PARALLEL_READ_BYTES = 1 << 20  # a read thread per this many bytes of blocks, up to read_threads
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


def _read_into(path: str, buffer: memoryview) -> int:
    """Bytes of the file read into `buffer` (all of it where it is that long); one more byte
    is asked for, so a longer file reads as longer."""
    with open(path, "rb", buffering=0) as f:
        got = 0
        while got < len(buffer) and (n := f.readinto(buffer[got:])):
            got += n
        return got + len(f.read(1)) if got == len(buffer) else got


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
        self._blocks = str(self.folder / "blocks")  # a str: a Path per block read costs ~10 us
        self.read_threads = min(os.cpu_count() or 1, 4)
        self._pool: ThreadPoolExecutor | None = None
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
        if self._pool is not None:
            self._pool.shutdown()
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
        rows = self.read_chain([key])
        return rows[0] if rows else None

    def read_chain(self, keys: list[str]) -> list[np.ndarray]:
        """The rows of keys[0], keys[1], ... for as long as each is stored and sound: one index
        query for them all, then each file read straight into the array it is kept in and
        checked against its sha256 before it is used (a private copy: nothing another process
        does to the file afterwards reaches it)."""
        found = {}
        try:
            for at in range(0, len(keys), _KEYS_PER_QUERY):
                part = keys[at:at + _KEYS_PER_QUERY]
                found.update((row[0], row[1:]) for row in self.db.execute(
                    "SELECT key, namespace, dtype, shape, nbytes, sha256 FROM blocks "
                    f"WHERE key IN ({','.join('?' * len(part))})", part))
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []  # a reader ahead of the first writer: nothing stored yet
            self.warn(f"{self.folder}: index unreadable ({exc}); blocks ignored")
            return []
        except sqlite3.DatabaseError as exc:
            self.warn(f"{self.folder}: index unreadable ({exc}); blocks ignored")
            return []
        head = []  # the keys listed, up to the first that is not
        for key in keys:
            if key not in found:
                break
            head.append(key)
        out = []
        for key, fetched in zip(head, self._fetch(head)):
            rows = self._checked(key, found[key], fetched)
            if rows is None:
                break
            out.append(rows)
        return out

    def _fetch(self, keys: list[str]) -> list:
        """Each block's file read into a new array, and its sha256: (rows, bytes read, digest),
        or the OSError. Threads share the work where there is enough of it (file reads and
        hashlib release the GIL): the hash is most of a read, 2 GB/s a core with SHA-NI."""
        def one(key: str):
            rows = np.empty(self.shape, self.dtype)
            view = memoryview(rows).cast("B")
            try:
                got = _read_into(f"{self._blocks}/{key[:2]}/{key}.bin", view)
            except OSError as exc:
                return exc
            return rows, got, hashlib.sha256(view).hexdigest()

        workers = min(self.read_threads, len(keys) * self.nbytes // PARALLEL_READ_BYTES)
        if workers < 2:
            return [one(key) for key in keys]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.read_threads, "edgeds-prefix-read")
        parts = [keys[i::workers] for i in range(workers)]  # a few calls, not one per block
        done = list(self._pool.map(lambda part: [one(key) for key in part], parts))
        return [done[i % workers][i // workers] for i in range(len(keys))]

    def _checked(self, key: str, listed: tuple, fetched) -> np.ndarray | None:
        """The rows of a block fetched, where they are this engine's and sound; else None, with
        a warning (the writer drops the block)."""
        namespace, dtype, shape, nbytes, sha = listed
        if isinstance(fetched, FileNotFoundError):
            return None  # evicted by the writer after the row was read
        if isinstance(fetched, OSError):
            self.warn(f"block {key[:16]}: unreadable ({fetched.strerror}); ignored")
            return None
        rows, got, digest = fetched
        if (namespace, dtype, shape) != (self.namespace, self.dtype.str, json.dumps(self.shape)):
            why = "another artifact's or layout's block"
        elif nbytes != self.nbytes:
            why = f"{nbytes} bytes listed, not {self.nbytes}"
        elif got != nbytes:
            why = f"{got} bytes, not {self.nbytes}"
        elif digest != sha:
            why = "its bytes do not match its checksum"
        else:
            self._touched.append(key)
            return rows
        self.warn(f"block {key[:16]} in {self.folder}: {why}; ignored")
        if self.writer:
            self._drop([key])
        return None

    def write(self, key: str, parent: str | None, rows: np.ndarray) -> bool:
        """Keep a block (writer only); False where it is not written."""
        return self.write_many([(key, parent, rows)]) == 1

    def write_many(self, blocks: list[tuple[str, str | None, np.ndarray]]) -> int:
        """Keep blocks (key, parent, rows), heads first (writer only): how many were written.
        Room is made first (its own commits: a block is unlisted before its file goes), then
        every file is put in place and all are listed in one transaction."""
        if not self.writer or self.nbytes > self.max_bytes:
            return 0
        self.flush()  # last uses first: eviction below goes by them
        tmp = None
        try:
            new, seen = [], set()
            for key, parent, rows in blocks:
                if (rows.dtype == self.dtype and rows.shape == self.shape and key not in seen
                        and not self.db.execute("SELECT 1 FROM blocks WHERE key = ?",
                                                (key,)).fetchone()):
                    new.append((key, parent, rows))
                    seen.add(key)
            (total,) = self.db.execute("SELECT COALESCE(SUM(nbytes), 0) FROM blocks").fetchone()
            total = self._make_room(len(new) * self.nbytes, total)
            new = new[:max(self.max_bytes - total, 0) // self.nbytes]
            listed = []
            for key, parent, rows in new:
                data = memoryview(np.ascontiguousarray(rows)).cast("B")
                path = self._path(key)
                tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
                path.parent.mkdir(exist_ok=True)
                tmp.write_bytes(data)
                os.replace(tmp, path)
                tmp = None
                listed.append((key, self.namespace, parent, self.dtype.str,
                               json.dumps(self.shape), len(data),
                               hashlib.sha256(data).hexdigest(), time.time()))
            with self.db:
                self.db.execute("BEGIN")
                self.db.executemany("INSERT OR REPLACE INTO blocks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                    listed)
            return len(listed)
        except (OSError, sqlite3.DatabaseError) as exc:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            # Files put in place but not listed are what the next writer's sweep removes.
            self.warn(f"{self.folder}: cannot write a block ({exc}); this run writes no more")
            self.writer = False
            return 0

    def _make_room(self, nbytes: int, total: int) -> int:
        """Evict least recently used leaves until `nbytes` more fit under max_bytes; the
        blocks' total after."""
        while total + nbytes > self.max_bytes:
            leaves = self.db.execute(
                "SELECT key, nbytes FROM blocks b WHERE NOT EXISTS "
                "(SELECT 1 FROM blocks c WHERE c.parent = b.key) ORDER BY used LIMIT 64").fetchall()
            if not leaves:
                return total
            for key, size in leaves:
                if total + nbytes <= self.max_bytes:
                    break
                self._drop([key])
                total -= size
        return total

    def _drop(self, keys: list[str]) -> None:
        self.db.execute(f"DELETE FROM blocks WHERE key IN ({','.join('?' * len(keys))})", keys)
        for key in keys:  # unlisted first: a reader never finds a listed block without its file
            self._path(key).unlink(missing_ok=True)

    def total_bytes(self) -> int:
        return self.db.execute("SELECT COALESCE(SUM(nbytes), 0) FROM blocks").fetchone()[0]
