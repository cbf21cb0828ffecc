"""Does the native MLA+MoE backend compute the same logits with AMX tiles as without them?

    python -m benchmarks.devices.native_amx_parity ARTIFACT [--threads 16]

On an AMX machine (the lent Xeon), one int8 DeepSeek export run twice on the same random prompts:
with the tiles granted (calls whose rows for a weight reach 16 take them) and with the VNNI
kernels alone. Prefill of 16 prompts (every weight sees hundreds of rows) and decode at batch 16
and 64 (attention and the LM head on tiles; experts with 16+ tokens too). Prints the largest
logit difference of each phase relative to the largest logit, and whether greedy tokens agree;
exits 1 if AMX was not granted or a phase differs by more than int32 accumulation allows (the
two kernels add the same int8 products, so only the float epilogue's order may differ).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from edgeds.artifact import load_artifact
from edgeds.backends.native_mla import NativeMlaBackend

PROMPT, STEPS = 48, 6
TOLERANCE = 1e-4  # of the largest |logit|


def run(art, threads: int, use_amx: bool, batch: int, seed: int) -> tuple[dict, bool]:
    rng = np.random.default_rng(seed)
    be = NativeMlaBackend(art, threads, use_amx=use_amx)
    be.start(batch, PROMPT + STEPS + 8)
    prompts = [rng.integers(0, be.vocab_size, PROMPT).astype(np.int64) for _ in range(batch)]
    out = {"prefill": be.prefill(list(range(batch)), prompts)}
    out["decode"] = np.stack(
        [be.decode(rng.integers(0, be.vocab_size, batch).astype(np.int64)) for _ in range(STEPS)]
    )
    return out, be.uses_amx


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--batches", default="16,64")
    args = ap.parse_args()
    art = load_artifact(args.artifact)
    report, ok = [], True
    for batch in map(int, args.batches.split(",")):
        amx, granted = run(art, args.threads, True, batch, seed=batch)
        vnni, _ = run(art, args.threads, False, batch, seed=batch)
        ok &= granted
        for phase in ("prefill", "decode"):
            a, v = amx[phase], vnni[phase]
            rel = float(np.abs(a - v).max() / np.abs(v).max())
            same = float(np.mean(a.argmax(-1) == v.argmax(-1)))
            ok &= bool(np.isfinite(a).all()) and rel <= TOLERANCE
            report.append({"batch": batch, "phase": phase, "amx_granted": granted,
                           "max_rel_diff": rel, "greedy_agree": same})
            print(f"batch {batch} {phase}: AMX granted {granted}, max |AMX - VNNI| / max|logit| "
                  f"{rel:.2e}, greedy agree {same:.1%}", flush=True)
    print(json.dumps(report))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
