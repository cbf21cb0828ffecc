"""The native MLA backend's decode attention kernels (float32 FMAs, bf16 products) against
transformers fp32, in teacher-forced decode steps: every position attends over the latent cache
as generation does, which `perplexity.py`'s whole-window prefill never reads.

    python -m benchmarks.quality.decode_kernels --windows 60 --text jinja2 click
    python -m benchmarks.quality.decode_kernels --windows 60 --text jinja2 click \
        --activations int16 --embedding float16

The reference MoE model (benchmarks/reference_models/deepseek-v3-tiny-python) exported int8 once;
per kernel its perplexity change and top-1 agreement with fp32 over the same windows. Prints a
markdown table; results go to benchmarks/results/ by hand (long-context.md).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchmarks import REFERENCE_MODELS
from benchmarks.quality.perplexity import nll_and_top1, reference_scores, windows_of


def stepwise_scores(backend, wins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    nll, top1 = [], []
    for w in wins:
        backend.start(1, len(w) + 1)
        rows = [backend.prefill([0], [w[:1]])[0].copy()]
        rows += [backend.decode(np.array([t], np.int64))[0].copy() for t in w[1:]]
        n, t = nll_and_top1(np.stack(rows), w)
        nll.append(n)
        top1.append(t)
    return np.concatenate(nll), np.concatenate(top1)


def main() -> None:
    from edgeds_export import export_checkpoint

    from edgeds.artifact import load_artifact
    from edgeds.backends.native_mla import NativeMlaBackend

    p = argparse.ArgumentParser()
    p.add_argument("--windows", type=int, default=60)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--text", nargs="*", help="packages whose sources are the text (default: the "
                                             "model's held-out sample)")
    p.add_argument("--kernels", default="fma,bf16", help="NativeMlaBackend decode_kernel values")
    p.add_argument("--activations", default=None, help="export option (int16: two planes)")
    p.add_argument("--embedding", default=None, help="export option (float16)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    ck = REFERENCE_MODELS / "deepseek-v3-tiny-python"
    wins = windows_of(ck, args.windows, args.seq, args.text)
    ref_nll, ref_top1 = reference_scores(ck, wins)
    ref_ppl = float(np.exp(ref_nll.mean()))
    options = {k: v for k, v in (("activations", args.activations),
                                 ("embedding", args.embedding)) if v}
    lines = [f"{ck.name}, int8{''.join(f', {k} {v}' for k, v in options.items())}; "
             f"{ref_nll.size} tokens; transformers fp32 perplexity {ref_ppl:.4f}", "",
             "| decode kernel (taken) | perplexity | change | top-1 agreement |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        art = Path(tmp) / "int8"
        export_checkpoint(ck, art, formats=("onnx",), weights="int8", context=args.seq + 8,
                          **options)
        artifact = load_artifact(art)
        for kernel in args.kernels.split(","):
            backend = NativeMlaBackend(artifact, args.threads, decode_kernel=kernel)
            nll, top1 = stepwise_scores(backend, wins)
            ppl = float(np.exp(nll.mean()))
            lines.append(f"| {kernel} ({backend.decode_kernel}) | {ppl:.4f} | "
                         f"{100 * (ppl / ref_ppl - 1):+.3f}% | "
                         f"{100 * float((top1 == ref_top1).mean()):.2f}% |")
            print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
