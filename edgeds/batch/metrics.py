"""Prometheus metrics of a running job: a text-format file and an optional /metrics endpoint.

`render` is the one place the metrics are defined. The file (`--prometheus-file`) is written
every FILE_EVERY_S, beside itself and renamed, as node_exporter's textfile collector expects;
the HTTP endpoint (`--prometheus-port`, the `prometheus_client` library of the `metrics`
extra) serves the same text, rendered at each scrape. Metrics must never slow or stop the job:
they are rendered on their own thread from counters the job keeps anyway, and a failing write
is a warning on stderr, never a job failure.
"""

from __future__ import annotations

import bisect
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from .progress import JobStats, peak_rss_bytes

FILE_EVERY_S = 5.0
# Seconds; request latencies of offline jobs run from milliseconds (tiny models) to minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0,
                   120.0, 300.0, 600.0)
TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                30.0, 60.0)
METRICS_EXTRA = "pip install 'edgeds[metrics]'"


@dataclass
class _Histogram:
    """Cumulative buckets over an append-only list of observations, binned incrementally."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    seen: int = 0
    total: float = 0.0

    def update(self, values: list[float]) -> None:
        if not self.counts:
            self.counts = [0] * len(self.bounds)
        end = len(values)  # the job appends while we read: take what is there now
        for v in values[self.seen:end]:
            i = bisect.bisect_left(self.bounds, v)
            if i < len(self.counts):
                self.counts[i] += 1
            self.total += v
        self.seen = end

    def lines(self, name: str, labels: str) -> list[str]:
        out, running = [], 0
        for bound, n in zip(self.bounds, self.counts or [0] * len(self.bounds)):
            running += n
            out.append(f'{name}_bucket{{{labels},le="{bound:g}"}} {running}')
        out.append(f'{name}_bucket{{{labels},le="+Inf"}} {self.seen}')
        out.append(f"{name}_sum{{{labels}}} {self.total:.6f}")
        out.append(f"{name}_count{{{labels}}} {self.seen}")
        return out


@dataclass
class JobView:
    """What the metrics read: the job's counters and what the job runs on."""

    stats: JobStats
    total_lines: int | None  # None: stdin, not known
    labels: dict[str, str]
    kv_bytes_per_token: int = 0
    # False where the engines run in other processes (edgeds infer --ray): this process does
    # not see their KV caches, and a gauge stuck at 0 would read as an empty cache.
    kv_cache: bool = True


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    """The job's metrics, rendered on demand (thread-safe: one lock around the histograms)."""

    def __init__(self):
        self.view: JobView | None = None
        self._latency = _Histogram(LATENCY_BUCKETS)
        self._ttft = _Histogram(TTFT_BUCKETS)
        self._lock = threading.Lock()
        self._process = psutil.Process()

    def attach(self, view: JobView) -> None:
        self.view = view

    def render(self) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        view = self.view
        if view is None:
            return ""  # the model is loading; nothing to say yet
        s = view.stats
        labels = ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(view.labels.items()))
        lines: list[str] = []

        def metric(name: str, kind: str, help_: str, value, extra: str = "") -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")
            lines.append(f"{name}{{{labels}{extra}}} {value}")

        elapsed = max(s.elapsed_s(), 1e-9)
        metric("edgeds_records_done_total", "counter",
               "Records finished with a result in this run.", s.ok)
        metric("edgeds_records_failed_total", "counter",
               "Records written as errors in this run.", s.failed)
        metric("edgeds_records_resumed_total", "counter",
               "Records found done in the output (resume) and skipped.", s.skipped)
        metric("edgeds_records_running", "gauge", "Records being generated now.", s.in_flight)
        if view.total_lines is not None:
            pending = max(view.total_lines - s.ok - s.failed - s.skipped, 0)
            metric("edgeds_records_pending", "gauge",
                   "Input lines not finished yet (running ones included).", pending)
        metric("edgeds_prompt_tokens_total", "counter",
               "Prompt tokens of finished records.", s.prompt_tokens)
        metric("edgeds_generated_tokens_total", "counter",
               "Generated tokens of finished records.", s.generated_tokens)
        metric("edgeds_tokens_per_second", "gauge",
               "Tokens generated per second since the job started (running sequences too).",
               f"{s.tokens / elapsed:.3f}")
        with self._lock:
            self._latency.update(s.latencies)
            self._ttft.update(s.ttfts)
            for name, hist, help_ in (
                    ("edgeds_request_latency_seconds", self._latency,
                     "Time from a record's prefill to its last token."),
                    ("edgeds_time_to_first_token_seconds", self._ttft,
                     "Time from a record's prefill to its first token.")):
                lines.append(f"# HELP {name} {help_}")
                lines.append(f"# TYPE {name} histogram")
                lines.extend(hist.lines(name, labels))
        metric("edgeds_resident_memory_bytes", "gauge", "Resident memory now.",
               self._process.memory_info().rss)
        metric("edgeds_peak_resident_memory_bytes", "gauge",
               "Peak resident memory of this process.", peak_rss_bytes())
        if view.kv_cache:
            metric("edgeds_kv_cache_tokens", "gauge",
                   "Tokens held in the KV cache by running sequences.", s.cached_tokens)
            metric("edgeds_kv_cache_bytes", "gauge", "Bytes of KV cache those tokens take.",
                   s.cached_tokens * view.kv_bytes_per_token)
        # Hook for the prefix cache (issue 12): the job sets these two counters once it reuses
        # cached prompt prefixes; until then they are None and not exported.
        if s.prefix_cache_hits is not None:
            metric("edgeds_prefix_cache_hits_total", "counter",
                   "Records whose prompt reused a cached prefix.", s.prefix_cache_hits)
        if s.prefix_cache_hit_tokens is not None:
            metric("edgeds_prefix_cache_hit_tokens_total", "counter",
                   "Prompt tokens served from the prefix cache.", s.prefix_cache_hit_tokens)
        metric("edgeds_job_running", "gauge", "1 while the job runs, 0 once it ended.",
               0 if s.ended else 1)
        return "\n".join(lines) + "\n"


class MetricsPublisher:
    """Publishes a job's Metrics to a file (every FILE_EVERY_S and at the end) and/or over HTTP.

    Built before the model loads, so that a port in use or a missing library is said at once."""

    def __init__(self, file: str | None = None, port: int | None = None,
                 host: str = "127.0.0.1", warn=None):
        self.metrics = Metrics()
        self.file = Path(file) if file else None
        self._warn = warn or (lambda msg: print(f"edgeds: warning: {msg}", file=sys.stderr))
        self._warned: set[str] = set()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._server = None
        if port is not None:
            self._server = _serve(self.metrics, host, port)

    def start(self, view: JobView) -> None:
        self.metrics.attach(view)
        if self.file is not None:
            self.write_file()
            self._thread = threading.Thread(target=self._tick, name="edgeds-metrics", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """The job ended: the file's last write says so."""
        self._done.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.file is not None and self.metrics.view is not None:
            self.write_file()

    def close(self) -> None:
        self.stop()
        if self._server is not None:
            server, thread = self._server
            server.shutdown()
            server.server_close()
            thread.join()
            self._server = None

    def _tick(self) -> None:
        while not self._done.wait(FILE_EVERY_S):
            self.write_file()

    def write_file(self) -> None:
        tmp = self.file.with_name(f".{self.file.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(self.metrics.render(), encoding="utf-8")
            os.replace(tmp, self.file)
        except Exception as exc:  # noqa: BLE001 - metrics must never end the job
            msg = f"cannot write metrics to {self.file}: {exc}"
            if msg not in self._warned:  # once per distinct reason, not every few seconds
                self._warned.add(msg)
                self._warn(msg)
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass

    def __enter__(self) -> MetricsPublisher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _serve(metrics: Metrics, host: str, port: int):
    """/metrics over HTTP with prometheus_client, serving the same text as the file."""
    try:
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        from ..errors import ConfigError

        raise ConfigError(f"--prometheus-port needs prometheus_client: {METRICS_EXTRA}") from None

    class _Collector:
        def collect(self):
            yield from text_string_to_metric_families(metrics.render())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())
    try:
        return start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        from ..errors import ConfigError

        raise ConfigError(f"--prometheus-port {port}: cannot listen on {host}:{port} "
                          f"({exc.strerror or exc})") from None
