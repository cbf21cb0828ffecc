"""`edgeds infer --ray`: the local job's input and output, the engines on a Ray cluster.

This process (the driver) reads and checks the input and resumes from the output exactly as the
local job does (batch/admission.py), hands the records to compute to Ray Data as self-contained
request lines, and writes each result that comes back through the local job's writer: it is the
output's only writer, under its lock. The input streams through: request lines go into Ray's
object store one Ray batch at a time as they are read (Ray spills them to disk past its memory
budget), so the driver holds at most a window of them (Batches), never the input; what it keeps
per record is its key (each id is written once). Workers (edgeds.ray.Predictor, one engine each)
write nothing, so a worker killed mid-batch costs only that batch, which Ray runs again, and a
driver killed at any point leaves whole records that the next run keeps.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from edgeds.artifact import load_artifact
from edgeds.batch.admission import Admission
from edgeds.batch.intake import END, Intake
from edgeds.batch.job import JobOptions, StopFlag, job_running, settings_of
from edgeds.batch.metrics import JobView, MetricsPublisher
from edgeds.batch.output import OutputLog, record_key
from edgeds.batch.progress import JobStats
from edgeds.batch.records import request_line
from edgeds.batch.writer import JobWriter
from edgeds.default_model import default_artifact
from edgeds.engine import context_for
from edgeds.errors import EdgedsError
from edgeds.hardware import detect
from edgeds.prefix_cache import PrefixStats
from edgeds.profiles import choose_profile, load_profiles
from edgeds.ray.cluster import Pool, connect, size_pool
from edgeds.ray.predictor import Predictor

BATCHES_PER_WORKER = 2  # at least: fewer rows per Ray batch than that leave workers idle
ROWS_PER_SLOT = 4  # rows of a Ray batch per engine slot: each batch's last steps run part-full


class RayJobError(EdgedsError):
    """The Ray job failed (a worker could not start, Ray lost the cluster); the output holds
    every record that came back, whole, and a rerun resumes."""


@dataclass(frozen=True)
class RayOptions:
    artifact: str | None  # None: the embedded default model (each node's own copy)
    address: str | None = None  # None: a local Ray over this machine's CPUs
    workers: int | None = None
    threads: int | None = None
    profile: str | None = None
    backend: str | None = None
    device: str | None = None
    prefix_cache: bool | str = True
    prefix_cache_size: int | None = None


@dataclass
class Batches:
    """Request rows cut into Ray batches, each put (`put`: ray.put of an Arrow table) as soon as
    it is whole. Until `window` rows are in hand the batch size is not fixed: a job that ends
    before then (a small one) is cut into `min_batches` batches at least, so that every worker
    gets some; past it, batches of `full` rows. At most `window` rows are ever held here."""

    put: Callable[[list[dict]], object]
    full: int  # rows of a batch once the job is known to be large
    min_batches: int
    window: int
    refs: list = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    size: int | None = None  # rows per batch, once fixed

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if self.size is None and len(self.rows) >= self.window:
            self.size = self.full
        if self.size is not None:
            while len(self.rows) >= self.size:
                self._put(self.size)

    def close(self) -> None:
        if self.size is None:  # the whole job fits in the window
            self.size = max(1, min(self.full, math.ceil(len(self.rows) / self.min_batches)))
        while self.rows:
            self._put(self.size)

    def _put(self, n: int) -> None:
        batch, self.rows = self.rows[:n], self.rows[n:]
        self.refs.append(self.put(batch))


def put_rows(ray):
    """A batch of request rows as one Arrow table in Ray's object store (one Ray Data block)."""
    import pyarrow as pa

    def put(rows: list[dict]):
        return ray.put(pa.table({"line": pa.array([r["line"] for r in rows], pa.int64()),
                                 "request": pa.array([r["request"] for r in rows], pa.string())}))
    return put


class RayJob:
    def __init__(self, opts: JobOptions, ray_opts: RayOptions):
        """Connects to Ray and sizes the worker pool (a bad size is refused here, before
        anything is written)."""
        self.opts, self.ray_opts = opts, ray_opts
        path = default_artifact() if ray_opts.artifact is None else Path(ray_opts.artifact)
        # Workers verify the files; the driver reads the manifest for the digests only.
        self.artifact = load_artifact(path.resolve(), verify=False)
        self.profile, _ = choose_profile(detect(), load_profiles(), ray_opts.profile)
        self.context = context_for(self.profile, self.artifact)
        self.ray = connect(ray_opts.address)
        self.pool: Pool = size_pool(self.ray, ray_opts.workers, ray_opts.threads)

    def describe(self) -> str:
        p = self.pool
        where = self.ray_opts.address or "local"
        return (f"Ray ({where}, {len(p.node_cpus)} node{'s' * (len(p.node_cpus) > 1)}): "
                f"{p.workers} worker{'s' * (p.workers > 1)} x {p.threads} threads")

    def run(self, out: OutputLog, progress_stream=None,
            metrics: MetricsPublisher | None = None) -> JobStats:
        """`metrics` (optional) publishes the job's Prometheus metrics from this process's
        counters: records, tokens, latencies, the workers' prefix-cache counters as their
        batches come back; no KV-cache gauges (the caches are in the workers)."""
        opts, stats, stop = self.opts, JobStats(), StopFlag()
        self.stats, self.prefix = stats, PrefixStats()
        writer = JobWriter(out, stats, opts.fail_fast)
        settings = settings_of(opts, self.artifact, self.context, self._engine_settings())

        def view(total: int | None) -> JobView:
            return JobView(stats, total, self.metric_labels(), kv_cache=False)

        with job_running(opts, out, settings, stats, stop, progress_stream, metrics, view,
                         shutdown=self.ray.shutdown) as intake:
            admission = Admission(opts, out, writer, self.artifact.digest, self.context)
            batches, keys = self._admit(intake, admission, stop, writer)
            if batches.refs and not stop.requested and not writer.failed_fast:
                self._compute(batches, keys, writer, stop)
        return stats

    def _admit(self, intake: Intake, admission: Admission, stop: StopFlag,
               writer: JobWriter) -> tuple[Batches, set[str]]:
        """The input read to its end: error records written, the records to compute put into
        Ray's object store as request lines, a batch at a time (every setting and seed in them:
        the workers' defaults do not count)."""
        full = ROWS_PER_SLOT * self._slots()
        min_batches = BATCHES_PER_WORKER * self.pool.workers
        batches = Batches(put_rows(self.ray), full, min_batches, full * min_batches)
        keys = set()
        while not writer.failed_fast:
            with stop.at_once():
                item = intake.get(True, lambda: stop.requested)
            if item is END:
                break
            if (admitted := admission.admit(*item)) is not None:
                rec, _ = admitted
                batches.add({"line": rec.line, "request": request_line(rec)})
                keys.add(record_key(rec.id))
        batches.close()
        return batches, keys

    def _compute(self, batches: Batches, pending: set[str], writer: JobWriter,
                 stop: StopFlag) -> None:
        stats = writer.stats
        stats.in_flight = len(pending)
        for batch in self._results(batches, stop):
            new = False
            for rec_json, latency, ttft in zip(batch.column("record").to_pylist(),
                                               batch.column("latency_s").to_pylist(),
                                               batch.column("ttft_s").to_pylist(), strict=True):
                record = json.loads(rec_json)
                key = record_key(record["id"])
                if key not in pending:
                    continue  # came back twice (a retried batch): written once already
                new = True
                pending.discard(key)
                stats.in_flight -= 1
                if "error" in record:
                    writer.failed(record)
                    continue
                writer.result(record, latency, ttft)
                stats.tokens += record["usage"]["completion_tokens"]
                stats.settled_tokens += record["usage"]["completion_tokens"]
            if new:  # a batch that came back twice counts its cache's work once
                self._prefix_counts(batch)
            if stop.requested or writer.failed_fast:
                return
        if pending:
            raise RayJobError(f"{len(pending)} records did not come back from Ray; "
                              "run the same command again to compute them")

    def _prefix_counts(self, batch) -> None:
        """The workers' prefix-cache counters summed (each batch's on its first row), live for
        the metrics and, at the end, the summary's prefix_cache."""
        if "prefix_cache" not in batch.column_names:
            return
        for counts in batch.column("prefix_cache").to_pylist():
            if counts is None:
                continue
            self.prefix = PrefixStats(**{k: getattr(self.prefix, k) + v
                                         for k, v in json.loads(counts).items()})
            stats = self.stats
            stats.prefix_cache_hits = self.prefix.hits
            stats.prefix_cache_hit_tokens = self.prefix.tokens_reused
            stats.prefix_cache = self.prefix.summary()

    def _results(self, batches: Batches, stop: StopFlag) -> Iterator:
        """Ray's result blocks as they come (pyarrow tables); a failure as one line. Each block
        put is one Ray batch: one actor call."""
        ray, pool = self.ray, self.pool
        ds = ray.data.from_arrow_refs(batches.refs).map_batches(
            Predictor, fn_constructor_kwargs=self._predictor_kwargs(),
            compute=ray.data.ActorPoolStrategy(size=pool.workers), num_cpus=pool.threads,
            batch_size=batches.size, batch_format="pyarrow")
        blocks = iter(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
        while True:
            try:
                with stop.at_once():
                    batch = next(blocks, None)
            except Exception as exc:  # Ray wraps a worker's error in its own types
                raise RayJobError(f"the Ray job failed: {_cause(exc)}") from None
            if batch is None:
                return
            yield batch

    def _slots(self) -> int:
        return self.opts.batch_size or self.profile.runtime.batch_size

    def _predictor_kwargs(self) -> dict:
        d, o, r = self.opts.defaults, self.opts, self.ray_opts
        return {"artifact": None if r.artifact is None else str(self.artifact.root),
                "max_new_tokens": d.max_new_tokens, "temperature": d.temperature,
                "top_p": d.top_p, "top_k": d.top_k, "min_p": d.min_p,
                "repetition_penalty": d.repetition_penalty, "seed": d.seed,
                "stop": list(d.stop), "engine_batch_size": o.batch_size,
                "truncate": o.truncate, "timings": o.timings,
                "max_line_bytes": o.max_line_bytes, "profile": r.profile,
                "backend": r.backend, "device": r.device, "threads": self.pool.threads,
                "prefix_cache": r.prefix_cache, "prefix_cache_size": r.prefix_cache_size,
                "artifact_sha256": self.artifact.digest,
                "context": self.context}

    def metric_labels(self) -> dict[str, str]:
        """The local job's labels; the backend is the one asked for ('auto': each worker picks
        its own, as edgeds.load does, on its node's hardware)."""
        return {"backend": self.ray_opts.backend or "auto", "profile": self.profile.name,
                "artifact_sha256": self.artifact.digest}

    def _engine_settings(self) -> dict:
        p, r = self.pool, self.ray_opts
        return {"ray": {"address": r.address, "workers": p.workers, "threads": p.threads,
                        "node_cpus": list(p.node_cpus)},
                "profile": self.profile.name, "backend": r.backend, "device": r.device}


def _cause(exc: BaseException) -> str:
    """The first line of the error that started it (a worker's ArtifactError, say)."""
    seen = exc
    while True:
        inner = getattr(seen, "cause", None) or seen.__cause__
        if inner is None or inner is seen:
            break
        seen = inner
    text = str(seen).strip()
    for line in text.splitlines():
        if line.strip() and not line.startswith(("Traceback", "  ")):
            return line.strip()[:300]
    return type(seen).__name__
