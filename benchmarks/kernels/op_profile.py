"""Where a prefill call and a decode step spend their time, by ONNX operator type (ORT profiler).

    python -m benchmarks.kernels.op_profile ARTIFACT [--threads 2] [--prompts 1x512,4x128] \
        [--batches 1,16] [--context 64]

For each phase: wall time of the call, and each op type's share of the summed node time
(nodes run one after another here: inter-op threads are 1), so quantize/rescale nodes,
attention and the integer matmuls can be told apart. Random token ids, fixed seed. An If (the
int8-cache graph's attention) counts its own time only; its branch's nodes count by their type.
"""

from __future__ import annotations

import argparse
import bisect
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from edgeds.artifact import load_artifact
from edgeds.backends.onnxruntime import OnnxRuntimeBackend


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", default="1x512,4x128",
                    help="prefill calls: COUNTxLENGTH, comma-separated")
    ap.add_argument("--batches", default="1,16", help="decode batch sizes")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--context", type=int, default=64,
                    help="tokens in each slot's cache before the decode steps (an offline job's "
                         "slots hold 64-640)")
    args = ap.parse_args()

    artifact = load_artifact(args.artifact, verify=False)
    prefix = str(Path(tempfile.mkdtemp()) / "ort")
    backend = OnnxRuntimeBackend(artifact, ["CPUExecutionProvider"], args.threads,
                                 profile_prefix=prefix)
    t_zero = min(s.get_profiling_start_time_ns() for s in backend.sessions)
    vocab = artifact.model.vocab_size
    rng = np.random.default_rng(0)
    phases: list[tuple[str, int, int]] = []  # (label, start, end) in ns of the wall clock

    def timed(label: str, fn) -> None:
        t = time.time_ns()
        fn()
        phases.append((label, t, time.time_ns()))

    for spec in args.prompts.split(","):
        n, length = (int(v) for v in spec.split("x"))
        prompts = [rng.integers(10, min(vocab, 50000), length) for _ in range(n)]
        backend.start(n, length + 64)
        backend.prefill(list(range(n)), prompts)  # warm-up: first-run allocations stay out
        backend.start(n, length + 64)
        timed(f"prefill {n}x{length}", lambda: backend.prefill(list(range(n)), prompts))
    for batch in (int(b) for b in args.batches.split(",")):
        backend.start(batch, args.context + args.steps + 2)
        backend.prefill(list(range(batch)),
                        [rng.integers(10, min(vocab, 1000), args.context) for _ in range(batch)])
        tokens = np.full(batch, 5, np.int64)
        backend.decode(tokens)
        timed(f"decode b{batch} x{args.steps}",
              lambda: [backend.decode(tokens) for _ in range(args.steps)])
    nodes = []  # every session's node events (an artifact's graph parts are a session each)
    for session in backend.sessions:
        start = session.get_profiling_start_time_ns()  # its event timestamps are us after this
        events = json.loads(Path(session.end_profiling()).read_text())
        nodes += [{**e, "ts": e["ts"] + (start - t_zero) / 1000} for e in events
                  if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    # An If's time holds its branch's nodes, which are listed too: it is counted by its own
    # share only ("If (own)"), so that attention inside a branch is not counted twice.
    ifs = sorted((e["ts"], e["ts"] + e["dur"]) for e in nodes if e["args"]["op_name"] == "If")
    starts = [start for start, _ in ifs]
    by_phase: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for e in nodes:
        at = t_zero + e["ts"] * 1000
        label = next((name for name, t0, t1 in phases if t0 <= at <= t1), None)
        if not label:
            continue
        op, ms = e["args"]["op_name"], e["dur"] / 1e3
        if op == "If":
            by_phase[label]["If (own)"] += ms
            continue
        by_phase[label][op] += ms
        k = bisect.bisect_right(starts, e["ts"]) - 1
        if k >= 0 and e["ts"] + e["dur"] <= ifs[k][1]:  # inside a branch: not the If's own time
            by_phase[label]["If (own)"] -= ms
    for label, t0, t1 in phases:
        ops = by_phase[label]
        total = sum(ops.values())
        print(f"\n{label}: wall {(t1 - t0) / 1e6:.1f} ms, node time {total:.1f} ms")
        for op, ms in sorted(ops.items(), key=lambda kv: -kv[1])[:12]:
            print(f"  {op:32s} {ms:9.1f} ms  {100 * ms / max(total, 1e-9):5.1f}%")


if __name__ == "__main__":
    main()
