"""Prefill attention of the native MLA decoder, absorbed (each query folded into the latent,
576-wide scores and 512-wide values per head and key) against decompressed (each cached latent
row turned into per-head keys and values once, 192-wide scores and 128-wide values): which is
faster at which prompt length?

    python -m benchmarks.kernels.mla_prefill_crossover --threads 1 --tokens 16,64,256,1024
    python -m benchmarks.kernels.mla_prefill_crossover --prefix 2048 --tokens 8,32,128,512

--prefix P: the timed call's rows come after P cached positions (a resume after a prefix
cache hit, or a prompt's later call): decompressed attention then decompresses all P + rows
cached rows for the call, absorbed attention folds each new row's query once instead.

One layer of DeepSeek-V2-Lite's attention widths (16 heads, kv_lora_rank 512, nope 128, rope 64,
v 128, hidden 2048), random int8 weights built straight into mla_moe.c (no export), a small dense
MLP and vocabulary. Both paths run in the same process, in turns, the best of `--rounds` each;
on one thread the time is the whole call's CPU time (the rest of the layer is the same in both),
on more mla_moe.c's own attention phases (em_profile: W_UK's fold into the queries or the
decompression included). A ratio above 1: decompressed is faster.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from edgeds.native import library

HIDDEN, HEADS, LORA, NOPE, ROPE, V, INTER, VOCAB = 2048, 16, 512, 128, 64, 128, 256, 1024
P_ATTN_PROJ, P_ATTN = 0, 1


def build(lib, threads: int, positions: int, rng):
    """One dense MLA layer with random int8 weights; the arrays it was built from (kept alive)."""
    dims = np.array(
        [1, HIDDEN, HEADS, 0, LORA, NOPE, ROPE, V, INTER, 0, 0, 0, 0, 0, 1, 1, 0, VOCAB], np.int32
    )
    model = lib.em_new(dims.ctypes.data, 1e-6, (NOPE + ROPE) ** -0.5, 1.0, threads, 0)
    keep = [dims]

    def arr(*shape, dtype=np.float32):
        a = (
            rng.integers(-127, 128, shape).astype(np.int8)
            if dtype == np.int8
            else (rng.random(shape, np.float32) * 0.02 + 0.01)
        )
        keep.append(a)
        return a.ctypes.data

    linears = [
        (1, HIDDEN, HEADS * (NOPE + ROPE)),
        (2, HIDDEN, LORA + ROPE),
        (3, HEADS * V, HIDDEN),
        (4, HIDDEN, INTER),
        (5, HIDDEN, INTER),
        (6, INTER, HIDDEN),
    ]
    for which, k, n in linears:
        lib.em_set_linear(model, 0, which, arr(k, n, dtype=np.int8), arr(n), k, n)
    lib.em_set_linear(model, -1, 0, arr(HIDDEN, VOCAB, dtype=np.int8), arr(VOCAB), HIDDEN, VOCAB)
    ones = np.ones(max(HIDDEN, LORA), np.float32)
    keep.append(ones)
    lib.em_set_norms(model, 0, ones.ctypes.data, ones.ctypes.data, None, ones.ctypes.data)
    lib.em_set_norms(model, -1, ones.ctypes.data, None, None, None)
    lib.em_set_absorb(
        model,
        0,
        arr(HEADS, NOPE, LORA, dtype=np.int8),
        arr(HEADS, LORA),
        arr(HEADS, LORA, V, dtype=np.int8),
        arr(HEADS, V),
    )
    lib.em_set_embedding(model, arr(VOCAB, HIDDEN, dtype=np.int8), arr(VOCAB), None)
    angles = np.outer(np.arange(positions), 1e4 ** -(np.arange(ROPE // 2) / (ROPE // 2)))
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    keep += [cos, sin]
    lib.em_set_rope(model, cos.ctypes.data, sin.ctypes.data, positions)
    return model, keep


def forward(lib, model, cache: np.ndarray, start: int, tokens: int, prefill: int, rng) -> None:
    ids = rng.integers(0, VOCAB, tokens).astype(np.int64)
    slot, pos = np.zeros(tokens, np.int32), np.arange(start, start + tokens, dtype=np.int32)
    last = np.array([tokens - 1], np.int32)
    logits = np.empty((32, VOCAB), np.float32)
    rc = lib.em_forward(
        model, tokens, ids.ctypes.data, slot.ctypes.data, pos.ctypes.data, 1, last.ctypes.data,
        cache.ctypes.data, 1, cache.shape[2], prefill, logits.ctypes.data,
    )
    assert rc == 0, rc


def attention_seconds(lib, model, threads: int, tokens: int, prefill: int, rng,
                      prefix: int = 0) -> float:
    """One prefill call of `tokens` rows (one sequence, after `prefix` cached positions): on
    one thread the call's CPU seconds; on more, the wall seconds of its attention phases."""
    cache = np.zeros((1, 1, prefix + tokens, LORA + ROPE), np.float32)
    for at in range(0, prefix, 512):  # the cached prefix, untimed
        forward(lib, model, cache, at, min(512, prefix - at), 1, rng)
    phases = np.zeros(8)
    lib.em_profile(model, phases.ctypes.data, 1)
    cpu = time.thread_time()
    forward(lib, model, cache, prefix, tokens, prefill, rng)
    cpu = time.thread_time() - cpu
    lib.em_profile(model, phases.ctypes.data, 1)
    if threads == 1:  # the whole call's CPU time: less at the mercy of a busy machine than wall
        return cpu
    return float(phases[P_ATTN_PROJ] + phases[P_ATTN])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tokens", default="16,32,64,128,256,512,1024")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prefix", type=int, default=0, help="cached positions before the rows")
    args = p.parse_args()
    lengths = [int(t) for t in args.tokens.split(",")]
    lib, rng = library(), np.random.default_rng(0)
    model, _keep = build(lib, args.threads, args.prefix + max(lengths), rng)
    print(f"V2-Lite attention widths, one layer, {args.threads} threads, best of {args.rounds}, "
          f"after {args.prefix} cached positions")
    print("| new rows | absorbed ms | decompressed ms | absorbed / decompressed |")
    print("|---|---|---|---|")
    for tokens in lengths:
        best = [np.inf, np.inf]
        for _ in range(args.rounds):
            for prefill in (0, 1):
                took = attention_seconds(lib, model, args.threads, tokens, prefill, rng,
                                         args.prefix)
                best[prefill] = min(best[prefill], took)
        print(f"| {tokens} | {best[0] * 1e3:.2f} | {best[1] * 1e3:.2f} | {best[0] / best[1]:.2f} |",
              flush=True)
    lib.em_free(model)


if __name__ == "__main__":
    main()
