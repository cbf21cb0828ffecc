"""`edgeds bench`: load time, time to first token, decode speed, latency percentiles, memory.

Synthetic prompts, EOS ignored, so every run does the same work. (benchmarks/compare.py measures
edgeds and its peers with one runner per runtime instead, so every row is measured alike.)
"""

from __future__ import annotations

import time

import numpy as np

from . import generate as gen
from .batch.progress import peak_rss_bytes
from .engine import load
from .errors import UsageError
from .memory_budget import decode_read_bytes
from .sampling import SamplingParams


def _pct(values: list[float]) -> dict:
    if not values:
        return {}
    p = np.percentile(values, [50, 90, 99])
    return {"p50": float(p[0]), "p90": float(p[1]), "p99": float(p[2])}


def _measure(engine, batch: int, prompt_tokens: int, new_tokens: int, rng) -> dict:
    vocab = engine.artifact.model.vocab_size
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    reqs = [
        gen.Request(i, rng.integers(0, vocab, prompt_tokens).astype(np.int64), params)
        for i in range(batch)
    ]
    stats = gen.StepStats()
    t0 = time.perf_counter()
    done = [e for e in engine.run(reqs, batch, stats) if isinstance(e, gen.Finished)]
    wall = time.perf_counter() - t0
    decode_time = sum(stats.decode_s)
    return {
        "batch_size": batch,
        "ttft_s": float(np.mean([d.ttft_s for d in done])),
        "decode_tokens_per_s": stats.decode_tokens / decode_time if decode_time else None,
        "throughput_tokens_per_s": sum(len(d.token_ids) for d in done) / wall,
        "step_latency_s": _pct(stats.decode_s),
        "request_latency_s": _pct([d.latency_s for d in done]),
        "decode_steps": len(stats.decode_s),
    }


def run_bench(artifact: str | None = None, prompt_tokens: int = 128, new_tokens: int = 64,
              batch_size: int | None = None,
              profile: str | None = None, backend: str | None = None, threads: int | None = None,
              context: int | None = None) -> dict:
    t0 = time.perf_counter()
    # The prefix cache off: TTFT here is a whole prefill.
    engine = load(artifact, profile=profile, backend=backend, threads=threads, prefix_cache=False,
                  context=context)
    load_s = time.perf_counter() - t0
    if prompt_tokens + new_tokens > engine.context:
        raise UsageError(f"{prompt_tokens} prompt + {new_tokens} new tokens exceed the "
                         f"{engine.context_choice.describe()}; pass a smaller --prompt-tokens or "
                         "--new-tokens, or a larger --context")
    rng = np.random.default_rng(0)
    # Warm-up: first-run allocations and kernel picks.
    _measure(engine, 1, min(prompt_tokens, 16), 4, rng)
    batch_size = engine.batch_for(batch_size)
    runs = [_measure(engine, b, prompt_tokens, new_tokens, rng) for b in sorted({1, batch_size})]
    fmt = engine.choice.artifact_format
    per_step = decode_read_bytes(engine.artifact.manifest, fmt)
    for r in runs:
        # A dense model's decode step reads its weights once: bytes/step x steps/s.
        steps_per_s = r["decode_tokens_per_s"] / r["batch_size"] if r["decode_tokens_per_s"] else 0
        r["weight_bandwidth_gb_s"] = per_step * steps_per_s / 1e9 if per_step else None
    return {"artifact": str(engine.artifact.root), **engine.describe(), "load_s": load_s,
            "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "runs": runs,
            "peak_rss_mib": peak_rss_bytes() / 2**20,
            "weights_mib": engine.weight_bytes / 2**20}


def format_bench(r: dict) -> str:
    lines = [
        f"{r['artifact']}: profile {r['profile']}, backend {r['backend']}, {r['threads']} threads",
        f"  context {r['context']} ({r['context_source']})",
        (f"  load {r['load_s']:.2f} s, weights {r['weights_mib']:.0f} MiB, "
         f"peak RSS {r['peak_rss_mib']:.0f} MiB"),
    ]
    for x in r["runs"]:
        s = x["step_latency_s"]
        lines.append(
            f"  batch {x['batch_size']:>3}: TTFT {x['ttft_s'] * 1000:.0f} ms, "
            f"decode {x['decode_tokens_per_s']:.1f} tok/s, "
            f"step P50/P90/P99 {s['p50'] * 1000:.1f}/{s['p90'] * 1000:.1f}/{s['p99'] * 1000:.1f} ms"
            + (f", weights read {x['weight_bandwidth_gb_s']:.1f} GB/s"
               if x["weight_bandwidth_gb_s"] else ""))
    return "\n".join(lines)
