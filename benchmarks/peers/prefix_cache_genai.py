"""Issue 24's job on OpenVINO GenAI, with its prefix caching on and off: N requests sharing a
long prefix plus a distinct question (the same token ids as `benchmarks/design/prefix_cache.py`),
then the time to first token of new questions once the prefix is cached in memory. GenAI keeps
its prefix cache in the process (no persisted DIR), so only edgeds' in-memory figures compare.

    python -m benchmarks.peers.prefix_cache_genai OV_MODEL --requests 256 --threads 2

OV_MODEL: an optimum-intel export of the same checkpoint (`optimum-cli export openvino --model
SRC --task text-generation-with-past --weight-format int8 OV_MODEL`); run it with the Python that
has openvino-genai (a peers environment, never edgeds' own).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.design.prefix_cache import prompts


def pipeline(model: str, threads: int, prefix_caching: bool, seqs: int):
    import openvino_genai as og

    sched = og.SchedulerConfig()
    sched.enable_prefix_caching = prefix_caching
    sched.cache_size = 2  # GB of KV blocks: 64 sequences of 1,664 tokens need well under it
    sched.max_num_seqs = seqs
    sched.max_num_batched_tokens = 2048
    return og.ContinuousBatchingPipeline(model, sched, "CPU", {"INFERENCE_NUM_THREADS": threads})


def generate(pipe, batch: list[np.ndarray], new_tokens: int) -> tuple[float, list[list[int]]]:
    import openvino as ov
    import openvino_genai as og

    cfg = og.GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                              ignore_eos=True)
    ids = [ov.Tensor(p[None, :].astype(np.int64)) for p in batch]
    t0 = time.perf_counter()
    out = pipe.generate(ids, [cfg] * len(ids))
    return time.perf_counter() - t0, [list(r.m_generation_ids[0]) for r in out]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--prefix", type=int, default=1500)
    ap.add_argument("--question", type=int, default=100)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--ttft-requests", type=int, default=10)
    ap.add_argument("--out", default="benchmarks/results/prefix-cache-genai.json")
    a = ap.parse_args()
    vocab = json.loads((Path(a.model) / "config.json").read_text())["vocab_size"]
    work = prompts(vocab, a.requests, a.prefix, a.question, seed=1)
    asked = prompts(vocab, a.ttft_requests, a.prefix, a.question, seed=3)
    result, tokens = {"model": a.model, "requests": a.requests, "threads": a.threads}, {}
    for caching in (False, True):
        pipe = pipeline(a.model, a.threads, caching, a.batch)
        seconds, tokens[caching] = generate(pipe, work, a.new_tokens)
        # One new token: the call is the question's prefill and its first token.
        ttft = [generate(pipe, [p], 1)[0] for p in asked]
        name = "prefix_caching" if caching else "off"
        result[name] = {"seconds": round(seconds, 3),
                        "generated_tokens_per_s": round(a.requests * a.new_tokens / seconds, 2),
                        "ttft_p50_s": round(float(np.median(ttft)), 4)}
        print(name, result[name], flush=True)
        del pipe
    result["same_greedy_tokens"] = tokens[False] == tokens[True]
    result["throughput_x"] = round(result["prefix_caching"]["generated_tokens_per_s"]
                                   / result["off"]["generated_tokens_per_s"], 2)
    result["ttft_ratio"] = round(result["prefix_caching"]["ttft_p50_s"]
                                 / result["off"]["ttft_p50_s"], 3)
    print(json.dumps(result, indent=1))
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
