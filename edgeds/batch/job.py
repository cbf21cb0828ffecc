"""`edgeds infer`: a JSONL file through one model, resumable and crash-safe.

Input is read lazily and fed to the engine's continuous batching loop; each result is written
and flushed as soon as it is done. Bad lines become error records and the job goes on.
SIGINT/SIGTERM stop the intake, keep everything written, and leave a job that resumes.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import generate as gen
from ..engine import Engine
from ..sampling import SamplingParams
from .output import OutputLog
from .progress import JobStats, Progress
from .records import BadRecord, Record, parse_line, read_lines


@dataclass(frozen=True)
class JobOptions:
    input: str  # a path, or "-" for stdin
    output: str  # a path, or "-" for stdout
    defaults: SamplingParams
    text_format: bool = False
    batch_size: int | None = None
    truncate: bool = False
    overwrite: bool = False
    fail_fast: bool = False
    timings: bool = True


class _Stop:
    """Set by SIGINT/SIGTERM; the loop checks it between steps."""

    def __init__(self):
        self.requested = False

    def __call__(self, *_):
        self.requested = True


@contextmanager
def _signals(stop: _Stop):
    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def job_settings(engine: Engine, opts: JobOptions) -> dict:
    """What must match for a resume: the artifact and everything that changes results."""
    d = opts.defaults
    return {"artifact_sha256": engine.artifact.digest, "input": opts.input,
            "input_format": "text" if opts.text_format else "jsonl",
            "max_new_tokens": d.max_new_tokens, "temperature": d.temperature, "top_p": d.top_p,
            "top_k": d.top_k, "min_p": d.min_p, "repetition_penalty": d.repetition_penalty,
            "seed": d.seed, "stop": list(d.stop), "truncate": opts.truncate}


def run_job(engine: Engine, opts: JobOptions, progress_stream=None) -> JobStats:
    out = OutputLog(None if opts.output == "-" else Path(opts.output), job_settings(engine, opts), opts.overwrite)
    stats = JobStats(skipped=out.resumed, skipped_failed=out.resumed_failed)
    infile = sys.stdin.buffer if opts.input == "-" else open(opts.input, "rb")
    total = None if opts.input == "-" else _count_lines(opts.input)
    progress = Progress(total, progress_stream)
    stop = _Stop()
    failed_fast = False

    def fail(line: int, rid, error: str) -> None:
        nonlocal failed_fast
        out.write({"id": rid, "line": line, "error": error})
        stats.failed += 1
        if opts.fail_fast:
            failed_fast = True

    def requests() -> Iterator[gen.Request]:
        first_line_of: dict = {}
        for n, raw in read_lines(infile):
            rec = parse_line(n, raw, opts.defaults, opts.text_format)
            if rec is None:
                continue
            rid = rec.id
            if rid is not None:
                key = (type(rid).__name__, rid)
                if key in first_line_of:
                    if not out.is_done(n, None):
                        fail(n, None, f"duplicate id {rid!r} (first on line {first_line_of[key]})")
                    continue
                first_line_of[key] = n
            if out.is_done(n, rid):
                continue
            if isinstance(rec, BadRecord):
                fail(n, rec.id, rec.error)
            else:
                req = _to_request(engine, rec, opts, fail)
                if req is not None:
                    yield req
            if failed_fast:
                return

    try:
        with _signals(stop):
            for event in engine.run(requests(), opts.batch_size, should_stop=lambda: stop.requested or failed_fast):
                if isinstance(event, gen.Finished):
                    _write_result(engine, out, event, stats, opts.timings)
                    progress.update(stats)
                if stop.requested:
                    stats.interrupted = True
                    break
    finally:
        out.close()
        if infile is not sys.stdin.buffer:
            infile.close()
    progress.update(stats, force=True)
    return stats


def _to_request(engine: Engine, rec: Record, opts: JobOptions, fail) -> gen.Request | None:
    try:
        ids = engine.encode(rec.prompt)
    except Exception as exc:  # a template may raise on odd conversations; that record fails alone
        fail(rec.line, rec.id, f"cannot tokenize: {exc}")
        return None
    limit = engine.context - 1
    if len(ids) > limit:
        if not opts.truncate:
            fail(rec.line, rec.id, f"prompt has {len(ids)} tokens, over the context of {engine.context} "
                                   "(pass --truncate to keep its end)")
            return None
        keep = max(engine.context - rec.params.max_new_tokens, engine.context // 2)
        ids = np.ascontiguousarray(ids[-keep:])
    return gen.Request((rec.line, rec.id), ids, rec.params)


def _write_result(engine: Engine, out: OutputLog, done: gen.Finished, stats: JobStats, timings: bool) -> None:
    line, rid = done.key
    c = engine.complete(done)
    record = {"id": rid, "text": c.text}
    if engine.tokenizer.reasoning:
        record["reasoning"] = c.reasoning
    record["finish_reason"] = c.finish_reason
    record["usage"] = {"prompt_tokens": c.prompt_tokens, "completion_tokens": len(c.token_ids)}
    if timings:
        record["latency_s"] = round(done.latency_s, 4)
    record["line"] = line
    out.write(record)
    stats.ok += 1
    stats.prompt_tokens += c.prompt_tokens
    stats.generated_tokens += len(c.token_ids)
    stats.latencies.append(done.latency_s)
    stats.ttfts.append(done.ttft_s)


def _count_lines(path: str) -> int:
    count = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            count += block.count(b"\n")
    return count
