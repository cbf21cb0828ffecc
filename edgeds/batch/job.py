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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from .. import generate as gen
from ..artifact import Artifact
from ..engine import Engine
from ..errors import UserError
from ..sampling import SamplingParams
from .admission import Admission
from .intake import END, NOT_READY, Intake
from .metrics import JobView, MetricsPublisher
from .output import OutputLog
from .prefix_order import PrefixOrder
from .progress import JobStats, Progress
from .records import DEFAULT_MAX_LINE_BYTES
from .results import RecordFailed, prompt_ids, result_record
from .writer import JobWriter


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


class StopFlag:
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
def handle_signals(stop: StopFlag):
    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@contextmanager
def job_running(opts: JobOptions, out: OutputLog, settings: dict, stats: JobStats,
                stop: StopFlag, progress_stream, metrics: MetricsPublisher | None,
                view: Callable[[int | None], JobView], shutdown: Callable[[], None] | None = None):
    """What a job does around its work, the local one and --ray's alike: OUT.job.json written,
    the input opened (yielded), progress and metrics on and the signals caught while the body
    runs; an interrupt ends the body, the output is finished; then, whatever happened, stats
    marked ended (the metrics' last scrape says so) before metrics and progress stop, the input
    closes and `shutdown` (Ray's) runs last. `view(total)` is what the metrics publish."""
    out.start(settings)
    intake = Intake(opts.input, opts.max_line_bytes)
    progress = Progress(intake.total, stats, opts.defaults.max_new_tokens, progress_stream)
    try:
        with handle_signals(stop):
            progress.start()
            if metrics is not None:
                metrics.start(view(intake.total))
            try:
                yield intake
            except Interrupted:
                pass
            stats.interrupted = stop.requested
            out.finish()
    finally:
        stats.ended = True
        if metrics is not None:
            metrics.stop()
        progress.stop()
        intake.close()
        if shutdown is not None:
            shutdown()
    stats.input_note = intake.stopped_reason


def open_output(opts: JobOptions) -> OutputLog:
    """Lock and read the output (before the model loads: a busy output fails at once)."""
    return OutputLog(None if opts.output == "-" else Path(opts.output), opts.overwrite)


def job_settings(engine: Engine, opts: JobOptions) -> dict:
    """What the job ran with (OUT.job.json); records carry their own request digests."""
    return settings_of(opts, engine.artifact, engine.context,
                       {k: v for k, v in engine.describe().items()
                        if k not in ("reasons", "advice")})


def settings_of(opts: JobOptions, artifact: Artifact, context: int, engine: dict) -> dict:
    """OUT.job.json of a job on `artifact` at `context`; `engine` says what ran it."""
    d = opts.defaults
    return {"artifact_sha256": artifact.digest, "artifact": str(artifact.root),
            "input": opts.input,
            "input_format": "text" if opts.text_format else "jsonl", "context": context,
            "max_new_tokens": d.max_new_tokens, "temperature": d.temperature, "top_p": d.top_p,
            "top_k": d.top_k, "min_p": d.min_p, "repetition_penalty": d.repetition_penalty,
            "seed": d.seed, "stop": list(d.stop), "truncate": opts.truncate,
            "command": list(sys.argv), "versions": versions(), "engine": engine}


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
    except (KeyError, TypeError, ValueError, UserError):  # no cache layout: no bytes metric
        return 0


class _Job:
    def __init__(self, engine: Engine, opts: JobOptions, out: OutputLog,
                 metrics: MetricsPublisher | None = None):
        self.engine, self.opts, self.out, self.metrics = engine, opts, out, metrics
        self.artifact_digest = engine.artifact.digest  # of the manifest loaded, read once
        self.stats = JobStats()
        self.writer = JobWriter(out, self.stats, opts.fail_fast)
        self.stop = StopFlag()
        self.order: PrefixOrder | None = None

    def run(self, progress_stream) -> JobStats:
        engine, opts, stats, stop = self.engine, self.opts, self.stats, self.stop
        prefix_before = replace(engine.prefix.stats) if engine.prefix else None

        def view(total: int | None) -> JobView:
            return JobView(stats, total, metric_labels(engine), _kv_bytes_per_token(engine))

        with job_running(opts, self.out, job_settings(engine, opts), stats, stop,
                         progress_stream, self.metrics, view) as intake:
            events = engine.run(self._ordered(intake), opts.batch_size,
                                should_stop=lambda: stop.requested or self.writer.failed_fast)
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
                elif isinstance(event, gen.Rejected):
                    rec = event.key[0]
                    self.stats.in_flight -= 1
                    self.writer.fail(rec.line, rec.id, event.error)
                if stop.requested:
                    break
        if prefix_before is not None:
            stats.prefix_cache = engine.prefix.stats.since(prefix_before).summary()
        return stats

    def _ordered(self, intake: Intake) -> Iterator[gen.Request | None]:
        """Requests for the loop, those sharing a prompt prefix side by side where the prefix
        cache is on (prefix_order.py); a request is running from here on. A fail-fast job keeps
        input order: reading ahead would find its first bad line while the lines before it
        wait, and it would stop without running them."""
        requests = self._requests(intake)
        if self.engine.prefix is not None and not self.opts.fail_fast:
            requests = self.order = PrefixOrder(requests, self.engine.prefix.block_tokens)
        for req in requests:
            if req is not None:
                self.stats.in_flight += 1
                self.stats.cached_tokens += len(req.prompt_ids)
            yield req

    def _requests(self, intake: Intake) -> Iterator[gen.Request | None]:
        """Requests in input order; None when no line has come yet while others decode."""
        admission = Admission(self.opts, self.out, self.writer, self.artifact_digest,
                              self.engine.context)
        while not self.writer.failed_fast:
            idle = self.stats.in_flight == 0 and not (self.order and self.order.waiting)
            with self.stop.at_once():
                item = intake.get(idle, lambda: self.stop.requested)
            if item is END:
                return
            if item is NOT_READY:
                yield None
                continue
            admitted = admission.admit(*item)
            if admitted is None:
                continue
            rec, digest = admitted
            try:
                with self.stop.at_once():
                    ids = prompt_ids(self.engine, rec, self.opts.truncate)
            except RecordFailed as failed:
                self.writer.fail(rec.line, rec.id, failed.error, failed.field)
                continue
            yield gen.Request((rec, digest), ids, rec.params)

    def _write_result(self, done: gen.Finished) -> None:
        stats = self.stats
        rec, digest = done.key
        record = result_record(self.engine, done, rec, digest, self.artifact_digest,
                               self.opts.timings)
        self.writer.result(record, done.latency_s, done.ttft_s)
        stats.in_flight -= 1
        completion, prompt = record["usage"]["completion_tokens"], record["usage"]["prompt_tokens"]
        # Token events of this sequence: its tokens, and the EOS that ended it (not kept).
        events = completion + (done.finish_reason == "stop" and done.stop_text is None)
        stats.settled_tokens += events
        stats.cached_tokens -= prompt + events
