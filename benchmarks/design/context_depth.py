"""Speed at depth on the native dense backend: decode after D cached tokens against decode after
128, and prefill of N tokens against prefill of 512, as ratios taken in one process (the
targets of issue 23 are these ratios).

    python -m benchmarks.design.context_depth [--artifact DIR] [--threads 2] [--layers 4]
        [--decode-depths 128,4096,16384,32768] [--prefill 512,4096,16384] [--steps 32] [--rounds 3]
        [--reference ../shared/reference] [--work /tmp/edgeds-depth] [--kv-cache float32]
        [--prepare-only]

Without --artifact, the R1-Distill-Qwen-1.5B shape (--reference's config, random weights) cut to
--layers layers is written and exported (int8, context: the deepest figure's, --kv-cache: the
cache's dtype, float16 halving the bytes a decode step reads at depth) under --work once
(--prepare-only: that alone; devices/context_depth_device.sh runs both on the AMX Xeon).
Decode: a batch-1 sequence is prefilled to the depth, then --steps decode steps are timed (the
prefill of a length in both lists is timed too). Each figure is the best of --rounds, the rounds
interleaved over lengths so that a change in machine load hits every length alike; each ratio is
given best against best and within each round. Prints a line per measurement as it comes, then
one per figure and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks import SHARED_REFERENCE

WORK = Path("/tmp/edgeds-depth")
CONFIG = "configs/deepseek-r1-distill-qwen-1.5b.json"  # under the reference folder


def artifact_for(layers: int, context: int, reference: Path = SHARED_REFERENCE,
                 work: Path = WORK, kv_cache: str = "float32") -> Path:
    out = work / f"r1-1.5b-{layers}l-{context}" if kv_cache == "float32" else (
        work / f"r1-1.5b-{layers}l-{context}-{kv_cache}")
    if (out / "edgeds.json").exists():
        return out
    from benchmarks.random_checkpoint import write_checkpoint
    from edgeds_export import export_checkpoint

    ck = write_checkpoint(reference / CONFIG, work / f"ck-{layers}l",
                          reference / "deepseek-v3-tokenizer", layers=layers)
    export_checkpoint(ck, out, formats=("onnx",), weights="int8", context=context, overwrite=True,
                      kv_cache=kv_cache)
    return out


def measure(backend, tokens: int, steps: int, rng) -> tuple[float, float]:
    """Prefill of `tokens` random tokens into an empty batch-1 cache, then `steps` decode steps
    after it: (prefill tok/s, decode tok/s). One prefill serves both figures at a depth."""
    backend.start(1, tokens + steps + 1)
    prompt = rng.integers(10, 50000, tokens)
    t0 = time.perf_counter()
    token = backend.prefill([0], [prompt]).argmax(-1)
    t1 = time.perf_counter()
    for _ in range(steps):
        token = backend.decode(token).argmax(-1)
    return tokens / (t1 - t0), steps / (time.perf_counter() - t1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifact")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--decode-depths", default="128,4096,16384,32768")
    ap.add_argument("--prefill", default="512,4096,16384")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reference", type=Path, default=SHARED_REFERENCE)
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--kv-cache", choices=("float32", "float16"), default="float32")
    ap.add_argument("--prepare-only", action="store_true")
    args = ap.parse_args()
    from edgeds.artifact import load_artifact
    from edgeds.backends.native import NativeBackend

    depths = [int(d) for d in args.decode_depths.split(",")]
    prefills = [int(n) for n in args.prefill.split(",")]
    need = max(depths + prefills) + args.steps + 64
    folder = args.artifact or artifact_for(args.layers, need, args.reference, args.work,
                                               args.kv_cache)
    if args.prepare_only:
        print(f"artifact: {folder}")
        return
    art = load_artifact(folder, verify=False)
    backend = NativeBackend(art, args.threads)
    rng = np.random.default_rng(0)
    measure(backend, 64, 4, rng)  # warm-up: scratch buffers
    # The cache blocks of the longest figure taken and written once: no figure pays for the
    # pool's first-touch page faults (a single round's longest prefill would).
    backend.start(1, need)
    backend.blocks.reserve(0, need)
    for block in backend.blocks.table[0, :backend.blocks.held[0]]:
        backend.pool.keys(int(block)).fill(0)
        backend.pool.values(int(block)).fill(0)
    backend.blocks.release(0)
    decode = {d: 0.0 for d in depths}
    prefill = {n: 0.0 for n in prefills}
    rounds: list[tuple[dict, dict]] = []  # each round's (decode, prefill) figures
    # Shortest first, each figure printed as it comes: a run cut short keeps what it measured.
    for r in range(args.rounds):
        rounds.append(({}, {}))
        for n in sorted(set(depths) | set(prefills)):
            p, d = measure(backend, n, args.steps if n in decode else 0, rng)
            if n in prefill:
                prefill[n] = max(prefill[n], p)
                rounds[-1][1][n] = p
            if n in decode:
                decode[n] = max(decode[n], d)
                rounds[-1][0][n] = d
            print(f"round {r + 1}: {n} tokens: prefill {p:.0f} tok/s"
                  + (f", decode after them {d:.2f} tok/s" if n in decode else ""), flush=True)
    # Best against best, and each round against itself: a round the machine disturbed shows
    # as a ratio apart from the others, where the best figures would mix two rounds.
    within = {}
    for kind, figures, lengths in (("decode", decode, depths), ("prefill", prefill, prefills)):
        for n in lengths:
            at = 0 if kind == "decode" else 1
            per = [f[at][n] / f[at][lengths[0]] for f in rounds
                   if n in f[at] and lengths[0] in f[at]]
            within[f"{kind} {n}"] = [round(x, 3) for x in per]
            mark, digits = ("@", 2) if kind == "decode" else ("", 0)
            print(f"{kind} {mark}{n}: {figures[n]:.{digits}f} tok/s "
                  f"({figures[n] / figures[lengths[0]]:.2f}x {mark}{lengths[0]}; within each "
                  "round: " + ", ".join(f"{x:.2f}x" for x in per) + ")")
    print(json.dumps({"artifact": str(art.root), "threads": args.threads,
                      "kv_cache": backend.cache_dtype.name, "decode_tok_s": decode,
                      "prefill_tok_s": prefill, "ratios_within_rounds": within}))


if __name__ == "__main__":
    main()
