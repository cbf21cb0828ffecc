"""Where `edgeds.load`'s time goes (moe_compare's load row), each round in fresh processes:
the whole load as the harness times it (native backend), then, in another process, its parts one
after another (checksums, the native library's load, the tokenizer's parse, the backend's open).

    python -m benchmarks.design.load_phases ARTIFACT [--threads 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def whole(artifact: str, threads: int) -> dict:
    import edgeds

    t0 = time.perf_counter()
    edgeds.load(artifact, threads=threads, backend="native", prefix_cache=False)
    return {"load_s": time.perf_counter() - t0}


def parts(artifact: str, threads: int) -> dict:
    from edgeds.artifact import load_artifact
    from edgeds.backends.native import open_native
    from edgeds.batch.progress import peak_rss_bytes
    from edgeds.native import library
    from edgeds.tokenizer import TextTokenizer

    out, t = {}, time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        out[name] = now - t
        t = now

    art = load_artifact(artifact)
    lap("manifest_and_checksums_s")
    library()
    lap("native_library_s")
    TextTokenizer(art)
    lap("tokenizer_s")
    rss_tokenizer = peak_rss_bytes()
    open_native(art, threads)
    lap("backend_open_s")
    return out | {"peak_rss_after_tokenizer_mib": rss_tokenizer / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", choices=("whole", "parts"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        fn = whole if a.child == "whole" else parts
        print(json.dumps(fn(a.artifact, a.threads)))
        return
    for r in range(a.rounds):
        row = {"round": r}
        for child in ("whole", "parts"):
            res = subprocess.run([sys.executable, "-m", "benchmarks.design.load_phases",
                                  a.artifact, "--threads",
                                  str(a.threads), "--child", child],
                                 capture_output=True, text=True, check=True)
            row |= json.loads(res.stdout.strip().splitlines()[-1])
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}),
              flush=True)


if __name__ == "__main__":
    main()
