"""Writes DeepSeek-V2/V3 (MLA + MoE) as an ONNX graph for ONNX Runtime (the linear layers,
norms, MLPs and LM head: graph/onnx_ops.py).

- The KV cache is MLA's latent: kv_lora_rank + qk_rope_head_dim values per token per layer,
  one buffer per layer. Attention is absorbed: W_UK is folded into the query, so the cached
  latent serves as key and value of a one-KV-head GroupQueryAttention (the same buffer bound
  to past/present key and value, written in place), and W_UV turns the attended latent into
  per-head values. No step re-expands the cache into per-head K/V.
- Routing is computed exactly as the reference (softmax greedy, group-limited, or sigmoid with
  the correction bias and groups), and each routed expert runs only on the tokens routed to it:
  an expert nobody chose gets zero rows, so its weights are never read.

The TensorRT target (`target="tensorrt"`) keeps the same inputs, outputs and cache protocol;
attention runs from plain ops over the latent cache (graph/attention.py) and the routed experts'
outputs are added back with ScatterElements (TensorRT takes no ScatterND reduction).

The baselines this design is measured against (a per-head K/V cache, every expert on every
token) are subclasses of `MlaGraph` in benchmarks/, not options here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..graph import attention as plain_attention
from ..graph.onnx_ops import (
    MS,
    Graph,
    decoder_model,
    embedding,
    gated_mlp,
    linear,
    linear_op,
    logits,
    norm,
    to_float,
)
from ..tensors import GatedMlp
from .spec import MlaSpec, latent_cache_sizes
from .tensors import MlaLayer, MlaTensors, Moe, PerHead

F = TensorProto.FLOAT


class MlaGraph:
    """Builds the decoder graph of one MLA model, a method per piece."""

    name = "edgeds_mla_decoder"

    def __init__(self, spec: MlaSpec, data_file: str, target: str = "onnxruntime"):
        self.g, self.s = Graph(data_file, target), spec
        self.shape_cache: dict[tuple, str] = {}

    def shape(self, dims) -> str:
        key = tuple(dims)
        if key not in self.shape_cache:
            name = f"/model/shapes/{'_'.join(map(str, key))}".replace("-", "m")
            self.shape_cache[key] = self.g.const(name, list(dims))
        return self.shape_cache[key]

    def norm(self, x: str, weight, name: str) -> str:
        return norm(self.g, x, f"{name}.weight", weight, name, self.s.rms_norm_eps)

    def per_head(self, x: str, p: PerHead, name: str) -> str:
        """x (H, M, rows) @ W (H, rows, cols).

        On ONNX Runtime a row of zeros goes under x for the product and is cut off after it: a
        batched MatMul of one row (M = 1: a batch-1 decode step) takes another kernel than two
        rows or more, which rounds differently (2e-5 on the tiny model's heads), so greedy
        tokens changed with the batch size. Rows from two on come out bit for bit the same
        whatever M is (tests/test_batch_invariance.py)."""
        g, weight = self.g, self.weight(p, name)
        if g.tensorrt:
            return g.node("MatMul", [x, weight], f"{name}/MatMul")
        heads, rows = p.weight.shape[0], p.weight.shape[1]
        zeros = g.const(f"{name}/zero_row", np.zeros((heads, 1, rows), np.float32), np.float32)
        padded = g.node("Concat", [x, zeros], f"{name}/PadRow", axis=1)
        y = g.node("MatMul", [padded, weight], f"{name}/MatMul")
        return g.node("Slice", [y, g.shared("/pad_row/start", [0], np.int64),
                                g.shared("/pad_row/end", [-1], np.int64),
                                g.shared("/pad_row/axis", [1], np.int64)], f"{name}/CutRow")

    def weight(self, p: PerHead, name: str) -> str:
        w = self.g.external(f"{name}.weight", p.weight)
        if p.scales is not None:
            return self.g.node(
                "Mul",
                [to_float(self.g, w, name), self.g.external(f"{name}.scales", p.scales)],
                f"{name}/Dequantize",
            )
        if p.weight.dtype != "float32":
            return self.g.node("Cast", [w], f"{name}/Cast", to=F)
        return w

    def rope(self, x: str, cos: str, sin: str, name: str) -> str:
        g, half = self.g, self.s.qk_rope_head_dim // 2
        x1, x2 = g.node("Split", [x, g.const(f"{name}/halves", [half, half])], f"{name}/Split",
                        outputs=2, axis=-1)
        rotated = g.node(
            "Concat", [g.node("Neg", [x2], f"{name}/Neg"), x1], f"{name}/Concat", axis=-1
        )
        return g.node("Add", [g.node("Mul", [x, cos], f"{name}/MulCos"),
                              g.node("Mul", [rotated, sin], f"{name}/MulSin")], f"{name}/Add")

    def query(self, h: str, layer: MlaLayer, i: int, cos_q: str, sin_q: str) -> tuple[str, str]:
        """Layer i's query per head, (B, S, H, nope) and its rotated (B, S, H, rope) part."""
        g, s = self.g, self.s
        p = f"/model/layers.{i}/attn"
        dn, dr = s.qk_nope_head_dim, s.qk_rope_head_dim
        q_in = h
        if layer.q_a is not None:
            q_in = self.norm(linear(g, h, layer.q_a, f"{p}/q_a_proj", "tokens"), layer.q_a_norm,
                             f"{p}/q_a_layernorm")
        q = g.node("Reshape", [linear(g, q_in, layer.q, f"{p}/q_proj", "tokens"),
                               self.shape([0, 0, s.num_heads, dn + dr])], f"{p}/q/Reshape")
        q_nope, q_rope = g.node("Split", [q, g.const(f"{p}/q/split", [dn, dr])], f"{p}/q/Split",
                                outputs=2, axis=-1)
        return q_nope, self.rope(q_rope, cos_q, sin_q, f"{p}/q_rope")

    def latent(self, h: str, layer: MlaLayer, i: int) -> tuple[str, str]:
        """Layer i's normed latent c (B, S, kv_lora_rank) and its unrotated rope key (B, S,
        rope)."""
        g, s = self.g, self.s
        p = f"/model/layers.{i}/attn"
        kv = linear(g, h, layer.kv_a, f"{p}/kv_a_proj", "tokens")
        c, k_rope = g.node(
            "Split",
            [kv, g.const(f"{p}/kv/split", [s.kv_lora_rank, s.qk_rope_head_dim])],
            f"{p}/kv/Split",
            outputs=2,
            axis=-1,
        )
        return self.norm(c, layer.kv_a_norm, f"{p}/kv_a_layernorm"), k_rope

    def attention(self, h: str, layer: MlaLayer, i: int, cos_q: str, sin_q: str, cos_k: str,
                  sin_k: str) -> str:
        g, s = self.g, self.s
        p = f"/model/layers.{i}/attn"
        heads, dn, dr, dv, lat = (
            s.num_heads,
            s.qk_nope_head_dim,
            s.qk_rope_head_dim,
            s.v_head_dim,
            s.kv_lora_rank,
        )
        q_nope, q_rope = self.query(h, layer, i, cos_q, sin_q)
        # Absorb W_UK: (H, B*S, nope) @ (H, nope, L) -> the query in latent space.
        qn = g.node("Reshape", [g.node("Transpose", [q_nope], f"{p}/q_nope/T", perm=[2, 0, 1, 3]),
                                self.shape([heads, -1, dn])], f"{p}/q_nope/Reshape")
        q_lat = self.per_head(qn, layer.w_uk, f"{p}/w_uk")
        batch_seq = g.node("Shape", [h], f"{p}/Shape", end=2)
        q_lat = g.node(
            "Reshape",
            [
                q_lat,
                g.node(
                    "Concat",
                    [self.shape([heads]), batch_seq, self.shape([lat])],
                    f"{p}/q_lat/shape",
                    axis=0,
                ),
            ],
            f"{p}/q_lat/Reshape",
        )
        q_lat = g.node("Transpose", [q_lat], f"{p}/q_lat/T", perm=[1, 2, 0, 3])  # (B, S, H, L)
        query = g.node("Reshape", [g.node("Concat", [q_lat, q_rope], f"{p}/query/Concat", axis=-1),
                                   self.shape([0, 0, heads * (lat + dr)])], f"{p}/query/Reshape")
        c, k_rope = self.latent(h, layer, i)
        key = g.node(
            "Concat",
            [c, self.rope(k_rope, cos_k, sin_k, f"{p}/k_rope")],
            f"{p}/key/Concat",
            axis=-1,
        )
        if g.tensorrt:
            attn = self.plain_attention(query, key, i)
        else:
            attn, _, _ = g.node(
                "GroupQueryAttention",
                [
                    query,
                    key,
                    key,
                    f"past_latent.{i}",
                    f"past_latent.{i}",
                    "seqlens_k",
                    "total_sequence_length",
                ],
                f"{p}/GroupQueryAttention",
                outputs=3,
                domain=MS,
                num_heads=heads,
                kv_num_heads=1,
                scale=float(s.softmax_scale),
                do_rotary=0,
            )
            g.nodes[-1].output[1:] = [f"present_latent.{i}", f"present_latent_alias.{i}"]
        # Keep the latent part of each head's output, then W_UV: (H, B*S, L) @ (H, L, v).
        out = g.node("Reshape", [attn, self.shape([0, 0, heads, lat + dr])], f"{p}/out/Reshape")
        out = g.node("Slice", [out, g.const(f"{p}/out/start", [0]), g.const(f"{p}/out/end", [lat]),
                               g.const(f"{p}/out/axis", [3])], f"{p}/out/Slice")
        out = g.node("Reshape", [g.node("Transpose", [out], f"{p}/out/T", perm=[2, 0, 1, 3]),
                                 self.shape([heads, -1, lat])], f"{p}/out/Reshape2")
        values = self.per_head(out, layer.w_uv, f"{p}/w_uv")  # (H, B*S, v)
        values = g.node(
            "Reshape",
            [
                values,
                g.node(
                    "Concat",
                    [self.shape([heads]), batch_seq, self.shape([dv])],
                    f"{p}/v/shape",
                    axis=0,
                ),
            ],
            f"{p}/v/Reshape",
        )
        values = g.node("Reshape", [g.node("Transpose", [values], f"{p}/v/T", perm=[1, 2, 0, 3]),
                                    self.shape([0, 0, heads * dv])], f"{p}/v/Reshape2")
        return linear(g, values, layer.o, f"{p}/o_proj", "tokens")

    def plain_attention(self, query: str, key: str, i: int) -> str:
        """What GroupQueryAttention computes above, from plain ops (graph/attention.py): the
        latent `key` (B, S, L + rope) written into layer i's cache, `query` (B, S, H * (L + rope))
        attending over it. Returns (B, S, H * (L + rope)), of which the caller keeps the latent."""
        g, s = self.g, self.s
        p = f"/model/layers.{i}/attn/plain"
        heads, width = s.num_heads, s.kv_lora_rank + s.qk_rope_head_dim
        new = g.node(
            "Unsqueeze", [key, g.const(f"{p}/ax1", [1])], f"{p}/NewLatent"
        )  # (B, 1, S, width)
        present = plain_attention.write_cache(
            g, f"past_latent.{i}", new, f"present_latent.{i}", f"{p}/cache"
        )
        g.node("Identity", [present], f"{p}/Alias")
        g.nodes[-1].output[0] = f"present_latent_alias.{i}"
        q = g.node(
            "Transpose",
            [g.node("Reshape", [query, self.shape([0, 0, heads, width])], f"{p}/q/Reshape")],
            f"{p}/q/T",
            perm=[0, 2, 1, 3],
        )
        q = g.node(
            "Unsqueeze", [q, g.const(f"{p}/q/ax1", [1])], f"{p}/q/OneKvHead"
        )  # (B, 1, H, S, width)
        out = plain_attention.attend(g, q, present, float(s.softmax_scale), f"{p}/attend")
        out = g.node(
            "Transpose",
            [g.node("Squeeze", [out, g.const(f"{p}/out/ax1", [1])], f"{p}/out/Squeeze")],
            f"{p}/out/T",
            perm=[0, 2, 1, 3],
        )
        return g.node("Reshape", [out, self.shape([0, 0, heads * width])], f"{p}/out/Reshape")

    def routing(self, x2d: str, moe: Moe, p: str) -> tuple[str, str]:
        """(selected mask (T, E) float 0/1, weights (T, E) zero where not selected)."""
        g, s = self.g, self.s
        e, k = s.n_routed_experts, s.num_experts_per_tok
        r = f"{p}/router"

        def f32(name: str, value: float) -> str:
            return g.const(f"{r}/{name}", value, np.float32)

        def axes(name: str, values) -> str:
            return g.const(f"{r}/{name}", values)

        logits = g.node("MatMul", [x2d, g.external(f"{p}/gate.weight", moe.router)], f"{r}/MatMul")
        per_group = e // s.n_group
        if s.routing == "sigmoid_noaux_tc":
            scores = g.node("Sigmoid", [logits], f"{r}/Sigmoid")
            choice = scores
            if moe.router_bias:
                choice = g.node(
                    "Add", [scores, g.external(f"{p}/gate.bias", moe.router_bias)], f"{r}/Bias"
                )
        else:
            scores = g.node("Softmax", [logits], f"{r}/Softmax", axis=-1)
            choice = scores
        if s.routing in ("sigmoid_noaux_tc", "softmax_group_limited") and s.n_group > 1:
            grouped = g.node(
                "Reshape", [choice, self.shape([0, s.n_group, per_group])], f"{r}/groups"
            )
            if s.routing == "sigmoid_noaux_tc":  # a group's score: the sum of its two best experts
                top2, _ = g.node(
                    "TopK", [grouped, axes("k2", [2])], f"{r}/top2", outputs=2, axis=-1
                )
                gscore = g.node("ReduceSum", [top2, axes("ax", [-1])], f"{r}/gsum", keepdims=0)
            else:
                gscore = g.node("ReduceMax", [grouped, axes("ax", [-1])], f"{r}/gmax", keepdims=0)
            _, gidx = g.node(
                "TopK", [gscore, axes("kg", [s.topk_group])], f"{r}/topgroups", outputs=2, axis=-1
            )
            zeros = g.node("Mul", [gscore, f32("zero", 0.0)], f"{r}/zeros")
            gidx_zeros = g.node(
                "Mul", [g.node("Cast", [gidx], f"{r}/gcast", to=F), f32("zero2", 0.0)], f"{r}/z2"
            )
            ones = g.node("Add", [gidx_zeros, f32("one", 1.0)], f"{r}/ones")
            gmask = g.node("ScatterElements", [zeros, gidx, ones], f"{r}/gmask", axis=1)
            expanded = g.node(
                "Expand",
                [
                    g.node("Unsqueeze", [gmask, axes("ax2", [-1])], f"{r}/unsq"),
                    self.shape([1, 1, per_group]),
                ],
                f"{r}/expand",
            )
            emask = g.node("Reshape", [expanded, self.shape([0, e])], f"{r}/emask")
            keep = g.node("Cast", [emask], f"{r}/keep", to=TensorProto.BOOL)
            fill = f32("fill", -1e30 if s.routing == "sigmoid_noaux_tc" else 0.0)
            choice = g.node("Where", [keep, choice, fill], f"{r}/masked")
        _, idx = g.node("TopK", [choice, axes("k", [k])], f"{r}/topk", outputs=2, axis=-1)
        weights = g.node("GatherElements", [scores, idx], f"{r}/weights", axis=1)
        if s.norm_topk_prob:
            total = g.node("ReduceSum", [weights, axes("ax3", [-1])], f"{r}/wsum", keepdims=1)
            weights = g.node(
                "Div",
                [weights, g.node("Add", [total, f32("eps", 1e-20)], f"{r}/wsum_eps")],
                f"{r}/wnorm",
            )
        if s.routed_scaling_factor != 1.0:
            weights = g.node("Mul", [weights, f32("rsf", s.routed_scaling_factor)], f"{r}/scaled")
        zeros = g.node("Mul", [scores, f32("zero3", 0.0)], f"{r}/zeros3")
        dense_w = g.node("ScatterElements", [zeros, idx, weights], f"{r}/dense", axis=1)
        ones = g.node(
            "Add",
            [g.node("Mul", [weights, f32("zero4", 0.0)], f"{r}/z4"), f32("one2", 1.0)],
            f"{r}/ones2",
        )
        selected = g.node("ScatterElements", [zeros, idx, ones], f"{r}/selected", axis=1)
        return selected, dense_w

    def routed_expert(self, x2d: str, out: str, selected: str, weights: str, expert: GatedMlp,
                      q: str) -> str:
        """`out` plus the expert's weighted output on the tokens routed to it: only those rows
        are gathered, run and added back (`selected`, `weights`: the expert's (T, 1) columns)."""
        g = self.g
        flat = g.node("Reshape", [selected, self.shape([-1])], f"{q}/selflat")
        rows = g.node(
            "Reshape", [g.node("NonZero", [flat], f"{q}/NonZero"), self.shape([-1, 1])], f"{q}/rows"
        )
        xe = g.node("GatherND", [x2d, rows], f"{q}/gather")
        g.row_shapes[q] = g.node("Shape", [rows], f"{q}/rows_shape")  # [tokens routed here, 1]
        ye = gated_mlp(g, xe, expert, q, rows=q)
        we = g.node(
            "GatherND",
            [g.node("Reshape", [weights, self.shape([-1])], f"{q}/wflat"), rows],
            f"{q}/weights",
        )
        ye = g.node("Mul", [ye, g.node("Unsqueeze", [we, g.const(f"{q}/ax", [-1])], f"{q}/wcol")],
                    f"{q}/weighted")
        if (
            g.tensorrt
        ):  # ScatterElements with a reduction is what TensorRT takes (ScatterND's is not)
            cols = g.node("Expand", [rows, g.node("Shape", [ye], f"{q}/shape")], f"{q}/cols")
            return g.node("ScatterElements", [out, cols, ye], f"{q}/add", axis=0, reduction="add")
        return g.node("ScatterND", [out, rows, ye], f"{q}/add", reduction="add")

    def moe(self, x: str, moe: Moe, i: int) -> str:
        g, s = self.g, self.s
        p = f"/model/layers.{i}/mlp"
        x2d = g.node("Reshape", [x, self.shape([-1, s.hidden_size])], f"{p}/flatten")
        selected, dense_w = self.routing(x2d, moe, p)
        e = s.n_routed_experts
        sel_cols = g.node("Split", [g.node("Transpose", [selected], f"{p}/sel/T", perm=[1, 0])],
                          f"{p}/sel/Split", outputs=e, axis=0, num_outputs=e)
        w_cols = g.node(
            "Split",
            [g.node("Transpose", [dense_w], f"{p}/w/T", perm=[1, 0])],
            f"{p}/w/Split",
            outputs=e,
            axis=0,
            num_outputs=e,
        )
        out = g.node("Mul", [x2d, g.const(f"{p}/zero", 0.0, np.float32)], f"{p}/zeros")
        for j, expert in enumerate(moe.experts):
            out = self.routed_expert(x2d, out, sel_cols[j], w_cols[j], expert, f"{p}/experts.{j}")
        if moe.shared:
            out = g.node(
                "Add",
                [out, gated_mlp(g, x2d, moe.shared, f"{p}/shared_experts")],
                f"{p}/plus_shared",
            )
        return g.node("Reshape", [out, g.node("Shape", [x], f"{p}/shape")], f"{p}/unflatten")

    def cache_io(self) -> tuple[list, list]:
        """The cache's graph inputs and outputs: one latent buffer per layer."""
        s = self.s
        cache = ["batch", 1, "cache_capacity", s.latent_dim]
        layers = range(s.num_layers)
        inputs = [helper.make_tensor_value_info(f"past_latent.{i}", F, cache) for i in layers]
        outputs = [helper.make_tensor_value_info(f"present_latent.{i}", F, cache) for i in layers]
        outputs += [
            helper.make_tensor_value_info(f"present_latent_alias.{i}", F, cache) for i in layers
        ]
        return inputs, outputs

    def build(self, t: MlaTensors) -> onnx.ModelProto:
        g, m, spec = self.g, self, self.s
        x = embedding(g, "input_ids", t.embed)
        cos_rows = g.node(
            "Gather", [g.external("rope.cos", t.cos), "position_ids"], "/model/rope/cos"
        )
        sin_rows = g.node(
            "Gather", [g.external("rope.sin", t.sin), "position_ids"], "/model/rope/sin"
        )
        cos_k = g.node("Concat", [cos_rows, cos_rows], "/model/rope/cos2", axis=-1)  # (B, S, dr)
        sin_k = g.node("Concat", [sin_rows, sin_rows], "/model/rope/sin2", axis=-1)
        cos_q = g.node(
            "Unsqueeze", [cos_k, g.const("/model/rope/ax", [2])], "/model/rope/cosq"
        )  # (B, S, 1, dr)
        sin_q = g.node("Unsqueeze", [sin_k, g.const("/model/rope/ax2", [2])], "/model/rope/sinq")
        boundaries = {}  # layer -> the residual stream entering it (graph/parts.py)
        for i, layer in enumerate(t.layers):
            if i:
                boundaries[i] = [x]
            p = f"/model/layers.{i}"
            h = m.norm(x, layer.input_norm, f"{p}/input_layernorm")
            x = g.node(
                "Add",
                [x, m.attention(h, layer, i, cos_q, sin_q, cos_k, sin_k)],
                f"{p}/attn_residual",
            )
            h = m.norm(x, layer.post_norm, f"{p}/post_attention_layernorm")
            y = m.moe(h, layer.moe, i) if layer.moe else gated_mlp(g, h, layer.mlp, f"{p}/mlp")
            x = g.node("Add", [x, y], f"{p}/mlp_residual")
        logits(g, x, "/model/norm.weight", t.final_norm, t.lm_head, spec.rms_norm_eps)
        inputs = [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]),
            helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
            helper.make_tensor_value_info(
                "logits_positions", TensorProto.INT64, ["batch", "positions"]
            ),
        ]
        outputs = [
            helper.make_tensor_value_info("logits", F, ["batch", "positions", spec.vocab_size])
        ]
        cache_inputs, cache_outputs = self.cache_io()
        return decoder_model(
            g, self.name, inputs + cache_inputs, outputs + cache_outputs, boundaries
        )

    def io_names(self) -> dict:
        n = self.s.num_layers
        return {
            "inputs": [
                "input_ids",
                "position_ids",
                "seqlens_k",
                "total_sequence_length",
                "logits_positions",
            ]
            + [f"past_latent.{i}" for i in range(n)],
            "outputs": ["logits"]
            + [f"present_latent.{i}" for i in range(n)]
            + [f"present_latent_alias.{i}" for i in range(n)],
        }

    def kv_cache_entry(self) -> dict:
        """The manifest's account of the cache."""
        s = self.s
        return {
            "kind": "mla_latent",
            "layout": "batch, 1, capacity, kv_lora_rank + qk_rope_head_dim",
            "dtype": "float32",
            **latent_cache_sizes(s),
            "past": "past_latent.{i}",
            "present": "present_latent.{i} and present_latent_alias.{i} (bind both to the past "
                       "buffer)",
            "lengths": "seqlens_k = total length - 1 per sequence; position_ids per token; "
                       "right-padded prefill",
        }


def build_graph(spec: MlaSpec, t: MlaTensors, data_file: str, kv_cache: str = "float32",
                target: str = "onnxruntime") -> onnx.ModelProto:
    """The graph of `t`'s weights; the latent cache is float32 only (KV_CACHES in mla/)."""
    return MlaGraph(spec, data_file, target).build(t)


def write_onnx(
    spec: MlaSpec,
    tensors: MlaTensors,
    folder: Path,
    data_file: str,
    kv_cache: str = "float32",
    tokenizer_file: Path | None = None,
    graph: type[MlaGraph] = MlaGraph,
    target: str = "onnxruntime",
) -> dict:
    """`graph`: what builds it (benchmarks pass their baselines' subclasses)."""
    builder = graph(spec, data_file, target)
    model = builder.build(tensors)
    onnx.save_model(model, str(folder / "model.onnx"))
    names = builder.io_names()
    if target == "tensorrt":
        ops = {
            "attention": "absorbed MLA: W_UK folded into the query, MatMul/Softmax over the cached "
                         "latent "
            "(written with ScatterElements), then W_UV",
            "moe": "exact reference routing in-graph; each routed expert runs only on its tokens "
            "(NonZero/GatherND, added back with ScatterElements reduction=add)",
            "linear": linear_op(tensors.lm_head, target),
            "w_uk_w_uv": "per-head batched MatMul",
        }
    else:
        ops = {
            "attention": "absorbed MLA: W_UK folded into the query, "
                         "com.microsoft.GroupQueryAttention with one KV "
            "head over the cached latent, then W_UV",
            "moe": "exact reference routing in-graph; each routed expert runs only on its tokens "
                   "(NonZero/GatherND/ScatterND)",
            "linear": linear_op(tensors.lm_head),
            "w_uk_w_uv": "per-head batched MatMul; int8 per-column on disk, expanded to float by "
                         "constant folding "
            "at load"
            if tensors.lm_head.bits
            else "per-head batched MatMul",
        }
    return {
        "file": "model.onnx", "data_file": data_file, "opset": model.opset_import[0].version,
        "inputs": names["inputs"], "outputs": names["outputs"],
        "kv_cache": builder.kv_cache_entry(),
        "ops": ops,
    }
