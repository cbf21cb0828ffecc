"""Load time against the number of ONNX graph parts (`edgeds export --load-parts N`).

    python -m benchmarks.design.load_parts SRC --parts 1,4,8 [--threads 16] [--rounds 3] \
        [--work DIR]

Exports SRC once per part count (ONNX, int8, context 2048; kept in --work), then in each round
loads every artifact in a fresh process, in turn: `edgeds.load` (checksums, tokenizer, backend
sessions; what the harness calls load) and the backend's sessions alone, each followed by a
16-step batch-1 decode, so that a faster load that costs decode speed shows. One JSON line per
load; medians at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def measure(artifact: str, threads: int | None, what: str) -> dict:
    """`what`: "engine" is `edgeds.load` (checksums, tokenizer and backend, the harness's load);
    "backend" the ONNX Runtime sessions alone."""
    import resource

    import numpy as np
    import onnxruntime as ort

    import edgeds
    from edgeds.artifact import load_artifact
    from edgeds.backends.onnxruntime import OnnxRuntimeBackend

    t0 = time.perf_counter()
    if what == "engine":
        backend = edgeds.load(artifact, threads=threads, backend="onnxruntime").backend
    else:
        backend = OnnxRuntimeBackend(load_artifact(artifact, verify=False),
                                     ["CPUExecutionProvider"], threads)
    load = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    backend.start(1, 256)
    logits = backend.prefill([0], [np.arange(10, 138, dtype=np.int64)])
    for _ in range(4):
        logits = backend.decode(logits.argmax(-1))
    t0 = time.perf_counter()
    for _ in range(16):
        logits = backend.decode(logits.argmax(-1))
    return {"artifact": artifact, "what": what, "onnxruntime": ort.__version__,
            "sessions": len(backend.sessions),
            "load_s": round(load, 3), "user_s": round(usage.ru_utime, 2),
            "sys_s": round(usage.ru_stime, 2),
            "decode_b1_tok_s": round(16 / (time.perf_counter() - t0), 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("src", nargs="?")
    ap.add_argument("--parts", default="1,4")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", default="/tmp/edgeds-load-parts")
    ap.add_argument("--what", default="engine,backend",
                    help="engine (edgeds.load) and/or backend (sessions alone)")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.threads or None, args.what)), flush=True)
        return
    work = Path(args.work)
    artifacts = {}
    for parts in (int(p) for p in args.parts.split(",")):
        out = work / f"{Path(args.src).name}-int8-parts{parts}"
        if not (out / "edgeds.json").exists():
            subprocess.run([sys.executable, "-m", "edgeds.cli", "export", args.src, "-o", str(out),
                            "--format", "onnx", "--context", "2048", "--load-parts", str(parts),
                            "--overwrite"],
                           check=True)
        artifacts[parts] = str(out)
    results: dict[tuple[int, str], list[dict]] = {}
    for _ in range(args.rounds):
        for parts, path in artifacts.items():
            for what in args.what.split(","):
                cmd = [sys.executable, "-m", __spec__.name, "--measure", path, "--threads",
                       str(args.threads), "--what", what]
                stdout = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                line = stdout.strip().splitlines()[-1]
                print(line, flush=True)
                results.setdefault((parts, what), []).append(json.loads(line))
    for (parts, what), runs in results.items():
        loads = [r["load_s"] for r in runs]
        decodes = [r["decode_b1_tok_s"] for r in runs]
        print(f"parts {parts} ({runs[0]['sessions']} sessions), {what}: load median "
              f"{statistics.median(loads):.2f} s "
              f"({min(loads):.2f}-{max(loads):.2f}), decode b1 median "
              f"{statistics.median(decodes):.1f} tok/s "
              f"({min(decodes):.1f}-{max(decodes):.1f})")

if __name__ == "__main__":
    main()
