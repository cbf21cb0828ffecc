"""Progress on stderr while a job runs, and the summary at its end."""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, field

import numpy as np

PLAIN_EVERY_S = 10.0


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
    skipped: int = 0
    skipped_failed: int = 0  # failed records found in the output on resume
    prompt_tokens: int = 0
    generated_tokens: int = 0
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    interrupted: bool = False

    def summary(self) -> dict:
        elapsed = time.perf_counter() - self.started

        def pct(values: list[float]) -> dict:
            if not values:
                return {"p50": None, "p90": None, "p99": None}
            p = np.percentile(values, [50, 90, 99])
            return {"p50": round(float(p[0]), 4), "p90": round(float(p[1]), 4), "p99": round(float(p[2]), 4)}

        return {
            "records_ok": self.ok,
            "records_failed": self.failed,
            "records_skipped_resumed": self.skipped,
        "records_failed_before_resume": self.skipped_failed,
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "elapsed_s": round(elapsed, 3),
            "generated_tokens_per_s": round(self.generated_tokens / elapsed, 2) if elapsed else None,
            "latency_s": pct(self.latencies),
            "ttft_s": pct(self.ttfts),
            "peak_rss_mib": round(peak_rss_bytes() / 2**20, 1),
            "interrupted": self.interrupted,
        }


class Progress:
    def __init__(self, total: int | None, stream=None):
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._last = 0.0

    def update(self, stats: JobStats, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last < (0.2 if self.tty else PLAIN_EVERY_S):
            return
        self._last = now
        done = stats.ok + stats.failed
        elapsed = max(now - stats.started, 1e-9)
        rate = stats.generated_tokens / elapsed
        eta = ""
        if self.total:
            remaining = max(self.total - done - stats.skipped, 0)
            eta = f" ETA {remaining * elapsed / done:.0f}s" if done else ""
            line = f"{done + stats.skipped}/{self.total} records ({stats.failed} failed), {rate:.1f} tok/s{eta}"
        else:
            line = f"{done} records ({stats.failed} failed), {rate:.1f} tok/s"
        if self.tty:
            self.stream.write("\r\x1b[K" + line)
            if force:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def format_summary(s: dict) -> str:
    def ms(d: dict) -> str:
        return " / ".join("-" if v is None else f"{v * 1000:.0f} ms" for v in (d["p50"], d["p90"], d["p99"]))

    rows = [
        ("records ok / failed", f"{s['records_ok']} / {s['records_failed']}"),
        ("resumed (already done)", str(s["records_skipped_resumed"])),
        ("prompt / generated tokens", f"{s['prompt_tokens']} / {s['generated_tokens']}"),
        ("generated tokens/s", str(s["generated_tokens_per_s"])),
        ("latency P50/P90/P99", ms(s["latency_s"])),
        ("time to first token P50/P90/P99", ms(s["ttft_s"])),
        ("peak RSS", f"{s['peak_rss_mib']} MiB"),
        ("elapsed", f"{s['elapsed_s']} s"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
