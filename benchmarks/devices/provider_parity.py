"""One artifact on two ONNX Runtime providers: do their logits agree, prefill and decode?

    python -m benchmarks.devices.provider_parity ARTIFACT --providers CUDAExecutionProvider \
        --against CPUExecutionProvider

Two prompts of different lengths in one batch (so per-sequence lengths matter), then
teacher-forced decode steps on the tokens the first provider picks: the largest logit
difference (and the logits' range, for scale) and how often both pick the same token.
"""

from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort

from edgeds.artifact import load_artifact
from edgeds.backends.onnxruntime import OnnxRuntimeBackend


def run(backend: OnnxRuntimeBackend, prompts: list[np.ndarray], steps: int,
        forced: list[np.ndarray] | None):
    backend.start(len(prompts), max(len(p) for p in prompts) + steps + 1)
    logits = [backend.prefill(list(range(len(prompts))), prompts).copy()]
    for step in range(steps):
        tokens = forced[step] if forced else logits[-1].argmax(-1)
        logits.append(backend.decode(tokens).copy())
    return logits


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--providers", required=True,
                    help="the provider under test, then its fallbacks")
    ap.add_argument("--against", default="CPUExecutionProvider")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--cache-on-host", action="store_true",
                    help="the tested provider's cache in numpy buffers, not device memory")
    args = ap.parse_args()
    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    art = load_artifact(args.artifact)
    rng = np.random.default_rng(0)
    vocab = art.model.vocab_size
    prompts = [rng.integers(10, min(vocab, 50000), n) for n in (48, 17)]
    tested = OnnxRuntimeBackend(art, args.providers.split(","),
                                cache_on_device=False if args.cache_on_host else None)
    got = run(tested, prompts, args.steps, None)
    forced = [g.argmax(-1) for g in got[:-1]]
    ref = run(OnnxRuntimeBackend(art, args.against.split(",")), prompts, args.steps, forced)
    prefill_diff = float(np.abs(got[0] - ref[0]).max())
    decode_diff = max(float(np.abs(g - r).max()) for g, r in zip(got[1:], ref[1:]))
    agree = np.mean([(g.argmax(-1) == r.argmax(-1)).mean() for g, r in zip(got, ref)])
    span = float(ref[0].max() - ref[0].min())
    print(f"{args.artifact}: {tested.device} (cache in "
          f"{'OrtValues' if tested.cache.memory else 'numpy buffers'}) "
          f"against {args.against}: prefill max |diff| {prefill_diff:.2e}, decode max |diff| "
          f"{decode_diff:.2e} "
          f"over {args.steps} steps (logits span {span:.2f}), argmax agreement {agree:.0%}")


if __name__ == "__main__":
    main()
