"""Which input lines a job computes, the same for every runner (this process, or Ray):
blank lines are passed over, bad lines and repeated ids become error records, and a record
whose id and request digest the output already holds is skipped (the resume rule)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .digest import request_digest
from .output import OutputLog, record_key
from .records import BadRecord, Record, parse_line
from .writer import JobWriter

if TYPE_CHECKING:
    from .job import JobOptions


class Admission:
    def __init__(self, opts: JobOptions, out: OutputLog, writer: JobWriter,
                 artifact_digest: str, context: int):
        self.opts, self.out, self.writer = opts, out, writer
        self.artifact_digest, self.context = artifact_digest, context
        self._first_line_of: dict[str, int] = {}

    def admit(self, n: int, raw: bytes | None) -> tuple[Record, str] | None:
        """(record, its request digest) when line `n` is to compute; None when it is not (blank,
        failed: its error record is written, or done already)."""
        opts, out = self.opts, self.out
        rec = parse_line(n, raw, opts.defaults, opts.text_format, opts.max_line_bytes)
        if rec is None:
            out.settle_line(n)
            return None
        key = None if rec.id is None else record_key(rec.id)
        if key is not None and key in self._first_line_of:
            self.writer.fail(n, None, f"duplicate id {rec.id!r} (first on line "
                             f"{self._first_line_of[key]})", "id")
            return None
        if key is not None:
            self._first_line_of[key] = n
        if isinstance(rec, BadRecord):
            self.writer.fail(n, rec.id, rec.error, rec.field)
            return None
        out.settle_line(n)
        digest = request_digest(rec, self.artifact_digest, self.context, opts.truncate)
        if out.is_done(key, digest):
            self.writer.stats.skipped += 1
            return None
        return rec, digest
