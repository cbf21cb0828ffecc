"""Where the native MLA backend's peak RSS comes from, row by row of moe_compare's shapes: the
process's high-water mark after each (batch, prompt) shape, with the decompressed keys and values
of a long prompt kept between its prefill calls (`keep_decompressed_bytes`, the default) or not
(0), one layer at a time (the calls layer by layer, the default) or as many leading layers as
the budget holds (`--every-layer-per-call`), and the prefill rate of the longest prompt. Run once
per setting: the high-water mark is the process's.

    python -m benchmarks.design.mla_prefill_memory ARTIFACT [--keep-bytes 0] [--threads 2]
        [--every-layer-per-call]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

SHAPES = ((1, 128), (16, 128), (64, 128), (1, 512), (1, 4096))  # moe_compare's rows
DECODE_STEPS = 32


def high_water_mib() -> tuple[int, int]:
    """(VmHWM, VmRSS) of this process in MiB."""
    seen = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                seen[key] = int(value.split()[0]) // 1024
    return seen["VmHWM"], seen["VmRSS"]


def main() -> None:
    from edgeds.artifact import load_artifact
    from edgeds.backends.native_mla import NativeMlaBackend

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("--keep-bytes", type=int, default=None,
                    help="keep_decompressed_bytes (default: the backend's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--every-layer-per-call", action="store_true",
                    help="each prefill call through every layer (layer_major=False)")
    args = ap.parse_args()
    backend = NativeMlaBackend(load_artifact(args.artifact), threads=args.threads,
                               keep_decompressed_bytes=args.keep_bytes,
                               layer_major=not args.every_layer_per_call)
    rng = np.random.default_rng(0)
    rows = []
    for batch, prompt in SHAPES:
        backend.start(batch, prompt + DECODE_STEPS + 8)
        t = time.perf_counter()
        backend.prefill(list(range(batch)),
                        [rng.integers(0, backend.vocab_size, prompt) for _ in range(batch)])
        prefill_s = time.perf_counter() - t
        for _ in range(DECODE_STEPS):
            backend.decode(rng.integers(0, backend.vocab_size, batch))
        hwm, now = high_water_mib()
        rows.append({"batch": batch, "prompt": prompt, "prefill_tok_s": round(batch * prompt /
                     prefill_s, 1), "high_water_mib": hwm, "rss_after_mib": now})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"keep_decompressed_bytes": backend.keep_decompressed_bytes,
                      "layer_major": backend.layer_major, "rows": rows}))


if __name__ == "__main__":
    main()
