"""The dense decoder's prompt attention tile alone (flash_prefill.h through `ed_prompt_tile`):
one tile of query rows (16 positions x the group's heads of one KV head) over a deep cache, one
thread, the best of `--rounds`, in multiply-adds a second (scores and values, causal).

    python -m benchmarks.kernels.prompt_tile --depths 4096,16384

The ceiling on CPUs without AMX is vdpbf16ps's rate (kernels/int8_peak.c built with
-mavx512bf16); `--kernel 0` times the float32 copy of the same products, 2 the AMX tiles where
the CPU grants them.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from edgeds.native import library

TILE = 16  # decoder.c's PROMPT_TILE


def time_tile(depth: int, group: int, d: int, kernel: int, rounds: int) -> float:
    rng = np.random.default_rng(0)
    blocks = depth // 64
    k = rng.standard_normal((blocks * 64, d)).astype(np.float32)
    v = rng.standard_normal((blocks * 64, d)).astype(np.float32)
    q = rng.standard_normal((TILE, group, d)).astype(np.float32)
    out = np.zeros_like(q)
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        rc = library().ed_prompt_tile(q.ctypes.data, k.ctypes.data, v.ctypes.data, blocks, TILE,
                                      depth - TILE, d, group, kernel, out.ctypes.data)
        best = min(best, time.perf_counter() - t)
        if rc != 0:
            raise SystemExit(f"ed_prompt_tile refused depth {depth}, group {group}, D {d}")
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--depths", default="4096,16384")
    ap.add_argument("--group", type=int, default=6, help="query heads per KV head (1.5B: 6)")
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--kernel", type=int, default=1, choices=(0, 1, 2))
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    for depth in (int(x) for x in args.depths.split(",")):
        s = time_tile(depth, args.group, args.head_dim, args.kernel, args.rounds)
        macs = TILE * args.group * (depth - TILE / 2) * args.head_dim * 2
        print(f"depth {depth}: {s * 1e3:.2f} ms a tile, {macs / s / 1e9:.1f} GMAC/s")


if __name__ == "__main__":
    main()
