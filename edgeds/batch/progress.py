"""Progress on stderr while a job runs, and the summary at its end."""

from __future__ import annotations

import resource
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

PLAIN_EVERY_S = 10.0
TTY_EVERY_S = 0.5


def peak_rss_bytes() -> int:
    """This process's peak resident memory since it started.

    Linux's ru_maxrss is not that: a child starts from its parent's resident size at fork and
    keeps it across exec, so a job launched by a large process reported the parent's memory
    (a benchmark harness that had just written a 1.5B checkpoint made every run read 5.2 GB).
    VmHWM belongs to the process's own address space."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


@dataclass
class JobStats:
    started: float = field(default_factory=time.perf_counter)
    ok: int = 0
    failed: int = 0
    skipped: int = 0  # results found in the output on resume
    prompt_tokens: int = 0
    generated_tokens: int = 0  # of finished records
    tokens: int = 0  # every token generated so far, in-flight sequences' too
    settled_tokens: int = 0  # the part of `tokens` of finished sequences
    in_flight: int = 0
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    interrupted: bool = False
    input_note: str | None = None  # why the input was not read to its end, if it was not
    cached_tokens: int = 0  # tokens the running sequences hold in the KV cache
    # Prompts that reused a cached prefix, and the tokens they reused; None: no prefix cache.
    prefix_cache_hits: int | None = None
    prefix_cache_hit_tokens: int | None = None
    ended: bool = False

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started
    prefix_cache: dict | None = None  # PrefixStats.summary() of this job; None: cache off

    def summary(self) -> dict:
        elapsed = self.elapsed_s()

        def pct(values: list[float]) -> dict:
            if not values:
                return {"p50": None, "p90": None, "p99": None}
            p = np.percentile(values, [50, 90, 99])
            return {"p50": round(float(p[0]), 4), "p90": round(float(p[1]), 4),
                    "p99": round(float(p[2]), 4)}

        return {
            "records_ok": self.ok,
            "records_failed": self.failed,
            "records_skipped_resumed": self.skipped,
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "elapsed_s": round(elapsed, 3),
            "generated_tokens_per_s": (
                round(self.generated_tokens / elapsed, 2) if elapsed else None),
            "latency_s": pct(self.latencies),
            "ttft_s": pct(self.ttfts),
            "peak_rss_mib": round(peak_rss_bytes() / 2**20, 1),
            "interrupted": self.interrupted,
            "prefix_cache": self.prefix_cache,
        }


class Progress:
    """A progress line on stderr from the job's start: records, tokens per second over every
    token generated so far (in-flight sequences' too, so a long prefill or long answers do not
    read as a stall), and an ETA from the tokens left. A thread refreshes it, so it moves
    while a step runs; without a terminal it is a line every PLAIN_EVERY_S, the last one once."""

    def __init__(self, total_lines: int | None, stats: JobStats, tokens_per_record: int,
                 stream=None):
        self.total, self.stats, self.tokens_per_record = total_lines, stats, tokens_per_record
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._shown = ""

    def start(self) -> None:
        self._show()
        self._thread = threading.Thread(target=self._tick, name="edgeds-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._done.set()
        self._thread.join()
        self._thread = None
        self._show(final=True)

    def _tick(self) -> None:
        while not self._done.wait(TTY_EVERY_S if self.tty else PLAIN_EVERY_S):
            self._show()

    def line(self) -> str:
        s = self.stats
        done = s.ok + s.failed
        rate = s.tokens / max(time.perf_counter() - s.started, 1e-9)
        text = f"{done + s.skipped}"
        if self.total:
            text += f"/{self.total}"
        text += f" records ({s.failed} failed, {s.in_flight} running), {rate:.1f} tok/s"
        if self.total and rate > 0:
            # Tokens left: each record not finished at the mean length of those that did
            # (its max_new_tokens before any has), less what the running ones already have.
            per_record = s.generated_tokens / s.ok if s.ok else self.tokens_per_record
            left = max(self.total - done - s.skipped, 0) * per_record
            left = max(left - (s.tokens - s.settled_tokens), 0)
            text += f", ETA {left / rate:.0f}s"
        return text

    def _show(self, final: bool = False) -> None:
        text = self.line()
        if self.tty:
            self.stream.write("\r\x1b[K" + text + ("\n" if final else ""))
        elif text != self._shown:
            self.stream.write(text + "\n")
        self._shown = text
        self.stream.flush()


def format_summary(s: dict) -> str:
    def ms(d: dict) -> str:
        return " / ".join("-" if v is None else f"{v * 1000:.0f} ms"
                          for v in (d["p50"], d["p90"], d["p99"]))

    rows = [
        ("records ok / failed", f"{s['records_ok']} / {s['records_failed']}"),
        ("resumed (already done)", str(s["records_skipped_resumed"])),
        ("prompt / generated tokens", f"{s['prompt_tokens']} / {s['generated_tokens']}"),
        ("generated tokens/s", str(s["generated_tokens_per_s"])),
        ("latency P50/P90/P99", ms(s["latency_s"])),
        ("time to first token P50/P90/P99", ms(s["ttft_s"])),
        ("peak RSS", f"{s['peak_rss_mib']} MiB"),
        *([("prefix cache hits / lookups", f"{p['hits']} / {p['lookups']}"),
           ("prompt tokens reused", f"{p['tokens_reused']} (prefill ~{p['prefill_s_saved_est']} s "
                                    "saved)")] if (p := s.get("prefix_cache")) else []),
        ("elapsed", f"{s['elapsed_s']} s"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
