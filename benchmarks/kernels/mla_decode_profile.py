"""A decode step of the native MLA + MoE backend, phase by phase, beside ONNX Runtime on the same
artifact: DeepSeek-V2-Lite's widths cut to a few layers (benchmarks/random_checkpoint.py, random
weights, int8 export), batch 1 and 16 after a 128-token prompt, prefill of 128 / 512 tokens.

    python -m benchmarks.kernels.mla_decode_profile --layers 3 --threads 2 \
        --work /tmp/mla-profile --machine epyc-zen4-2t

Prints a markdown table and writes benchmarks/results/mla-profile-<machine>.md. The phases are
mla_moe.c's own timers (em_profile): attention projections (q, kv_a, norms, rope, W_UK),
attention over the latent (and W_UV), o_proj, routing (router, top-k, grouping by expert),
experts (routed + shared: gate/up/SiLU, quantization, down, the weighted sum), dense MLP layers,
LM head.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks import RESULTS
from benchmarks.peers.moe_compare import CONFIGS, prepare
from edgeds.artifact import load_artifact
from edgeds.backends.native_mla import NativeMlaBackend
from edgeds.backends.onnxruntime import OnnxRuntimeBackend

PHASES = (
    "attention projections",
    "attention",
    "o_proj",
    "routing",
    "experts",
    "dense MLP",
    "LM head",
    "rest",
)
STEPS = 16


def decode_times(backend, batch: int, prompt: int, steps: int, rng) -> tuple[float, float]:
    """Seconds of one prefill (batch prompts of `prompt` tokens) and of one decode step (median)."""
    vocab = backend.vocab_size
    backend.start(batch, prompt + steps + 8)
    t = time.perf_counter()
    backend.prefill(list(range(batch)), [rng.integers(0, vocab, prompt) for _ in range(batch)])
    prefill = time.perf_counter() - t
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        backend.decode(rng.integers(0, vocab, batch).astype(np.int64))
        times.append(time.perf_counter() - t)
    return prefill, float(np.median(times))


def profile(backend, batch: int, prompt: int, steps: int, rng) -> np.ndarray:
    """Per-phase seconds of one native decode step (mean over `steps`)."""
    backend.start(batch, prompt + steps + 8)
    backend.prefill(
        list(range(batch)), [rng.integers(0, backend.vocab_size, prompt) for _ in range(batch)]
    )
    backend.profile(reset=True)
    for _ in range(steps):
        backend.decode(rng.integers(0, backend.vocab_size, batch).astype(np.int64))
    return backend.profile(reset=True) / steps


def prefill_rates(backend, lengths: list[int], rounds: int, rng) -> list[str]:
    """Batch-1 prefill of a prompt of each length into an empty cache, `rounds` times (lengths
    interleaved, so a burst of load elsewhere hits every length alike): per length its wall
    tok/s and process CPU seconds per round, and the best wall tok/s against the first
    length's (issue 23's prefill ratios: 4,096 >= 0.75x of 512, 16,384 >= 0.5x)."""
    backend.start(1, max(lengths) + 8)
    backend.prefill([0], [rng.integers(0, backend.vocab_size, 64)])  # warm-up
    wall = {n: [] for n in lengths}
    cpu = {n: [] for n in lengths}
    for _ in range(rounds):
        for n in lengths:
            prompt = rng.integers(0, backend.vocab_size, n)
            t, c = time.perf_counter(), time.process_time()
            backend.prefill([0], [prompt])
            wall[n].append(n / (time.perf_counter() - t))
            cpu[n].append(time.process_time() - c)
            print(f"prefill {n}: {wall[n][-1]:.0f} tok/s, {cpu[n][-1]:.2f} CPU s", flush=True)
    lines = [
        "| prefill | tok/s per round (wall) | CPU s per round | best / first length's best |",
        "|---|---|---|---|",
    ]
    for n in lengths:
        lines.append(
            f"| {n} | {', '.join(f'{v:.0f}' for v in wall[n])} | "
            f"{', '.join(f'{v:.2f}' for v in cpu[n])} | "
            f"{max(wall[n]) / max(wall[lengths[0]]):.2f}x |"
        )
    return lines


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default="/tmp/mla-profile")
    p.add_argument("--machine", default="local")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--no-ort", action="store_true")
    p.add_argument("--prompts", default="128", help="the phase table's prompt lengths (depths)")
    p.add_argument("--phases-only", action="store_true", help="the phase table alone")
    p.add_argument(
        "--prefills",
        default="",
        help="prompt lengths (e.g. 512,4096,16384): batch-1 prefill tok/s alone",
    )
    p.add_argument("--rounds", type=int, default=2, help="--prefills' rounds")
    p.add_argument("--decode-kernels", default="auto",
                   help="the phase table once per decode attention kernel (NativeMlaBackend's "
                        "decode_kernel: auto, fma, bf16, tiles), e.g. bf16,fma")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    paths = prepare(
        work,
        CONFIGS / "deepseek-v2-lite.json",
        args.layers,
        ["edgeds-native"],
        None,
        work / "none",
        args.threads,
    )
    art = load_artifact(paths["edgeds-native"], verify=False)
    rng = np.random.default_rng(0)
    batches = [int(b) for b in args.batches.split(",")]
    lines = [
        (
            f"V2-Lite widths, {args.layers} layers, {args.threads} threads, int8 export; decode "
            f"after a 128-token prompt (median of {STEPS} steps)"
        ),
        "",
        "| backend | batch | decode step ms | tok/s | prefill 128 tok/s |",
        "|---|---|---|---|---|",
    ]
    if args.phases_only:
        lines = [f"V2-Lite widths, {args.layers} layers, {args.threads} threads, int8 export"]
    t = time.perf_counter()
    native = NativeMlaBackend(art, args.threads)
    load_native = time.perf_counter() - t
    if args.prefills:
        lengths = [int(n) for n in args.prefills.split(",")]
        title = f"V2-Lite widths, {args.layers} layers, {args.threads} threads, int8, batch 1"
        lines = [title, "", *prefill_rates(native, lengths, args.rounds, rng)]
        print("\n".join(lines))
        out = RESULTS / f"mla-profile-{args.machine}-prefill.md"
        out.write_text("\n".join(lines) + "\n")
        return
    runs = [("native", native)]
    if not args.no_ort:
        runs.append(
            ("onnxruntime", OnnxRuntimeBackend(art, ["CPUExecutionProvider"], args.threads))
        )
    for name, backend in [] if args.phases_only else runs:
        decode_times(backend, 1, 16, 2, rng)  # warm-up
        for batch in batches:
            prefill, step = decode_times(backend, batch, 128, STEPS, rng)
            lines.append(
                f"| {name} | {batch} | {step * 1e3:.1f} | {batch / step:.1f} | "
                f"{batch * 128 / prefill:.0f} |"
            )
            print(lines[-1], flush=True)
    lines += [
        "",
        f"native load {load_native:.2f} s",
        "",
    ]
    cols = [(b, int(n)) for b in batches for n in args.prompts.split(",")]
    for kernel in args.decode_kernels.split(","):
        native = NativeMlaBackend(art, args.threads, decode_kernel=kernel)
        lines += [
            "",
            f"decode attention kernel {native.decode_kernel} (asked: {kernel})",
            "",
            "| native phase, ms per decode step | "
            + " | ".join(f"batch {b} after {n}" for b, n in cols)
            + " |",
            "|---|" + "---|" * len(cols),
        ]
        table = np.stack([profile(native, b, n, STEPS, rng) for b, n in cols], 1) * 1e3
        for phase, row in zip(PHASES, table):
            lines.append(f"| {phase} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
        lines.append("| total | " + " | ".join(f"{v:.2f}" for v in table.sum(0)) + " |")
        print("\n".join(lines[-12:]), flush=True)
    print("\n".join(lines))
    out = RESULTS / f"mla-profile-{args.machine}.md"
    if args.phases_only:
        out = out.with_name(f"mla-profile-{args.machine}-phases.md")
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
