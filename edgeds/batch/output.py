"""The output JSONL of a batch job: one writer, resumed by content, whole records only.

- One writer: `OUT.lock` is flock'ed for the whole job. The kernel drops the lock when the
  process ends, however it ends; a second process is refused at once, before it writes.
- Resume by content: a result carries its request's digest (digest.py). A request read again
  is done when the output holds a result of its id with that digest; otherwise it is computed
  again and the new record supersedes the old one.
- Nothing is lost: superseded records move to `OUT.replaced.jsonl` and lines that are no
  record (a line cut by a crash, a damaged block) to `OUT.damaged`, so the output keeps one
  record per id. They move when the job ends (the output is rewritten beside itself and
  renamed over it) or, after a crash, when the next job ends.
- A record is one write of whole bytes. When one fails (disk full, read-only), the file is cut
  back to the last whole record and OutputError names the path and the reason.
- `OUT.job.json` says what wrote the output (artifact, settings): written beside, renamed.
  Nothing is made or emptied before the job starts (the model has loaded).
"""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import os
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

FSYNC_EVERY_S = 2.0
JOB, LOCK, REPLACED, DAMAGED = ".job.json", ".lock", ".replaced.jsonl", ".damaged"
MAX_RECORD_BYTES = 1 << 28  # a longer line is no record this writer wrote
_write = os.write  # tests put a failing writer here


class OutputError(UserError):
    """The output cannot be written (no folder, read-only, disk full); it ends on a whole
    record and a rerun resumes."""

    exit_code = 3


class OutputBusy(UserError):
    """Another process holds the output's lock."""


class ResumeError(UserError):
    pass


def side_file(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def record_key(rid) -> str:
    return json.dumps(rid)  # 1 and "1" are two ids


@dataclass
class _Old:
    """A record already in the output."""

    start: int  # byte offset of its line
    digest: str | None
    error: dict | None  # the whole record, for an error record


class OutputLog:
    def __init__(self, path: Path | None, overwrite: bool = False):
        """path None writes to stdout (no lock, no resume)."""
        self.path = path
        self._old: dict[str, _Old] = {}  # id key -> the last record of that id
        self._unkeyed: dict[int, list[_Old]] = {}  # line -> error records without an id
        self._drop: set[int] = set()  # offsets of superseded records
        self._damaged: set[int] = set()  # offsets of lines that are no record
        self._failed = False
        self._fd = self._lock = None
        if path is None:
            return
        self._lock = _acquire(path)
        try:
            self._open(overwrite)
        except BaseException:
            self.close()
            raise

    def _open(self, overwrite: bool) -> None:
        path, job = self.path, side_file(self.path, JOB)
        self._overwrite, self._end, self._last_sync = overwrite, 0, time.monotonic()
        with _reporting(path):
            for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
                stale.unlink(missing_ok=True)  # a crash's, while it held the lock
            if overwrite or not path.exists():
                return  # nothing to resume; the output is made when the job starts
            if path.stat().st_size and not job.exists():
                raise ResumeError(f"{path} exists but has no {job.name} (not an edgeds output?); "
                                  "pass --overwrite to start over, or another --output")
            # Opened now, so that a read-only output fails before the model loads.
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            self._cut_partial_tail()
            self._scan()
            self._end = os.fstat(self._fd).st_size

    def _cut_partial_tail(self) -> None:
        """A last line without its end was cut by a crash: moved aside, so appends start whole."""
        size = os.fstat(self._fd).st_size
        with open(self.path, "rb") as f:
            start = size
            while start > 0:
                f.seek(max(start - (1 << 16), 0))
                block = f.read(start - f.tell())
                if (i := block.rfind(b"\n")) >= 0:
                    start = start - len(block) + i + 1
                    break
                start -= len(block)
            if start < size:
                with open(side_file(self.path, DAMAGED), "ab") as aside:
                    _copy(f, start, size, aside)
                    aside.write(b"\n")
                    aside.flush()
                    os.fsync(aside.fileno())
                os.ftruncate(self._fd, start)

    def _scan(self) -> None:
        with open(self.path, "rb") as f:
            for start, _, raw in _lines(f):
                rec = _as_record(raw)
                if rec is None:
                    self._damaged.add(start)
                    continue
                old = _Old(start, rec.get("request_digest"), rec if "error" in rec else None)
                if rec.get("id") is None:
                    self._unkeyed.setdefault(rec.get("line"), []).append(old)
                else:
                    self._supersede(record_key(rec["id"]), old)

    def _supersede(self, key: str, new: _Old) -> None:
        if (old := self._old.get(key)) is not None:
            self._drop.add(old.start)
        self._old[key] = new

    @property
    def resumable(self) -> int:
        """Results found in the output when the job started."""
        return sum(o.error is None for o in self._old.values())

    def is_done(self, key: str, digest: str) -> bool:
        old = self._old.get(key)
        return old is not None and old.error is None and old.digest == digest

    def settle_line(self, line: int, unkeyed_error: dict | None = None) -> bool:
        """A line was read again: the error records it left without an id are superseded,
        except one equal to `unkeyed_error`, which stays (True: nothing to write)."""
        kept = False
        for old in self._unkeyed.pop(line, ()):
            if not kept and old.error == unkeyed_error:
                kept = True
            else:
                self._drop.add(old.start)
        return kept

    def has_error(self, key: str, record: dict) -> bool:
        """The output already holds exactly this error record for this id."""
        old = self._old.get(key)
        return old is not None and old.error == record

    def write(self, record: dict) -> None:
        data = _encode(record)
        if self.path is None:
            _to_stdout(data)
            return
        start = self._end
        with _reporting(self.path, cut_back=(self._fd, start), failed=self):
            view = memoryview(data)
            while view:
                view = view[_write(self._fd, view):]
            self._end += len(data)
            if time.monotonic() - self._last_sync >= FSYNC_EVERY_S:
                os.fsync(self._fd)
                self._last_sync = time.monotonic()
        if record.get("id") is not None:
            error = record if "error" in record else None
            new = _Old(start, record.get("request_digest"), error)
            self._supersede(record_key(record["id"]), new)

    def start(self, settings: dict) -> None:
        """The job starts (the model has loaded): OUT.job.json says what writes the output, and
        the output is made, or with --overwrite emptied, only now."""
        if self.path is None:
            return
        text = json.dumps(settings, indent=2, sort_keys=True) + "\n"
        _atomic_write(side_file(self.path, JOB), text.encode())
        if self._fd is None:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
            with _reporting(self.path):
                self._fd = os.open(self.path, flags | (os.O_TRUNC if self._overwrite else 0), 0o644)

    def finish(self) -> None:
        """Make every record durable and move superseded and damaged lines aside."""
        if self.path is None or self._failed or self._fd is None:
            return
        with _reporting(self.path, failed=self):
            os.fsync(self._fd)
            if self._drop or self._damaged:
                self._tidy()

    def _tidy(self) -> None:
        path = self.path
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with ExitStack() as files:
                def opened(name, mode):
                    return files.enter_context(open(name, mode))

                src, dst = opened(path, "rb"), opened(tmp, "wb")
                # Only the side files that receive lines: no empty one is left beside the output.
                replaced = self._drop and opened(side_file(path, REPLACED), "ab")
                damaged = self._damaged and opened(side_file(path, DAMAGED), "ab")
                for start, end, raw in _lines(src):
                    to = (replaced if start in self._drop
                          else damaged if start in self._damaged else dst)
                    if raw is None:  # a damaged line too long to hold
                        _copy(src, start, end, to)
                    else:
                        to.write(raw)
                for f in (replaced, damaged, dst):  # the moved lines are safe before they go
                    if f:
                        f.flush()
                        os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_folder(path.parent)
        finally:
            tmp.unlink(missing_ok=True)
        self._drop.clear()
        self._damaged.clear()

    def close(self) -> None:
        if self._lock is not None:
            # Removed while held: a process that opened it meanwhile sees it gone (_acquire).
            side_file(self.path, LOCK).unlink(missing_ok=True)
        for fd in (self._fd, self._lock):
            if fd is not None:
                os.close(fd)
        self._fd = self._lock = None

    def __enter__(self) -> OutputLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _reporting:
    """OSError -> OutputError naming the output and the reason; on a failed append the file is
    cut back to where the record started, so it ends on a whole record."""

    def __init__(self, path: Path, cut_back: tuple[int, int] | None = None, failed=None):
        self.path, self.cut_back, self.failed = path, cut_back, failed

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if kind is None or not issubclass(kind, OSError):
            return False
        if self.cut_back is not None:
            try:
                os.ftruncate(*self.cut_back)
            except OSError:
                pass  # the next start cuts the partial line
        if self.failed is not None:
            self.failed._failed = True
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(self.path) else ""
        raise OutputError(f"cannot write {self.path}: {_reason(exc)}{where}") from None


def _reason(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the device (free some and rerun to resume)"
    if exc.errno == errno.EROFS:
        return "the file system is read-only"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.ENOENT:
        return "its folder does not exist"
    return exc.strerror or str(exc)


def _acquire(path: Path) -> int:
    lock = side_file(path, LOCK)
    while True:
        with _reporting(path):
            if not path.parent.is_dir():
                raise FileNotFoundError(errno.ENOENT, "no folder", str(path))
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 20, 0).decode("ascii", "replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise OutputBusy(f"{path} is being written by another edgeds process{who}; "
                             "wait for it to end or choose another --output") from None
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # its holder removed it as we opened it: take the new one
    try:  # who holds it, for the message above; a full disk must not stop the job here
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass
    return fd


def _encode(record: dict) -> bytes:
    try:
        return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: written as its JSON escape instead
        return (json.dumps(record) + "\n").encode("ascii")


def _to_stdout(data: bytes) -> None:
    try:
        out = getattr(sys.stdout, "buffer", None)
        if out is not None:
            out.write(data)
        else:
            sys.stdout.write(data.decode("utf-8"))
        sys.stdout.flush()
    except (BrokenPipeError, ValueError) as exc:
        raise OutputError(f"cannot write to stdout: {exc}") from None


def _as_record(raw: bytes | None) -> dict | None:
    if raw is None or not raw.endswith(b"\n"):
        return None
    try:
        rec = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return rec if isinstance(rec, dict) and "id" in rec else None


def _lines(f):
    """(start, end, line with its LF) per line of an output whose last line is whole; the
    line is None when it is over MAX_RECORD_BYTES."""
    pos = 0
    while piece := f.readline(MAX_RECORD_BYTES):
        start = pos
        pos += len(piece)
        if piece.endswith(b"\n"):
            yield start, pos, piece
            continue
        while piece and not piece.endswith(b"\n"):
            piece = f.readline(MAX_RECORD_BYTES)
            pos += len(piece)
        yield start, pos, None


def _copy(src, start: int, end: int, dst) -> None:
    here = src.tell()
    src.seek(start)
    while start < end and (block := src.read(min(1 << 20, end - start))):
        dst.write(block)
        start += len(block)
    src.seek(here)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with _reporting(path):
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_folder(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
