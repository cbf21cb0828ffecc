"""The one writer of a job's records, whatever computes them (this process, or Ray's workers):
each error record written once (not again when the output already holds the same one), each
result counted in the job's stats."""

from __future__ import annotations

from .output import OutputLog, record_key
from .progress import JobStats
from .results import error_record


class JobWriter:
    def __init__(self, out: OutputLog, stats: JobStats, fail_fast: bool = False):
        self.out, self.stats, self.fail_fast = out, stats, fail_fast
        self.failed_fast = False  # set by the first failure under fail_fast: the job stops

    def fail(self, line: int, rid, error: str, field: str | None = None) -> None:
        self.failed(error_record(line, rid, error, field))

    def failed(self, record: dict) -> None:
        """An error record (results.error_record's)."""
        self.stats.failed += 1
        self.failed_fast = self.fail_fast
        line, rid = record["line"], record["id"]
        if rid is None:
            if self.out.settle_line(line, record):
                return  # the same error is in the output already
        else:
            self.out.settle_line(line)
            if self.out.has_error(record_key(rid), record):
                return
        self.out.write(record)

    def result(self, record: dict, latency_s: float, ttft_s: float) -> None:
        """A result record (results.result_record's)."""
        self.out.write(record)
        s, usage = self.stats, record["usage"]
        s.ok += 1
        s.prompt_tokens += usage["prompt_tokens"]
        s.generated_tokens += usage["completion_tokens"]
        s.latencies.append(latency_s)
        s.ttfts.append(ttft_s)
