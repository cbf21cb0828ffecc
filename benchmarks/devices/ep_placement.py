"""Which execution provider runs each operator of an artifact's ONNX graph.

    python -m benchmarks.devices.ep_placement ARTIFACT \
        --providers CUDAExecutionProvider,CPUExecutionProvider

ONNX Runtime gives a node to the first provider in the list that has a kernel for it; the rest
fall back to the CPU, with copies between devices at every boundary. On a Jetson that decides
whether an artifact runs on the GPU at all. One prefill call of a few tokens runs with ORT's
profiler on; the profile names the provider of every node that ran.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from edgeds.artifact import load_artifact
from edgeds.backends.onnxruntime import OnnxRuntimeBackend


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--providers", default="CPUExecutionProvider")
    args = ap.parse_args()
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):  # CUDA and cuDNN from the nvidia-* wheels, where installed
        ort.preload_dlls()
    print(f"onnxruntime {ort.__version__}, available: {', '.join(ort.get_available_providers())}")
    artifact = load_artifact(args.artifact, verify=False)
    prefix = str(Path(tempfile.mkdtemp()) / "ort")
    backend = OnnxRuntimeBackend(artifact, args.providers.split(","), 1, profile_prefix=prefix)
    print(f"session providers: {', '.join(backend.session.get_providers())}")
    backend.start(1, 64)
    backend.prefill([0], [np.arange(10, 26, dtype=np.int64)])
    backend.decode(np.array([5], np.int64))
    events = [e for s in backend.sessions for e in json.loads(Path(s.end_profiling()).read_text())]
    placed: Counter = Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            placed[(e["args"]["op_name"], e["args"].get("provider", "?"))] += 1
    print(f"{'operator':36s} {'provider':28s} node runs")
    for (op, provider), n in sorted(placed.items()):
        print(f"{op:36s} {provider:28s} {n}")


if __name__ == "__main__":
    main()
