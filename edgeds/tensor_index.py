"""The tensor index (`tensors.json`) the native backends read weights by, checked before any
byte is handed to C: every tensor inside its file, of a known dtype, with the shape the model's
widths give it (the C loops read exactly that many bytes, so any other shape would be a read
past the end of a buffer). Errors are one line naming the index and the tensor.

The records are the exporter's (export/tensors.py: Stored, Linear, GatedMlp; dense layers in
export/dense/tensors.py, MLA layers in export/mla/tensors.py); a checked index is returned as
the JSON it was, for the backends to read.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .errors import ArtifactError
from .manifest import GroupedAttention, LatentAttention, Model, read_json

DTYPES = ("int8", "uint8", "float32", "float16")
_STORED = {"offset", "dtype", "shape", "file"}


class _Check:
    def __init__(self, index: str, data_bytes: int):
        self.index, self.data_bytes = index, data_bytes

    def fail(self, where: str, message: str):
        raise ArtifactError(f"{self.index}: {where} {message}")

    def obj(self, value, where: str, keys: set[str], optional: set[str] = frozenset()) -> dict:
        if not isinstance(value, dict) or not keys <= set(value) <= keys | optional:
            self.fail(where, f"is not a record with fields {', '.join(sorted(keys))}")
        return value

    def stored(
        self, value, where: str, shape: tuple[int, ...] | None = None, dtypes=DTYPES
    ) -> dict:
        """A tensor inside its file, of one of `dtypes`, of `shape` where given."""
        s = self.obj(value, where, _STORED)
        dims = s["shape"]
        if not isinstance(dims, list) or not all(type(d) is int and d >= 0 for d in dims):
            self.fail(where, "has a shape that is not a list of sizes")
        if s["dtype"] not in dtypes:
            self.fail(where, f"is {s['dtype']!r}, not {' or '.join(dtypes)}")
        if shape is not None and tuple(dims) != shape:
            self.fail(where, f"has shape {dims}, not {list(shape)} as the manifest's widths say")
        if s["file"] is not None:
            self.fail(
                where, "lies in another file (the native decoders read the graph's weight file)"
            )
        offset, nbytes = s["offset"], math.prod(dims) * np.dtype(s["dtype"]).itemsize
        if type(offset) is not int or offset < 0 or offset + nbytes > self.data_bytes:
            self.fail(where, f"of {nbytes} bytes at offset {offset!r} is not inside its file")
        return s

    def linear(self, value, where: str, n: int, k: int) -> dict:
        """y = x W^T: int8 (K, N) with N scales (what the native GEMM packs), or already in the
        GEMM's layout, "n16k4" (export/tensors.py), with N column sums; or float (K, N)."""
        lin = self.obj(value, where, {"n", "k", "weight", "scales", "bits", "block_size", "bias"},
                       {"layout", "col_sums"})
        if (lin["n"], lin["k"]) != (n, k):
            self.fail(where, f"is {lin['k']} x {lin['n']}, not {k} x {n}")
        layout, sums = lin.setdefault("layout", "kn"), lin.setdefault("col_sums", None)
        if layout not in ("kn", "n16k4") or (layout == "n16k4") != (sums is not None):
            self.fail(where, f"has layout {layout!r}, not kn, or n16k4 with column sums")
        if lin["bits"] == 8 and lin["block_size"] == 0:
            if layout == "kn":
                self.stored(lin["weight"], f"{where}.weight", (k, n), ("int8",))
            elif n % 16 or k % 4:
                self.fail(where, f"is {k} x {n}: no n16k4 layout (16 columns x 4 rows a block)")
            else:
                self.stored(lin["weight"], f"{where}.weight", (n // 16, k // 4, 16, 4), ("int8",))
                self.stored(lin["col_sums"], f"{where}.col_sums", (n,), ("int32",))
            self.stored(lin["scales"], f"{where}.scales", (n,), ("float32",))
        elif lin["bits"] is None and layout == "kn":
            self.stored(lin["weight"], f"{where}.weight", (k, n), ("float32", "float16"))
        elif lin["bits"] is None:
            self.fail(where, "is a float layer in the n16k4 layout, which is int8's only")
        else:
            self.fail(
                where,
                f"is a {lin['bits']}-bit blockwise layer, which the native decoders do not run",
            )
        if lin["bias"] is not None:
            self.stored(lin["bias"], f"{where}.bias", (n,), ("float32",))
        return lin

    def mlp(self, value, where: str, hidden: int, inner: int) -> None:
        m = self.obj(value, where, {"gate", "up", "down"})
        self.linear(m["gate"], f"{where}.gate", inner, hidden)
        self.linear(m["up"], f"{where}.up", inner, hidden)
        self.linear(m["down"], f"{where}.down", hidden, inner)

    def vector(self, value, where: str, n: int) -> None:
        self.stored(value, where, (n,), ("float32",))


def check(index: dict, model: Model, data_bytes: int, name: str = "tensors.json") -> dict:
    """`index` (tensors.json's JSON) checked against `model` and the weight file's size."""
    c, m, h = _Check(name, data_bytes), model, model.hidden_size
    top = c.obj(index, "the index", {"embed", "layers", "final_norm", "lm_head", "cos", "sin"})
    embed = c.obj(top["embed"], "embed", {"table", "scales"})
    table = c.stored(
        embed["table"], "embed.table", (m.vocab_size, h), ("int8", "float32", "float16")
    )
    if (table["dtype"] == "int8") != (embed["scales"] is not None):
        c.fail("embed", "has row scales if and only if its table is int8")
    if embed["scales"] is not None:
        c.stored(embed["scales"], "embed.scales", (m.vocab_size, 1), ("float32",))
    c.vector(top["final_norm"], "final_norm", h)
    c.linear(top["lm_head"], "lm_head", m.vocab_size, h)
    a = m.attention
    rot = a.head_dim if isinstance(a, GroupedAttention) else a.qk_rope_head_dim
    for key in ("cos", "sin"):
        table = c.stored(top[key], key, dtypes=("float32",))
        if (
            len(table["shape"]) != 2
            or table["shape"][1] != rot // 2
            or table["shape"][0] < m.context_length
        ):
            c.fail(
                key,
                f"has shape {table['shape']}, not [context_length {m.context_length} or more, "
                f"{rot // 2}]",
            )
    layers = top["layers"]
    if not isinstance(layers, list) or len(layers) != m.num_layers:
        c.fail(
            "layers",
            f"are {len(layers) if isinstance(layers, list) else 'not'} a list of "
            f"{m.num_layers} layers (the manifest's num_layers)",
        )
    for i, layer in enumerate(layers):
        if isinstance(a, GroupedAttention):
            _dense_layer(c, layer, f"layers[{i}]", m, a)
        else:
            _mla_layer(c, layer, f"layers[{i}]", m, a, i)
    return index


def _dense_layer(c: _Check, ly, where: str, m: Model, a: GroupedAttention) -> None:
    ly = c.obj(ly, where, {"input_norm", "qkv", "o", "post_norm", "mlp"})
    h = m.hidden_size
    c.vector(ly["input_norm"], f"{where}.input_norm", h)
    c.vector(ly["post_norm"], f"{where}.post_norm", h)
    c.linear(ly["qkv"], f"{where}.qkv", (m.num_heads + 2 * a.num_kv_heads) * a.head_dim, h)
    c.linear(ly["o"], f"{where}.o", h, m.num_heads * a.head_dim)
    c.mlp(ly["mlp"], f"{where}.mlp", h, m.intermediate_size)


def _mla_layer(c: _Check, ly, where: str, m: Model, a: LatentAttention, i: int) -> None:
    ly = c.obj(
        ly,
        where,
        {
            "input_norm",
            "q_a",
            "q_a_norm",
            "q",
            "kv_a",
            "kv_a_norm",
            "w_uk",
            "w_uv",
            "o",
            "post_norm",
            "mlp",
            "moe",
        },
    )
    h, heads, e = m.hidden_size, m.num_heads, m.experts
    c.vector(ly["input_norm"], f"{where}.input_norm", h)
    c.vector(ly["post_norm"], f"{where}.post_norm", h)
    if a.q_lora_rank is None:
        if ly["q_a"] is not None or ly["q_a_norm"] is not None:
            c.fail(where, "has q_a, but the manifest's q_lora_rank is null")
        c.linear(ly["q"], f"{where}.q", heads * (a.qk_nope_head_dim + a.qk_rope_head_dim), h)
    else:
        c.linear(ly["q_a"], f"{where}.q_a", a.q_lora_rank, h)
        c.vector(ly["q_a_norm"], f"{where}.q_a_norm", a.q_lora_rank)
        c.linear(
            ly["q"], f"{where}.q", heads * (a.qk_nope_head_dim + a.qk_rope_head_dim), a.q_lora_rank
        )
    c.linear(ly["kv_a"], f"{where}.kv_a", a.latent_dim, h)
    c.vector(ly["kv_a_norm"], f"{where}.kv_a_norm", a.kv_lora_rank)
    for key, rows, cols in (
        ("w_uk", a.qk_nope_head_dim, a.kv_lora_rank),
        ("w_uv", a.kv_lora_rank, a.v_head_dim),
    ):
        p = c.obj(ly[key], f"{where}.{key}", {"weight", "scales"})
        c.stored(p["weight"], f"{where}.{key}.weight", (heads, rows, cols), ("int8",))
        c.stored(p["scales"], f"{where}.{key}.scales", (heads, 1, cols), ("float32",))
    c.linear(ly["o"], f"{where}.o", h, heads * a.v_head_dim)
    moe_layer = e is not None and i in e.layers
    if (ly["moe"] is not None) != moe_layer or (ly["mlp"] is not None) == moe_layer:
        c.fail(
            where,
            f"is {'not ' if ly['moe'] is None else ''}an MoE layer, unlike moe_layers says",
        )
    if not moe_layer:
        c.mlp(ly["mlp"], f"{where}.mlp", h, m.intermediate_size)
        return
    moe = c.obj(ly["moe"], f"{where}.moe", {"router", "router_bias", "experts", "shared"})
    c.stored(moe["router"], f"{where}.moe.router", (h, e.n_routed_experts), ("float32",))
    if moe["router_bias"] is not None:
        c.vector(moe["router_bias"], f"{where}.moe.router_bias", e.n_routed_experts)
    experts = moe["experts"]
    if not isinstance(experts, list) or len(experts) != e.n_routed_experts:
        c.fail(f"{where}.moe.experts", f"are not a list of n_routed_experts {e.n_routed_experts}")
    for j, expert in enumerate(experts):
        c.mlp(expert, f"{where}.moe.experts[{j}]", h, e.moe_intermediate_size)
    if (moe["shared"] is not None) != bool(e.n_shared_experts):
        c.fail(f"{where}.moe.shared", f"does not match n_shared_experts {e.n_shared_experts}")
    if (
        shared := moe["shared"]
    ) is not None:  # its width is its own (all shared experts as one MLP)
        gate = shared.get("gate") if isinstance(shared, dict) else None
        inner = gate.get("n") if isinstance(gate, dict) else None
        if type(inner) is not int or not 0 < inner <= 1 << 20:
            c.fail(f"{where}.moe.shared", "has no width")
        c.mlp(shared, f"{where}.moe.shared", h, inner)


def rope_rows(artifact, graph) -> int | None:
    """Positions the graph's rotary tables cover, as its tensor index says (None: no index),
    checked against the manifest's context_length (Model.check_rope_rows)."""
    if not graph.tensors:
        return None
    index = read_json(artifact.path(graph.tensors), graph.tensors)
    cos = index.get("cos") if isinstance(index, dict) else None
    shape = cos.get("shape") if isinstance(cos, dict) else None
    if not isinstance(shape, list) or len(shape) != 2 or type(shape[0]) is not int:
        raise ArtifactError(f"{graph.tensors}: cos has no [positions, width] shape")
    artifact.model.check_rope_rows(shape[0], f"{artifact.root}: {graph.file}")
    return shape[0]


def load(artifact, graph) -> dict:
    """The checked index of an artifact's graph (manifest.Graph with a `tensors` entry)."""
    path: Path = artifact.path(graph.tensors)
    index = read_json(path, graph.tensors)
    return check(
        index, artifact.model, artifact.path(graph.data_file).stat().st_size, graph.tensors
    )
