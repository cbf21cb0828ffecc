"""How much of the machine a model takes: its weights, and the KV cache per token and per slot.

Backends whose cache is one array of slots x capacity (ONNX Runtime, OpenVINO, native MLA) size
it to the longest request taken, so a batch job's worst case is every slot holding a full
context: `largest_batch` is that worst case's limit, and a profile's batch size is capped by it
at load time, so that an unattended job cannot grow into the OOM killer. The native dense
backend's cache grows in blocks as sequences grow: there the generate loop admits sequences while
their prompt + max_new_tokens fit in `kv_budget` (edgeds/generate.py, `kv_tokens`).
"""

from __future__ import annotations

from .manifest import Manifest

USABLE = 0.9  # of the machine's memory: the rest is the OS, the runtime and activations


def weight_bytes(manifest: Manifest, fmt: str, small_batch: bool = False) -> int:
    """The graph's files; with `small_batch`, its small-batch graph's too (loaded beside it)."""
    graph = manifest.graph(fmt)
    files = [graph.file, graph.data_file]
    if small_batch and (small := graph.small_batch):
        files += [small.file, small.data_file]
    return sum(manifest.file_size(f) for f in files)


def decode_read_bytes(manifest: Manifest, fmt: str) -> int | None:
    """Weight bytes a dense model's decode step reads: all but the embedding table, of which a
    step gathers one row per sequence. None for MoE models, whose steps read only the experts
    their tokens are routed to."""
    m = manifest.model
    if m.has_experts:
        return None
    return weight_bytes(manifest, fmt) - manifest.quantization.embedding_bytes(
        m.vocab_size, m.hidden_size
    )


def kv_budget(memory_bytes: int, weights: int) -> float:
    """Bytes left for the KV cache once the weights are in (negative: not even those fit)."""
    return memory_bytes * USABLE - weights


def largest_batch(memory_bytes: int, weights: int, per_token: int, context: int) -> int:
    """Slots that fit when each holds `context` tokens (0: not even one)."""
    return max(int(kv_budget(memory_bytes, weights) // (per_token * context)), 0)


def gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def weights_do_not_fit(memory_bytes: int, weights: int, per_token: int, tokens: int,
                       scheme: str = "") -> str | None:
    """Why these weights cannot run here at all (their bytes alone exceed what the machine can
    give them), with the memory they would need for one sequence of `tokens`; None where they
    fit. Loading would otherwise read until the OOM killer ends the process. `scheme`: the
    artifact's weights, for the advice."""
    if kv_budget(memory_bytes, weights) > 0:
        return None
    need = (weights + per_token * tokens) / USABLE
    return (f"the weights alone are {gib(weights)}, more than the {gib(memory_bytes * USABLE)} "
            f"this machine's {gib(memory_bytes)} leaves them ({USABLE:.0%}); one {tokens:,}-token "
            f"sequence needs a machine of at least {gib(need)}"
            + (" (or an export of fewer bits: --weights int4)" if scheme in ("int8", "int8-wo",
                                                                          "fp16", "fp32") else ""))
