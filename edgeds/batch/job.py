"""`edgeds infer`: a JSONL file through one model, resumable and crash-safe.

Input is read as a stream and fed to the engine's continuous batching loop; each result is
written as soon as it is done. Bad lines become error records and the job goes on. SIGINT and
SIGTERM end the job within a decode step (at once while it waits for input or renders a
template), keeping every record written; the same command resumes it.
"""

from __future__ import annotations

import platform
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .. import generate as gen
from ..engine import Engine
from ..errors import EdgedsError
from ..sampling import SamplingParams
from .digest import request_digest
from .intake import END, NOT_READY, Intake
from .metrics import JobView, MetricsPublisher
from .output import OutputLog, record_key
from .prefix_order import PrefixOrder
from .progress import JobStats, Progress
from .records import DEFAULT_MAX_LINE_BYTES, BadRecord, Record, parse_line


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
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES


class Interrupted(BaseException):
    """Raised by the signal handler where stopping at once loses nothing (a BaseException, so
    that a template's or a tokenizer's `except Exception` does not turn it into a record)."""


class _Stop:
    """Set by SIGINT/SIGTERM; the loop looks at it after every event. Inside `interruptible`
    (waiting, tokenizing) the handler raises instead: nothing is half-written there."""

    def __init__(self):
        self.requested = False
        self.interruptible = False

    def __call__(self, *_):
        self.requested = True
        if self.interruptible:
            self.interruptible = False
            raise Interrupted

    @contextmanager
    def at_once(self):
        self.interruptible = True
        try:
            if self.requested:
                raise Interrupted
            yield
        finally:
            self.interruptible = False


@contextmanager
def _signals(stop: _Stop):
    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def open_output(opts: JobOptions) -> OutputLog:
    """Lock and read the output (before the model loads: a busy output fails at once)."""
    return OutputLog(None if opts.output == "-" else Path(opts.output), opts.overwrite)


def job_settings(engine: Engine, opts: JobOptions) -> dict:
    """What the job ran with (OUT.job.json); records carry their own request digests."""
    d = opts.defaults
    return {"artifact_sha256": engine.artifact.digest, "artifact": str(engine.artifact.root),
            "input": opts.input,
            "input_format": "text" if opts.text_format else "jsonl", "context": engine.context,
            "max_new_tokens": d.max_new_tokens, "temperature": d.temperature, "top_p": d.top_p,
            "top_k": d.top_k, "min_p": d.min_p, "repetition_penalty": d.repetition_penalty,
            "seed": d.seed, "stop": list(d.stop), "truncate": opts.truncate,
            "command": list(sys.argv), "versions": versions(),
            "engine": {k: v for k, v in engine.describe().items()
                       if k not in ("reasons", "advice")}}


def versions() -> dict[str, str]:
    """edgeds', Python's and the runtime libraries' versions (for an audit of the output)."""
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    out = {"edgeds": __version__, "python": platform.python_version()}
    for name in ("numpy", "onnxruntime", "tokenizers", "openvino"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def record_settings(params: SamplingParams) -> dict:
    """The settings a record was generated with, its own seed included (its audit trail)."""
    return {"max_new_tokens": params.max_new_tokens, "temperature": params.temperature,
            "top_p": params.top_p, "top_k": params.top_k, "min_p": params.min_p,
            "repetition_penalty": params.repetition_penalty, "stop": list(params.stop),
            "seed": params.seed}


def run_job(engine: Engine, opts: JobOptions, out: OutputLog | None = None,
            progress_stream=None, metrics: MetricsPublisher | None = None) -> JobStats:
    """Run the job; `metrics` (optional) publishes its Prometheus metrics while it runs."""
    if out is None:
        with open_output(opts) as own:
            return run_job(engine, opts, own, progress_stream, metrics)
    return _Job(engine, opts, out, metrics).run(progress_stream)


def metric_labels(engine: Engine) -> dict[str, str]:
    return {"backend": engine.choice.backend, "profile": engine.profile.name,
            "artifact_sha256": engine.artifact.digest}


def _kv_bytes_per_token(engine: Engine) -> int:
    try:
        return engine.artifact.manifest.kv_layout(engine.choice.artifact_format).bytes_per_token
    except (KeyError, TypeError, ValueError, EdgedsError):  # no cache layout: no bytes metric
        return 0


class _Job:
    def __init__(self, engine: Engine, opts: JobOptions, out: OutputLog,
                 metrics: MetricsPublisher | None = None):
        self.engine, self.opts, self.out, self.metrics = engine, opts, out, metrics
        self.artifact_digest = engine.artifact.digest  # of the manifest loaded, read once
        self.stats = JobStats()
        self.stop = _Stop()
        self.failed_fast = False
        self.order: PrefixOrder | None = None

    def run(self, progress_stream) -> JobStats:
        engine, opts, out, stats, stop = self.engine, self.opts, self.out, self.stats, self.stop
        out.start(job_settings(engine, opts))
        intake = Intake(opts.input, opts.max_line_bytes)
        progress = Progress(intake.total, stats, opts.defaults.max_new_tokens, progress_stream)
        prefix_before = replace(engine.prefix.stats) if engine.prefix else None
        try:
            with _signals(stop):
                progress.start()
                if self.metrics is not None:
                    self.metrics.start(JobView(stats, intake.total, metric_labels(engine),
                                               _kv_bytes_per_token(engine)))
                try:
                    events = engine.run(self._ordered(intake), opts.batch_size,
                                        should_stop=lambda: stop.requested or self.failed_fast)
                    for event in events:
                        if isinstance(event, gen.TokenEvent):
                            stats.tokens += 1
                            stats.cached_tokens += 1
                        elif isinstance(event, gen.Finished):
                            self._write_result(event)
                            if prefix_before is not None:  # live, for the metrics
                                reused = engine.prefix.stats.since(prefix_before)
                                stats.prefix_cache_hits = reused.hits
                                stats.prefix_cache_hit_tokens = reused.tokens_reused
                        if stop.requested:
                            break
                except Interrupted:
                    pass
                stats.interrupted = stop.requested
                out.finish()
        finally:
            stats.ended = True
            if self.metrics is not None:
                self.metrics.stop()
            progress.stop()
            intake.close()
        stats.input_note = intake.stopped_reason
        if prefix_before is not None:
            stats.prefix_cache = engine.prefix.stats.since(prefix_before).summary()
        return stats

    def _ordered(self, intake: Intake) -> Iterator[gen.Request | None]:
        """Requests for the loop, those sharing a prompt prefix side by side where the prefix
        cache is on (prefix_order.py); a request is running from here on."""
        requests = self._requests(intake)
        if self.engine.prefix is not None:
            requests = self.order = PrefixOrder(requests, self.engine.prefix.block_tokens)
        for req in requests:
            if req is not None:
                self.stats.in_flight += 1
                self.stats.cached_tokens += len(req.prompt_ids)
            yield req

    def _requests(self, intake: Intake) -> Iterator[gen.Request | None]:
        """Requests in input order; None when no line has come yet while others decode."""
        first_line_of: dict[str, int] = {}
        while not self.failed_fast:
            idle = self.stats.in_flight == 0 and not (self.order and self.order.waiting)
            with self.stop.at_once():
                item = intake.get(idle, lambda: self.stop.requested)
            if item is END:
                return
            if item is NOT_READY:
                yield None
                continue
            n, raw = item
            rec = parse_line(n, raw, self.opts.defaults, self.opts.text_format,
                             self.opts.max_line_bytes)
            if rec is None:
                self.out.settle_line(n)
                continue
            key = None if rec.id is None else record_key(rec.id)
            if key is not None and key in first_line_of:
                self._fail(n, None, f"duplicate id {rec.id!r} (first on line {first_line_of[key]})",
                           "id")
                continue
            if key is not None:
                first_line_of[key] = n
            if isinstance(rec, BadRecord):
                self._fail(n, rec.id, rec.error, rec.field)
                continue
            self.out.settle_line(n)
            digest = request_digest(rec, self.engine.artifact.digest, self.engine.context,
                                    self.opts.truncate)
            if self.out.is_done(key, digest):
                self.stats.skipped += 1
                continue
            req = self._to_request(rec, digest)
            if req is not None:
                yield req

    def _fail(self, line: int, rid, error: str, field: str | None = None) -> None:
        record = {"id": rid, "line": line}
        if field:
            record["field"] = field
        record["error"] = error
        self.stats.failed += 1
        self.failed_fast = self.opts.fail_fast
        if rid is None:
            if self.out.settle_line(line, record):
                return  # the same error is in the output already
        else:
            self.out.settle_line(line)
            if self.out.has_error(record_key(rid), record):
                return
        self.out.write(record)

    def _to_request(self, rec: Record, digest: str) -> gen.Request | None:
        engine = self.engine
        field = "prompt" if isinstance(rec.prompt, str) else "messages"
        try:
            with self.stop.at_once():
                ids = engine.encode(rec.prompt)
        except Exception as exc:  # a template may raise on odd conversations; that record fails
            self._fail(rec.line, rec.id, f"cannot tokenize: {exc}", field)
            return None
        limit = engine.context - 1
        if len(ids) > limit:
            if not self.opts.truncate:
                self._fail(rec.line, rec.id, f"prompt has {len(ids)} tokens, over the context of "
                           f"{engine.context} (pass --truncate to keep its end)", field)
                return None
            keep = max(engine.context - rec.params.max_new_tokens, engine.context // 2)
            ids = np.ascontiguousarray(ids[-keep:])
        return gen.Request((rec.line, rec.id, digest, rec.params), ids, rec.params)

    def _write_result(self, done: gen.Finished) -> None:
        engine, stats = self.engine, self.stats
        line, rid, digest, params = done.key
        c = engine.complete(done)
        record = {"id": rid, "text": c.text}
        if engine.tokenizer.reasoning:
            record["reasoning"] = c.reasoning
        record["finish_reason"] = c.finish_reason
        record["usage"] = {"prompt_tokens": c.prompt_tokens, "completion_tokens": len(c.token_ids)}
        if self.opts.timings:
            record["latency_s"] = round(done.latency_s, 4)
            record["ttft_s"] = round(done.ttft_s, 4)
        record["line"] = line
        record["request_digest"] = digest
        # What an audit needs beside the digest: which model, which backend, which settings.
        record["artifact_sha256"] = self.artifact_digest
        record["backend"] = engine.choice.backend
        record["settings"] = record_settings(params)
        self.out.write(record)
        stats.in_flight -= 1
        # Token events of this sequence: its tokens, and the EOS that ended it (not kept).
        events = len(c.token_ids) + (done.finish_reason == "stop" and done.stop_text is None)
        stats.settled_tokens += events
        stats.cached_tokens -= c.prompt_tokens + events
        stats.ok += 1
        stats.prompt_tokens += c.prompt_tokens
        stats.generated_tokens += len(c.token_ids)
        stats.latencies.append(done.latency_s)
        stats.ttfts.append(done.ttft_s)
