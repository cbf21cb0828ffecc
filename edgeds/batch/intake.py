"""The input of a batch job, read as a stream.

A regular file is read where the job runs (a read never waits long). Anything else (stdin, a
pipe, a FIFO, a terminal) is read by a thread into a short queue, so that the job keeps
decoding while no line has come, and a line that arrives starts at once.
"""

from __future__ import annotations

import io
import os
import queue
import stat
import sys
import threading
from collections.abc import Callable

from .records import READ_CHUNK, LineReader, is_blank

NOT_READY, END = object(), object()
QUEUE_LINES = 256
POLL_S = 0.1  # how often a wait for input looks at the stop flag


class Intake:
    def __init__(self, source: str, max_line_bytes: int):
        # Unbuffered: the reader thread may still wait in a read when the process exits, and
        # a buffered stream's lock held there is fatal at interpreter shutdown.
        if source == "-":
            self._file = io.FileIO(os.dup(sys.stdin.fileno()), "rb")
        else:
            self._file = open(source, "rb", buffering=0)  # noqa: SIM115 - closed by close()
        regular = stat.S_ISREG(os.fstat(self._file.fileno()).st_mode)
        if regular:
            self._file = io.BufferedReader(self._file, READ_CHUNK)
        self.total = _count_records(self._file, max_line_bytes) if regular else None
        self.reader = LineReader(self._file, max_line_bytes)
        self.error: str | None = None
        self._lines = iter(self.reader)
        self._queue: queue.Queue | None = None
        if not regular:
            self._queue = queue.Queue(QUEUE_LINES)
            threading.Thread(target=self._pump, name="edgeds-input", daemon=True).start()

    def _pump(self) -> None:
        try:
            for item in self._lines:
                self._queue.put(item)
        except (OSError, ValueError) as exc:  # a terminal hung up, a closed stream
            self.error = str(exc)
        finally:
            self._queue.put(END)

    def get(self, wait: bool, stopped: Callable[[], bool]):
        """The next (line number, raw bytes); NOT_READY when none has come and `wait` is
        False; END at the end of the input, or once `stopped()` while waiting."""
        if self._queue is None:
            return next(self._lines, END)
        while True:
            try:
                return self._queue.get(timeout=POLL_S) if wait else self._queue.get_nowait()
            except queue.Empty:
                if not wait:
                    return NOT_READY
                if stopped():
                    return END

    @property
    def stopped_reason(self) -> str | None:
        return self.reader.stopped or self.error

    def close(self) -> None:
        if self._queue is None:
            self._file.close()  # a reader thread's file stays open until the process ends


def _count_records(f, max_line_bytes: int) -> int:
    """Records a regular file will give (for progress and metrics): its lines as the job reads
    them, less the blank ones, which give none. The file is read again after."""
    count = sum(not is_blank(n, raw) for n, raw in LineReader(f, max_line_bytes))
    f.seek(0)
    return count
