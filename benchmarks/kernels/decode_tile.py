"""The dense decoder's decode attention alone (decoder.c's splits through `ed_decode_tile`): one
query row of a group's heads over one KV head's cache, from memory (each call reads a copy of
the cache no other call touched lately: together more than the L3), on one thread or on
`--threads` threads at once (each its own caches, as decode's KV heads share the memory bus).
Milliseconds per tile and the cache's bytes a second over all threads.

    python -m benchmarks.kernels.decode_tile --depths 4096,16384,32768 --threads 2

`--library PATH` (repeatable) times built libraries side by side, rounds in turns, for an A/B of
two source trees: each tree's build is the path `python -c "from edgeds import native;
print(native.library()._name)"` prints there. Without it: this checkout's build.
"""

from __future__ import annotations

import argparse
import ctypes
import threading
import time

import numpy as np

from edgeds.native import library

BLOCK = 64  # decoder.c's positions a block


def tile_runner(depth: int, group: int, d: int, dtype, threads: int, rng):
    """A callable timing one round: every thread through its copies of the cache once; returns
    seconds per tile."""
    blocks = depth // BLOCK + 1
    per_copy = 2 * blocks * BLOCK * d * np.dtype(dtype).itemsize
    copies = max(2, int(128e6 // (per_copy * threads)))
    caches = [[(rng.standard_normal((blocks * BLOCK, d)).astype(dtype),
                rng.standard_normal((blocks * BLOCK, d)).astype(dtype)) for _ in range(copies)]
              for _ in range(threads)]
    q = rng.standard_normal((1, group, d)).astype(np.float32)
    outs = [np.zeros_like(q) for _ in range(threads)]
    f16 = int(dtype == np.float16)

    def one(t: int, fn) -> None:
        for k, v in caches[t]:
            if fn(q.ctypes.data, k.ctypes.data, v.ctypes.data, f16, blocks, 1, depth, d, group,
                  outs[t].ctypes.data) != 0:
                raise SystemExit(f"ed_decode_tile refused depth {depth}, group {group}, D {d}")

    def run(fn) -> float:
        workers = [threading.Thread(target=one, args=(t, fn)) for t in range(threads)]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return (time.perf_counter() - t0) / copies

    return run, 2 * (depth + 1) * d * np.dtype(dtype).itemsize * threads


def open_library(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(path)
    p, i = ctypes.c_void_p, ctypes.c_int
    lib.ed_decode_tile.argtypes = [p, p, p, i, i, i, i, i, i, p]
    return lib


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", default="4096,16384,32768")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--group", type=int, default=6, help="query heads per KV head (1.5B: 6)")
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--dtypes", default="float32,float16")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--library", action="append", help="a built library (repeat to compare)")
    args = ap.parse_args()
    libs = ({p: open_library(p) for p in args.library} if args.library
            else {"this checkout": library()})
    rng = np.random.default_rng(0)
    for dtype in args.dtypes.split(","):
        for depth in (int(x) for x in args.depths.split(",")):
            run, nbytes = tile_runner(depth, args.group, args.head_dim, np.dtype(dtype),
                                      args.threads, rng)
            seconds = {name: [] for name in libs}
            for _ in range(args.rounds):  # the libraries in turns, the first round a warm-up
                for name, lib in libs.items():
                    seconds[name].append(run(lib.ed_decode_tile))
            medians = {name: float(np.median(s[1:])) for name, s in seconds.items()}
            cells = [f"{name}: {t * 1e3:.3f} ms ({nbytes / t / 1e9:.1f} GB/s)"
                     for name, t in medians.items()]
            print(f"{dtype} @{depth}, {args.threads} thread(s): " + "; ".join(cells), flush=True)


if __name__ == "__main__":
    main()
