"""ONNX Runtime with and without weight prepacking on an edgeds artifact: load, TTFT, decode, RSS.

    python -m benchmarks.design.ort_prepacking ARTIFACT on
    python -m benchmarks.design.ort_prepacking ARTIFACT off    # session.disable_prepacking=1

One setting per process, so peak RSS is its own.
"""

from __future__ import annotations

import resource
import sys
import time

import numpy as np

from edgeds.artifact import load_artifact
from edgeds.backends.onnxruntime import OnnxRuntimeBackend


def main(artifact: str, prepacking: str) -> None:
    opts = {"session.disable_prepacking": "1"} if prepacking == "off" else {}
    art = load_artifact(artifact, verify=False)
    t0 = time.perf_counter()
    b = OnnxRuntimeBackend(art, ["CPUExecutionProvider"], 2, opts)
    load = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    b.start(1, 512)
    t0 = time.perf_counter()
    b.prefill([0], [rng.integers(0, 1000, 128)])
    ttft = time.perf_counter() - t0
    tok = np.array([5])
    b.decode(tok)
    t0 = time.perf_counter()
    for _ in range(16):
        b.decode(tok)
    decode = 16 / (time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"prepacking {prepacking}: load {load:.2f} s, TTFT(128) {ttft:.2f} s, decode b1 "
          f"{decode:.1f} tok/s, "
          f"peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
