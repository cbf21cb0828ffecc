"""Two or more exports of one model, backend alone, in turns: did a graph change pay?

    python -m benchmarks.design.backend_ab ARTIFACT_A ARTIFACT_B [...] [--threads 2] [--rounds 3]

Each measurement is a fresh process (ONNX Runtime backend, CPU, no generate loop), the
artifacts taking turns so that a slow spell of a shared machine hits each of them: a 512-token
prefill (best of two after a warm-up), the median batch-1 decode step over 32 steps at 128
cached tokens, and the median batch-64 decode step over 6 steps at 256 cached tokens. Random
token ids, fixed seed. One JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np


def measure(artifact: str, threads: int) -> dict:
    from edgeds.artifact import load_artifact
    from edgeds.backends.onnxruntime import OnnxRuntimeBackend

    art = load_artifact(artifact, verify=False)
    backend = OnnxRuntimeBackend(art, ["CPUExecutionProvider"], threads)
    rng = np.random.default_rng(0)
    top = min(art.model.vocab_size, 50000)
    prompt = [rng.integers(10, top, 512)]
    backend.start(1, 600)
    backend.prefill([0], prompt)
    prefill = []
    for _ in range(2):
        backend.start(1, 600)
        t0 = time.perf_counter()
        backend.prefill([0], prompt)
        prefill.append(time.perf_counter() - t0)

    def median_step_ms(tokens: np.ndarray | None, warmup: int, n: int, logits: np.ndarray) -> float:
        """Decode steps feeding `tokens`, or each step's greedy tokens where None."""
        times = []
        for i in range(warmup + n):
            step_tokens = logits.argmax(-1) if tokens is None else tokens
            t0 = time.perf_counter()
            logits = backend.decode(step_tokens)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e3

    backend.start(1, 300)
    b1 = median_step_ms(None, 4, 32, backend.prefill([0], [rng.integers(10, top, 128)]))
    backend.start(64, 300)
    logits = backend.prefill(list(range(64)),
                             [rng.integers(10, min(top, 1000), 256) for _ in range(64)])
    b64 = median_step_ms(np.full(64, 5, np.int64), 1, 6, logits)
    return {"artifact": artifact, "threads": threads, "prefill_512_s": round(min(prefill), 3),
            "decode_b1_step_ms": round(b1, 2), "decode_b64_step_ms": round(b64, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifacts", nargs="+")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.artifacts[0], args.threads)), flush=True)
        return
    for round_ in range(args.rounds):
        for artifact in args.artifacts:
            cmd = [sys.executable, "-m", __spec__.name, artifact, "--threads", str(args.threads),
                   "--measure"]
            stdout = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            line = stdout.strip().splitlines()[-1]
            print(json.dumps({"round": round_ + 1, **json.loads(line)}), flush=True)


if __name__ == "__main__":
    main()
