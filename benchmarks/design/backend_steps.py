"""The ONNX Runtime backend alone, without the generate loop: load, prefill and decode steps, RSS.

    python -m benchmarks.design.backend_steps ARTIFACT [--threads 16] [--batches 1,32]
    python -m benchmarks.design.backend_steps ARTIFACT \
        --providers CUDAExecutionProvider,CPUExecutionProvider [--cache-on-host]

Separates what the kernels and cache cost from what the loop and scheduling add (compare with
`edgeds bench` and benchmarks/peers/compare.py). Prompts of 128 random tokens, capacity 640
(less for a shorter context), median of 20 decode steps after 4 warm-up steps.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort
import psutil

from edgeds.artifact import load_artifact
from edgeds.backends.onnxruntime import OnnxRuntimeBackend
from edgeds.batch.progress import peak_rss_bytes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--providers", default="CPUExecutionProvider",
                    help="ONNX Runtime providers, in order")
    ap.add_argument("--cache-on-host", action="store_true",
                    help="keep the KV cache in numpy buffers even where the provider has device "
                         "memory")
    args = ap.parse_args()
    proc = psutil.Process()

    def peak() -> int:
        return peak_rss_bytes() >> 20

    t = time.perf_counter()
    artifact = load_artifact(args.artifact)
    providers = args.providers.split(",")
    if any(p != "CPUExecutionProvider" for p in providers) and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA and cuDNN from the nvidia-* wheels, where they are installed
    backend = OnnxRuntimeBackend(artifact, providers, threads=args.threads or None,
                                 cache_on_device=False if args.cache_on_host else None)
    vocab, context = artifact.model.vocab_size, artifact.model.context_length
    capacity = min(640, context)
    prompt = min(128, capacity - 32)
    print(f"{args.artifact}: load {time.perf_counter() - t:.2f} s, cache in "
          f"{'OrtValues' if backend.cache.memory else 'numpy buffers'}, RSS after load "
          f"{proc.memory_info().rss >> 20} MiB, "
          f"peak {peak()} MiB", flush=True)
    rng = np.random.default_rng(0)
    for batch in (int(b) for b in args.batches.split(",")):
        backend.start(batch, capacity)
        t = time.perf_counter()
        backend.prefill(list(range(batch)),
                        [rng.integers(10, min(vocab, 50000), prompt) for _ in range(batch)])
        prefill = time.perf_counter() - t
        tokens, steps = np.full(batch, 5, np.int64), []
        for _ in range(24):
            t = time.perf_counter()
            backend.decode(tokens)
            steps.append(time.perf_counter() - t)
        print(f"  batch {batch} on {backend.device}: prefill {batch}x{prompt} {prefill:.2f} s, "
              f"decode {batch / np.median(steps[4:]):.1f} tok/s, "
              f"RSS {proc.memory_info().rss >> 20} MiB, peak {peak()} MiB", flush=True)


if __name__ == "__main__":
    main()
