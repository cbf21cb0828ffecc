"""One long prompt's prefill on each backend that can run an artifact, in turns: does a
backend's attention over a prompt keep up as prompts grow?

    python -m benchmarks.design.long_prompt_prefill ARTIFACT [--tokens 512,2040] [--threads 2] \
        [--rounds 2]

Each measurement is a fresh process: the backend alone (no generate loop), a 64-token warm-up
prefill, then one prefill of N random tokens into an empty cache, timed. One line each.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numpy as np


def measure(artifact: str, backend: str, tokens: int, threads: int) -> str:
    from edgeds.artifact import load_artifact

    art = load_artifact(artifact, verify=False)
    if backend == "native":
        from edgeds.backends.native import NativeBackend

        runner = NativeBackend(art, threads)
    else:
        from edgeds.backends.onnxruntime import OnnxRuntimeBackend

        runner = OnnxRuntimeBackend(art, ["CPUExecutionProvider"], threads)
    prompt = np.random.default_rng(0).integers(10, min(art.model.vocab_size, 50000), tokens)
    runner.start(1, tokens + 8)
    runner.prefill([0], [prompt[:64]])
    runner.start(1, tokens + 8)
    t0 = time.perf_counter()
    runner.prefill([0], [prompt])
    seconds = time.perf_counter() - t0
    return f"{backend} prefill {tokens}: {seconds:.2f} s ({tokens / seconds:.0f} tok/s)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--tokens", default="512,2040")
    ap.add_argument("--backends", default="native,onnxruntime")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)  # backend tokens, in the child
    args = ap.parse_args()
    if args.measure:
        print(measure(args.artifact, args.measure[0], int(args.measure[1]), args.threads),
              flush=True)
        return
    for _ in range(args.rounds):
        for tokens in args.tokens.split(","):
            for backend in args.backends.split(","):
                subprocess.run([sys.executable, "-m", __spec__.name, args.artifact, "--threads",
                                str(args.threads), "--measure", backend, tokens], check=True)


if __name__ == "__main__":
    main()
