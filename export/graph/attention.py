"""Attention over a KV cache from plain ONNX ops, for the TensorRT target (`--target tensorrt`).

TensorRT's ONNX parser has no GroupQueryAttention, and its own Attention (10.14 on) takes no
past cache; 10.3 has neither. So the cache is an explicit graph input and output, written and
read with ops every TensorRT 10.x parses:

- The cache keeps the runtime's layout and protocol (graph inputs `past_*` of fixed capacity,
  outputs `present_*` bound to the same memory, `seqlens_k` = total length - 1 per sequence),
  so the same ONNX Runtime backend runs both targets. The new keys are written at their
  positions with ScatterElements (no reduction), which ONNX Runtime's CPU kernel does in place
  when its input and output are the same buffer.
- Attention is MatMul / Softmax over the first `total_sequence_length` cached positions, masked
  causally by each query's own position: right-padded rows and stale cache rows past a
  sequence's length are never attended.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from .onnx_ops import Graph

# Added to the scores of masked positions: large enough to vanish in softmax, finite so that
# fp16 engines (trt_fp16_enable) do not turn a fully masked padding row into NaN.
MASKED = -30000.0


def token_positions(g: Graph) -> str:
    """(batch, sequence) int64: each new token's position in its sequence. A call's tokens end
    at the sequence's total length (seqlens_k + 1); a right-padded prompt starts at 0."""
    if "/attn/positions" in g.named:
        return g.named["/attn/positions"]
    p = "/model/attn_positions"
    seq = g.node(
        "Gather",
        [g.node("Shape", ["input_ids"], f"{p}/Shape"), g.const(f"{p}/axis1", 1)],
        f"{p}/Sequence",
        axis=0,
    )
    ends = g.node("Cast", ["seqlens_k"], f"{p}/Cast", to=TensorProto.INT64)
    starts = g.node(
        "Max",
        [
            g.node(
                "Sub",
                [g.node("Add", [ends, g.const(f"{p}/one", 1)], f"{p}/Total"), seq],
                f"{p}/Start",
            ),
            g.const(f"{p}/zero", 0),
        ],
        f"{p}/StartClamped",
    )
    steps = g.node(
        "Range", [g.const(f"{p}/range_start", 0), seq, g.const(f"{p}/range_step", 1)], f"{p}/Range"
    )
    positions = g.node(
        "Add",
        [
            g.node("Unsqueeze", [starts, g.const(f"{p}/ax1", [1])], f"{p}/StartCol"),
            g.node("Unsqueeze", [steps, g.const(f"{p}/ax0", [0])], f"{p}/StepRow"),
        ],
        f"{p}/Positions",
    )
    g.named["/attn/positions"] = positions
    return positions


def _mask(g: Graph) -> tuple[str, str]:
    """(total length as a 1-D int64 slice end, the additive mask (batch, 1, 1, sequence, total))."""
    if "/attn/mask" in g.named:
        return g.named["/attn/total"], g.named["/attn/mask"]
    p = "/model/attn_mask"
    total = g.node("Cast", ["total_sequence_length"], f"{p}/Cast", to=TensorProto.INT64)
    keys = g.node(
        "Range", [g.const(f"{p}/range_start", 0), total, g.const(f"{p}/range_step", 1)], f"{p}/Keys"
    )
    positions = g.node(
        "Unsqueeze", [token_positions(g), g.const(f"{p}/ax_last", [-1])], f"{p}/Queries"
    )
    allowed = g.node("LessOrEqual", [keys, positions], f"{p}/Causal")  # (batch, sequence, total)
    additive = g.node(
        "Where",
        [
            allowed,
            g.const(f"{p}/open", 0.0, np.float32),
            g.const(f"{p}/closed", MASKED, np.float32),
        ],
        f"{p}/Additive",
    )
    g.named["/attn/mask"] = g.node(
        "Unsqueeze", [additive, g.const(f"{p}/ax12", [1, 2])], f"{p}/Mask"
    )
    g.named["/attn/total"] = g.node("Unsqueeze", [total, g.const(f"{p}/ax0", [0])], f"{p}/TotalEnd")
    return g.named["/attn/total"], g.named["/attn/mask"]


def write_cache(g: Graph, past: str, new: str, present: str, name: str) -> str:
    """`present` (the graph output): `past` (batch, heads, capacity, dim) with `new` (batch,
    heads, sequence, dim) written at the tokens' positions."""
    idx = g.node(
        "Unsqueeze", [token_positions(g), g.const(f"{name}/ax13", [1, 3])], f"{name}/Positions"
    )
    idx = g.node("Expand", [idx, g.node("Shape", [new], f"{name}/Shape")], f"{name}/Indices")
    g.node("ScatterElements", [past, idx, new], f"{name}/Write", axis=2)
    g.nodes[-1].output[0] = present
    return present


def _used(g: Graph, cache: str, name: str) -> str:
    """The cache's first total_sequence_length positions, with an axis for the query group:
    (batch, kv_heads, 1, total, dim)."""
    end, _ = _mask(g)
    used = g.node(
        "Slice",
        [cache, g.const(f"{name}/start", [0]), end, g.const(f"{name}/axis", [2])],
        f"{name}/Used",
    )
    return g.node("Unsqueeze", [used, g.const(f"{name}/ax2", [2])], f"{name}/PerGroup")


def attend(
    g: Graph,
    q: str,
    keys: str,
    scale: float,
    name: str,
    values: str | None = None,
    value_dim: int | None = None,
) -> str:
    """softmax(q K^T * scale + mask) V over the caches' first total_sequence_length positions.
    q: (batch, kv_heads, group, sequence, dim), the query heads that share a cached head
    together; keys, values: caches (batch, kv_heads, capacity, dim). Without `values` the key
    cache serves as both, V being its first `value_dim` channels (MLA's latent).
    Returns (batch, kv_heads, group, sequence, value dim)."""
    _, mask = _mask(g)
    k = _used(g, keys, f"{name}/keys")
    scores = g.node(
        "MatMul",
        [q, g.node("Transpose", [k], f"{name}/KeysT", perm=[0, 1, 2, 4, 3])],
        f"{name}/Scores",
    )
    scores = g.node(
        "Add",
        [
            g.node("Mul", [scores, g.const(f"{name}/scale", scale, np.float32)], f"{name}/Scaled"),
            mask,
        ],
        f"{name}/Masked",
    )
    probs = g.node("Softmax", [scores], f"{name}/Softmax", axis=-1)
    if values is not None:
        v = _used(g, values, f"{name}/values")
    elif value_dim is not None:
        v = g.node(
            "Slice",
            [
                k,
                g.const(f"{name}/v_start", [0]),
                g.const(f"{name}/v_end", [value_dim]),
                g.const(f"{name}/v_axis", [4]),
            ],
            f"{name}/Values",
        )
    else:
        v = k
    return g.node("MatMul", [probs, v], f"{name}/Context")
