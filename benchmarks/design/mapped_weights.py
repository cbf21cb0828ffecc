"""Do the native MLA backend's weights cost decode speed when read in place from the artifact's
memory map (map_weights, the default) rather than copied into the process's memory? And what
does an engine's load cost, verified in full and from checksum stamps?

    python -m benchmarks.design.mapped_weights ARTIFACT [--threads 16] [--rounds 3]
        [--steps 16] [--out mapped-weights.json]

ARTIFACT: an int8 DeepSeek-V2/V3 export (n16k4 weights). Load: `edgeds.load` with
EDGEDS_VERIFY=always (every file hashed: a first load), then twice with stamps (the second of
them timed: a load of an unchanged artifact); peak RSS of each load in its own process.
Decode: NativeMlaBackend mapped and copied, taking turns for --rounds, tokens/s of --steps
steps after a 128-token prompt at batch 1 and 16 (random token ids, seeded), and the process's
anonymous and file-backed RSS after them (the backend alive). Prints and writes
a JSON; the reading goes to benchmarks/results/ with the command.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

LOAD = """
import json, resource, sys, time
import edgeds
t = time.perf_counter()
edgeds.load(sys.argv[1], threads=int(sys.argv[2]), backend="native", prefix_cache=False)
print(json.dumps({"load_s": time.perf_counter() - t,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def load_once(artifact: str, threads: int, verify_always: bool) -> dict:
    env = dict(os.environ)
    env.pop("EDGEDS_VERIFY", None)
    if verify_always:
        env["EDGEDS_VERIFY"] = "always"
    out = subprocess.run([sys.executable, "-c", LOAD, artifact, str(threads)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def decode_rates(artifact, threads: int, mapped: bool, steps: int) -> dict[int, float]:
    import numpy as np

    from edgeds.backends.native_mla import NativeMlaBackend

    backend = NativeMlaBackend(artifact, threads, map_weights=mapped)
    rates = {}
    for batch in (1, 16):
        rng = np.random.default_rng(0)
        backend.start(batch, 128 + steps + 1)
        prompts = [rng.integers(2, 1000, 128).astype(np.int64) for _ in range(batch)]
        backend.prefill(list(range(batch)), prompts)
        backend.decode(rng.integers(2, 1000, batch))  # the first step's page faults untimed
        t = time.perf_counter()
        for _ in range(steps):
            backend.decode(rng.integers(2, 1000, batch))
        rates[batch] = steps * batch / (time.perf_counter() - t)
    status = dict(line.split(":", 1) for line in open("/proc/self/status", encoding="utf-8"))
    rates["rss_mib"] = {k: int(status[k].split()[0]) / 1024 for k in ("RssAnon", "RssFile")}
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--out", default="mapped-weights.json")
    args = ap.parse_args()
    from edgeds.artifact import load_artifact

    res = {"artifact": args.artifact, "threads": args.threads,
           "load_verified": load_once(args.artifact, args.threads, True)}
    load_once(args.artifact, args.threads, False)  # writes the stamps
    res["load_stamped"] = load_once(args.artifact, args.threads, False)
    print(json.dumps(res), flush=True)
    art = load_artifact(args.artifact, verify=False)
    rates: dict[str, list] = {}
    for _ in range(args.rounds):
        for mapped in (True, False):
            for key, value in decode_rates(art, args.threads, mapped, args.steps).items():
                name = f"b{key}" if isinstance(key, int) else key
                rates.setdefault(f"{'mapped' if mapped else 'copied'} {name}", []).append(value)
    res["decode_tok_s"] = rates
    print(json.dumps(res, indent=1))
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
