"""Where the small-batch graph stops paying: decode steps at several batch sizes on an artifact's
main graph and on its small-batch graph (export --small-batch-graph), for a profile's
`small_batch_max`.

    python -m benchmarks.design.small_batch_crossover ARTIFACT [--threads 2] [--rounds 2] \
        [--batches 1,2,4,8]

Each measurement is a fresh process (ONNX Runtime backend, CPU, no generate loop), the two
graphs taking turns: session creation time, then per batch size the median decode step (ms)
over 32 steps (batch 1) or 12 steps, after 128-token prompts (fewer where the artifact's
context is short) and 4 warm-up steps, each step
fed the previous step's greedy tokens. Random token ids, fixed seed. One JSON line each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np


def measure(artifact: str, threads: int, batches: list[int], small_batch_max: int) -> dict:
    from edgeds.artifact import load_artifact
    from edgeds.backends.onnxruntime import OnnxRuntimeBackend

    art = load_artifact(artifact, verify=False)
    t0 = time.perf_counter()
    backend = OnnxRuntimeBackend(art, ["CPUExecutionProvider"], threads,
                                 small_batch_max=small_batch_max)
    out = {"graph": "small-batch" if small_batch_max else "main",
           "sessions_s": round(time.perf_counter() - t0, 2)}
    rng = np.random.default_rng(0)
    top = min(art.model.vocab_size, 50000)
    capacity = min(300, art.model.context_length)
    for batch in batches:
        backend.start(batch, capacity)
        logits = backend.prefill(list(range(batch)),
                                 [rng.integers(10, top, min(128, capacity // 2))
                                  for _ in range(batch)])
        times = []
        for _ in range(4 + (32 if batch == 1 else 12)):
            t0 = time.perf_counter()
            logits = backend.decode(logits.argmax(-1))
            times.append(time.perf_counter() - t0)
        out[f"b{batch}_step_ms"] = round(statistics.median(times[4:]) * 1e3, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batches", default="1,2,4,8")
    # small_batch_max, in the child
    ap.add_argument("--measure", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.measure is not None:
        print(json.dumps(measure(args.artifact, args.threads, batches, args.measure)), flush=True)
        return
    from edgeds.artifact import load_artifact

    if load_artifact(args.artifact, verify=False).graph("onnx").small_batch is None:
        sys.exit(f"{args.artifact} has no small-batch graph: export it with --small-batch-graph")
    for round_ in range(args.rounds):
        for small_batch_max in (0, max(batches)):
            cmd = [sys.executable, "-m", __spec__.name, args.artifact, "--threads",
                   str(args.threads), "--batches", args.batches, "--measure", str(small_batch_max)]
            stdout = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            line = stdout.strip().splitlines()[-1]
            print(json.dumps({"round": round_ + 1, **json.loads(line)}), flush=True)


if __name__ == "__main__":
    main()
