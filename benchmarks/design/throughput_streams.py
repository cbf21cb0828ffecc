"""An offline job on one backend, against the same job split over several concurrent backends.

    python -m benchmarks.design.throughput_streams ARTIFACT --streams 1,2,4 [--threads 16] \
        [--prompts 64] [--rounds 2]

N prompts of 64-512 random tokens (fixed seed), then 127 greedy decode steps, on S ONNX Runtime
backends of threads/S threads each, every backend taking N/S prompts in its own Python thread
(ONNX Runtime releases the GIL while it runs). The backend alone, no generate loop. Each setting
in a fresh process, the settings in turns. Asks whether throughput streams fill a many-core CPU
better than one batch; each backend prepacks its own copy of the weights, so memory grows with S.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def run(artifact: str, streams: int, threads: int, n: int) -> dict:
    from edgeds.artifact import load_artifact
    from edgeds.backends.onnxruntime import OnnxRuntimeBackend

    art = load_artifact(artifact, verify=False)
    rng = np.random.default_rng(0)
    top = min(art.model.vocab_size, 50000)
    prompts = [rng.integers(10, top, int(k)) for k in rng.integers(64, 513, n)]
    t0 = time.perf_counter()
    backends = [OnnxRuntimeBackend(art, ["CPUExecutionProvider"], threads // streams)
                for _ in range(streams)]
    load = time.perf_counter() - t0
    per = n // streams
    phases: list[tuple[float, float]] = [(0.0, 0.0)] * streams

    def job(i: int) -> None:
        backend, mine = backends[i], prompts[i * per:(i + 1) * per]
        backend.start(len(mine), 640)
        t = time.perf_counter()
        logits = backend.prefill(list(range(len(mine))), mine)
        prefill = time.perf_counter() - t
        for _ in range(127):
            logits = backend.decode(logits.argmax(-1))
        phases[i] = (round(prefill, 2), round(time.perf_counter() - t - prefill, 2))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        for done in [pool.submit(job, i) for i in range(streams)]:
            done.result()  # a stream's error ends the measurement
    wall = time.perf_counter() - t0
    return {"streams": streams, "threads_each": threads // streams, "load_s": round(load, 2),
            "wall_s": round(wall, 2),
            "tok_s": round(streams * per * 128 / wall, 1), "prefill_decode_s": phases,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--streams", default="1,2,4")
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--measure", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(run(args.artifact, args.measure, args.threads, args.prompts)), flush=True)
        return
    for _ in range(args.rounds):
        for streams in (int(s) for s in args.streams.split(",")):
            cmd = [sys.executable, "-m", __spec__.name, args.artifact, "--threads",
                   str(args.threads), "--prompts", str(args.prompts), "--measure", str(streams)]
            print(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip(),
                  flush=True)


if __name__ == "__main__":
    main()
