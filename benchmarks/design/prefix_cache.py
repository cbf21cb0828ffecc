"""Does the prefix cache pay? N requests that share one long prefix, each with its own question:
the job's throughput with and without the cache, then time to first token from a persisted DIR.

    python -m benchmarks.design.prefix_cache [ARTIFACT] [--requests 1000] [--prefix 1500]
        [--question 100] [--new-tokens 64] [--batch 0] [--ttft-requests 20] [--threads 0]
        [--backend native|onnxruntime] [--out benchmarks/results/prefix-cache.json]

ARTIFACT: an export on a backend with a prefix cache (default: the embedded model on the
profile's backend). Each phase records wall and process CPU seconds (CPU time is the steadier
of the two on a shared machine) and the load average it started at. Prompts are random
token ids (seeded), so no tokenizer or template takes part. Phases, one engine each:
1. off: the job with the cache off; 2. memory: the same job with the in-job cache; greedy
tokens must be the same (checked); 3. a job of new questions with `--prefix-cache DIR` fills
DIR, then TTFT of `--ttft-requests` more new questions one at a time, each from a cold memory
cache (blocks read from DIR: every request as a run of its own), against the same questions
with the cache off; 4. a second run as it goes (`second_run`): `--ttft-requests` new questions
one at a time over one cold memory cache on DIR (the first reads the blocks, the others find
them in memory), against the same questions with the cache off.
Writes a JSON of the numbers; the results go to benchmarks/results/prefix-cache.md with the
command and whether the CPU was idle.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

import edgeds
from edgeds import generate as gen
from edgeds import prefix_cache
from edgeds.hardware import detect
from edgeds.sampling import SamplingParams


def prompts(vocab: int, n: int, prefix: int, question: int, seed: int) -> list[np.ndarray]:
    shared = np.random.default_rng(0).integers(10, vocab, prefix)
    rng = np.random.default_rng(seed)
    return [np.concatenate([shared, rng.integers(10, vocab, question)]).astype(np.int64)
            for _ in range(n)]


def job(engine, batch: list[np.ndarray], new_tokens: int, batch_size: int | None) -> dict:
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    reqs = [gen.Request(i, p, params) for i, p in enumerate(batch)]
    load, c0, t0 = os.getloadavg()[0], time.process_time(), time.perf_counter()
    done = {e.key: e for e in engine.run(reqs, batch_size) if isinstance(e, gen.Finished)}
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    generated = sum(len(d.token_ids) for d in done.values())
    return {"seconds": round(seconds, 3), "cpu_s": round(cpu, 3), "load_avg": round(load, 1),
            "generated_tokens_per_s": round(generated / seconds, 2),
            "generated_tokens_per_cpu_s": round(generated / cpu, 2),
            "ttft_p50_s": round(float(np.median([d.ttft_s for d in done.values()])), 4),
            "tokens": [done[i].token_ids for i in range(len(batch))]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", nargs="?")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--prefix", type=int, default=1500)
    ap.add_argument("--question", type=int, default=100)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=0, help="slots (0: the profile's)")
    ap.add_argument("--ttft-requests", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--backend", default=None,
                    help="native or onnxruntime (default: the profile's)")
    ap.add_argument("--out", default="benchmarks/results/prefix-cache.json")
    a = ap.parse_args()

    def load(cache):
        return edgeds.load(a.artifact, threads=a.threads or None, prefix_cache=cache,
                           backend=a.backend)

    off = load(False)
    if why := prefix_cache.unsupported(off.backend):
        raise SystemExit(f"backend {off.choice.backend}: no prefix cache ({why})")
    vocab, batch = off.backend.vocab_size, a.batch or None
    work = prompts(vocab, a.requests, a.prefix, a.question, seed=1)
    machine = detect().cpu_model or platform.processor() or "?"
    result = {"artifact": a.artifact or "embedded", "machine": machine,
              "backend": off.choice.backend, "cache_layout": off.backend.cache_layout,
              "threads": off.choice.threads, "batch": off.batch_for(batch),
              "requests": a.requests, "prefix": a.prefix, "question": a.question,
              "new_tokens": a.new_tokens}
    plain = job(off, work, a.new_tokens, batch)
    memory_engine = load(True)
    memory = job(memory_engine, work, a.new_tokens, batch)
    result["same_greedy_tokens"] = plain.pop("tokens") == memory.pop("tokens")
    result["off"], result["memory"] = plain, memory
    result["memory"]["prefix_cache"] = memory_engine.prefix.stats.summary()
    result["throughput_x"] = round(memory["generated_tokens_per_s"]
                                   / plain["generated_tokens_per_s"], 2)
    result["throughput_per_cpu_s_x"] = round(memory["generated_tokens_per_cpu_s"]
                                             / plain["generated_tokens_per_cpu_s"], 2)
    del memory_engine

    with tempfile.TemporaryDirectory() as folder:
        disk_engine = load(folder)
        job(disk_engine, prompts(vocab, min(a.requests, 8), a.prefix, a.question, seed=2),
            a.new_tokens, batch)  # fills DIR, as yesterday's run did
        asked = prompts(vocab, a.ttft_requests, a.prefix, a.question, seed=3)
        cold, uncached, read = [], [], 0
        for p in asked:
            disk_engine.prefix.store.close()  # its writer lock too
            disk_engine.enable_prefix_cache(folder)  # a cold memory cache: blocks come from DIR
            cold.append(job(disk_engine, [p], 1, 1))
            read += disk_engine.prefix.stats.disk_hits
            uncached.append(job(off, [p], 1, 1))
        for name, runs in (("from_dir", cold), ("uncached", uncached)):
            ttft = np.median([r["ttft_p50_s"] for r in runs])
            result[f"ttft_{name}_p50_s"] = round(float(ttft), 4)
            # One new token: the request's CPU time is nearly all its prefill.
            result[f"cpu_{name}_p50_s"] = round(float(np.median([r["cpu_s"] for r in runs])), 4)
        result["ttft_ratio"] = round(result["ttft_from_dir_p50_s"]
                                     / result["ttft_uncached_p50_s"], 3)
        result["cpu_ratio"] = round(result["cpu_from_dir_p50_s"] / result["cpu_uncached_p50_s"], 3)
        result["dir_blocks_read"] = read
        # A second run as it goes: one cold memory cache on DIR for all its questions, asked
        # one at a time; the first reads the prefix's blocks from DIR (and checks them), the
        # others find them in memory.
        disk_engine.prefix.store.close()
        disk_engine.enable_prefix_cache(folder)
        second, uncached = [], []
        for p in prompts(vocab, a.ttft_requests, a.prefix, a.question, seed=4):
            second.append(job(disk_engine, [p], 1, 1)["ttft_p50_s"])
            uncached.append(job(off, [p], 1, 1)["ttft_p50_s"])
        result["second_run"] = {
            "ttft_first_s": second[0], "ttft_p50_s": round(float(np.median(second)), 4),
            "ttft_uncached_p50_s": round(float(np.median(uncached)), 4),
            "ttft_ratio": round(float(np.median(second) / np.median(uncached)), 3),
            "dir_blocks_read": disk_engine.prefix.stats.disk_hits}
        result["dir_bytes"] = sum(f.stat().st_size for f in Path(folder).rglob("*.bin"))
    text = json.dumps(result, indent=2)
    print(text)
    Path(a.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
