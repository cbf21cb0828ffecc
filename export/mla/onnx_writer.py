"""Writes DeepSeek-V2/V3 (MLA + MoE) as an ONNX graph for ONNX Runtime.

- The KV cache is MLA's latent: kv_lora_rank + qk_rope_head_dim values per token per layer,
  one buffer per layer. Attention is absorbed: W_UK is folded into the query, so the cached
  latent serves as key and value of a one-KV-head GroupQueryAttention (the same buffer bound
  to past/present key and value, written in place), and W_UV turns the attended latent into
  per-head values. No step re-expands the cache into per-head K/V.
- Routing is computed exactly as the reference (softmax greedy, group-limited, or sigmoid with
  the correction bias and groups), and each routed expert runs only on the tokens routed to it:
  an expert nobody chose gets zero rows, so its weights are never read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..dense.onnx_writer import MS, OPSET, _embedding, _gated_mlp, _Graph, _linear, linear_op
from ..graph.parts import mark_boundaries
from ..spec import MlaSpec
from .tensors import MlaLayer, MlaTensors, Moe, PerHead

F = TensorProto.FLOAT


def io_names(n: int) -> dict:
    return {
        "inputs": ["input_ids", "position_ids", "seqlens_k", "total_sequence_length", "logits_positions"]
        + [f"past_latent.{i}" for i in range(n)],
        "outputs": ["logits"] + [f"present_latent.{i}" for i in range(n)]
        + [f"present_latent_alias.{i}" for i in range(n)],
    }


class _Mla:
    def __init__(self, g: _Graph, spec: MlaSpec, sparse_experts: bool = True, latent_cache: bool = True):
        self.g, self.s = g, spec
        self.sparse_experts = sparse_experts
        self.latent_cache = latent_cache
        self.shape_cache: dict[tuple, str] = {}

    def shape(self, dims) -> str:
        key = tuple(dims)
        if key not in self.shape_cache:
            self.shape_cache[key] = self.g.const(f"/model/shapes/{'_'.join(map(str, key))}".replace("-", "m"), list(dims))
        return self.shape_cache[key]

    def norm(self, x: str, weight, name: str) -> str:
        w = self.g.external(f"{name}.weight", weight)
        return self.g.node("SimplifiedLayerNormalization", [x, w], name, axis=-1, epsilon=self.s.rms_norm_eps)

    def per_head(self, x: str, p: PerHead, name: str) -> str:
        """x (H, M, rows) @ W (H, rows, cols)."""
        return self.g.node("MatMul", [x, self.weight(p, name)], f"{name}/MatMul")

    def rope(self, x: str, cos: str, sin: str, name: str) -> str:
        half = self.s.qk_rope_head_dim // 2
        x1, x2 = self.g.node("Split", [x, self.g.const(f"{name}/halves", [half, half])], f"{name}/Split", outputs=2, axis=-1)
        rotated = self.g.node("Concat", [self.g.node("Neg", [x2], f"{name}/Neg"), x1], f"{name}/Concat", axis=-1)
        return self.g.node("Add", [self.g.node("Mul", [x, cos], f"{name}/MulCos"),
                                   self.g.node("Mul", [rotated, sin], f"{name}/MulSin")], f"{name}/Add")

    def attention(self, h: str, layer: MlaLayer, i: int, cos_q: str, sin_q: str, cos_k: str, sin_k: str) -> str:
        g, s = self.g, self.s
        p = f"/model/layers.{i}/attn"
        heads, dn, dr, dv, lat = s.num_heads, s.qk_nope_head_dim, s.qk_rope_head_dim, s.v_head_dim, s.kv_lora_rank
        q_in = h
        if layer.q_a is not None:
            q_in = self.norm(_linear(g, h, layer.q_a, f"{p}/q_a_proj", "tokens"), layer.q_a_norm, f"{p}/q_a_layernorm")
        q = g.node("Reshape", [_linear(g, q_in, layer.q, f"{p}/q_proj", "tokens"), self.shape([0, 0, heads, dn + dr])], f"{p}/q/Reshape")
        q_nope, q_rope = g.node("Split", [q, g.const(f"{p}/q/split", [dn, dr])], f"{p}/q/Split", outputs=2, axis=-1)
        q_rope = self.rope(q_rope, cos_q, sin_q, f"{p}/q_rope")
        if not self.latent_cache:
            return self.per_head_attention(h, layer, i, q_nope, q_rope, cos_k, sin_k)
        # Absorb W_UK: (H, B*S, nope) @ (H, nope, L) -> the query in latent space.
        qn = g.node("Reshape", [g.node("Transpose", [q_nope], f"{p}/q_nope/T", perm=[2, 0, 1, 3]),
                                self.shape([heads, -1, dn])], f"{p}/q_nope/Reshape")
        q_lat = self.per_head(qn, layer.w_uk, f"{p}/w_uk")
        batch_seq = g.node("Shape", [h], f"{p}/Shape", end=2)
        q_lat = g.node("Reshape", [q_lat, g.node("Concat", [self.shape([heads]), batch_seq, self.shape([lat])],
                                                 f"{p}/q_lat/shape", axis=0)], f"{p}/q_lat/Reshape")
        q_lat = g.node("Transpose", [q_lat], f"{p}/q_lat/T", perm=[1, 2, 0, 3])  # (B, S, H, L)
        query = g.node("Reshape", [g.node("Concat", [q_lat, q_rope], f"{p}/query/Concat", axis=-1),
                                   self.shape([0, 0, heads * (lat + dr)])], f"{p}/query/Reshape")
        kv = _linear(g, h, layer.kv_a, f"{p}/kv_a_proj", "tokens")
        c, k_rope = g.node("Split", [kv, g.const(f"{p}/kv/split", [lat, dr])], f"{p}/kv/Split", outputs=2, axis=-1)
        c = self.norm(c, layer.kv_a_norm, f"{p}/kv_a_layernorm")
        key = g.node("Concat", [c, self.rope(k_rope, cos_k, sin_k, f"{p}/k_rope")], f"{p}/key/Concat", axis=-1)
        attn, _, _ = g.node(
            "GroupQueryAttention",
            [query, key, key, f"past_latent.{i}", f"past_latent.{i}", "seqlens_k", "total_sequence_length"],
            f"{p}/GroupQueryAttention", outputs=3, domain=MS,
            num_heads=heads, kv_num_heads=1, scale=float(s.softmax_scale), do_rotary=0,
        )
        g.nodes[-1].output[1:] = [f"present_latent.{i}", f"present_latent_alias.{i}"]
        # Keep the latent part of each head's output, then W_UV: (H, B*S, L) @ (H, L, v).
        out = g.node("Reshape", [attn, self.shape([0, 0, heads, lat + dr])], f"{p}/out/Reshape")
        out = g.node("Slice", [out, g.const(f"{p}/out/start", [0]), g.const(f"{p}/out/end", [lat]),
                               g.const(f"{p}/out/axis", [3])], f"{p}/out/Slice")
        out = g.node("Reshape", [g.node("Transpose", [out], f"{p}/out/T", perm=[2, 0, 1, 3]),
                                 self.shape([heads, -1, lat])], f"{p}/out/Reshape2")
        values = self.per_head(out, layer.w_uv, f"{p}/w_uv")  # (H, B*S, v)
        values = g.node("Reshape", [values, g.node("Concat", [self.shape([heads]), batch_seq, self.shape([dv])],
                                                   f"{p}/v/shape", axis=0)], f"{p}/v/Reshape")
        values = g.node("Reshape", [g.node("Transpose", [values], f"{p}/v/T", perm=[1, 2, 0, 3]),
                                    self.shape([0, 0, heads * dv])], f"{p}/v/Reshape2")
        return _linear(g, values, layer.o, f"{p}/o_proj", "tokens")

    def per_head_attention(self, h, layer: MlaLayer, i: int, q_nope: str, q_rope: str, cos_k: str, sin_k: str) -> str:
        """A baseline for benchmarks: expand the latent into per-head K and V and cache those."""
        g, s = self.g, self.s
        p = f"/model/layers.{i}/attn"
        heads, dn, dr, dv, lat = s.num_heads, s.qk_nope_head_dim, s.qk_rope_head_dim, s.v_head_dim, s.kv_lora_rank
        query = g.node("Reshape", [g.node("Concat", [q_nope, q_rope], f"{p}/query/Concat", axis=-1),
                                   self.shape([0, 0, heads * (dn + dr)])], f"{p}/query/Reshape")
        kv = _linear(g, h, layer.kv_a, f"{p}/kv_a_proj", "tokens")
        c, k_rope = g.node("Split", [kv, g.const(f"{p}/kv/split", [lat, dr])], f"{p}/kv/Split", outputs=2, axis=-1)
        c = self.norm(c, layer.kv_a_norm, f"{p}/kv_a_layernorm")
        k_rope = self.rope(k_rope, cos_k, sin_k, f"{p}/k_rope")
        batch_seq = g.node("Shape", [h], f"{p}/Shape", end=2)
        flat = g.node("Reshape", [c, self.shape([1, -1, lat])], f"{p}/c/Reshape")
        w_uk = g.node("Transpose", [self.weight(layer.w_uk, f"{p}/w_uk")], f"{p}/w_uk/T", perm=[0, 2, 1])

        def heads_last(x: str, width: int, name: str) -> str:
            x = g.node("Reshape", [x, g.node("Concat", [self.shape([heads]), batch_seq, self.shape([width])],
                                             f"{name}/shape", axis=0)], f"{name}/Reshape")
            return g.node("Transpose", [x], f"{name}/T", perm=[1, 2, 0, 3])  # (B, S, H, width)

        k_nope = heads_last(g.node("MatMul", [flat, w_uk], f"{p}/k_nope/MatMul"), dn, f"{p}/k_nope")
        v = heads_last(g.node("MatMul", [flat, self.weight(layer.w_uv, f"{p}/w_uv")], f"{p}/v/MatMul"), dv, f"{p}/v")
        v = g.node("Pad", [v, g.const(f"{p}/v/pads", [0, 0, 0, 0, 0, 0, 0, dn + dr - dv])], f"{p}/v/Pad")
        k_rope = g.node("Expand", [g.node("Unsqueeze", [k_rope, g.const(f"{p}/k_rope/ax", [2])], f"{p}/k_rope/unsq"),
                                   self.shape([1, 1, heads, 1])], f"{p}/k_rope/expand")
        key = g.node("Concat", [k_nope, k_rope], f"{p}/key/Concat", axis=-1)
        flat_heads = self.shape([0, 0, heads * (dn + dr)])
        attn, _, _ = g.node(
            "GroupQueryAttention",
            [query, g.node("Reshape", [key, flat_heads], f"{p}/key/Reshape"),
             g.node("Reshape", [v, flat_heads], f"{p}/value/Reshape"), f"past_key.{i}", f"past_value.{i}",
             "seqlens_k", "total_sequence_length"],
            f"{p}/GroupQueryAttention", outputs=3, domain=MS,
            num_heads=heads, kv_num_heads=heads, scale=float(s.softmax_scale), do_rotary=0,
        )
        g.nodes[-1].output[1:] = [f"present_key.{i}", f"present_value.{i}"]
        out = g.node("Reshape", [attn, self.shape([0, 0, heads, dn + dr])], f"{p}/out/Reshape")
        out = g.node("Slice", [out, g.const(f"{p}/out/start", [0]), g.const(f"{p}/out/end", [dv]),
                               g.const(f"{p}/out/axis", [3])], f"{p}/out/Slice")
        return _linear(g, g.node("Reshape", [out, self.shape([0, 0, heads * dv])], f"{p}/out/Reshape2"), layer.o,
                       f"{p}/o_proj")

    def weight(self, p: PerHead, name: str) -> str:
        w = self.g.external(f"{name}.weight", p.weight)
        if p.scales is not None:
            return self.g.node("Mul", [self.g.node("Cast", [w], f"{name}/Cast", to=F),
                                       self.g.external(f"{name}.scales", p.scales)], f"{name}/Dequantize")
        if p.weight.dtype != "float32":
            return self.g.node("Cast", [w], f"{name}/Cast", to=F)
        return w

    def routing(self, x2d: str, moe: Moe, p: str) -> tuple[str, str]:
        """(selected mask (T, E) float 0/1, weights (T, E) zero where not selected)."""
        g, s = self.g, self.s
        e, k = s.n_routed_experts, s.num_experts_per_tok
        logits = g.node("MatMul", [x2d, g.external(f"{p}/gate.weight", moe.router)], f"{p}/router/MatMul")
        per_group = e // s.n_group
        if s.routing == "sigmoid_noaux_tc":
            scores = g.node("Sigmoid", [logits], f"{p}/router/Sigmoid")
            choice = scores
            if moe.router_bias:
                choice = g.node("Add", [scores, g.external(f"{p}/gate.bias", moe.router_bias)], f"{p}/router/Bias")
        else:
            scores = g.node("Softmax", [logits], f"{p}/router/Softmax", axis=-1)
            choice = scores
        if s.routing in ("sigmoid_noaux_tc", "softmax_group_limited") and s.n_group > 1:
            grouped = g.node("Reshape", [choice, self.shape([0, s.n_group, per_group])], f"{p}/router/groups")
            if s.routing == "sigmoid_noaux_tc":  # a group's score: the sum of its two best experts
                top2, _ = g.node("TopK", [grouped, g.const(f"{p}/router/k2", [2])], f"{p}/router/top2", outputs=2, axis=-1)
                gscore = g.node("ReduceSum", [top2, g.const(f"{p}/router/ax", [-1])], f"{p}/router/gsum", keepdims=0)
            else:
                gscore = g.node("ReduceMax", [grouped, g.const(f"{p}/router/ax", [-1])], f"{p}/router/gmax", keepdims=0)
            _, gidx = g.node("TopK", [gscore, g.const(f"{p}/router/kg", [s.topk_group])], f"{p}/router/topgroups", outputs=2, axis=-1)
            gmask = g.node("ScatterElements", [g.node("Mul", [gscore, g.const(f"{p}/router/zero", 0.0, np.float32)], f"{p}/router/zeros"),
                                               gidx, g.node("Add", [g.node("Mul", [g.node("Cast", [gidx], f"{p}/router/gcast", to=F),
                                                                                  g.const(f"{p}/router/zero2", 0.0, np.float32)], f"{p}/router/z2"),
                                                                    g.const(f"{p}/router/one", 1.0, np.float32)], f"{p}/router/ones")],
                           f"{p}/router/gmask", axis=1)
            emask = g.node("Reshape", [g.node("Expand", [g.node("Unsqueeze", [gmask, g.const(f"{p}/router/ax2", [-1])], f"{p}/router/unsq"),
                                                         self.shape([1, 1, per_group])], f"{p}/router/expand"),
                                       self.shape([0, e])], f"{p}/router/emask")
            keep = g.node("Cast", [emask], f"{p}/router/keep", to=TensorProto.BOOL)
            fill = g.const(f"{p}/router/fill", -1e30 if s.routing == "sigmoid_noaux_tc" else 0.0, np.float32)
            choice = g.node("Where", [keep, choice, fill], f"{p}/router/masked")
        _, idx = g.node("TopK", [choice, g.const(f"{p}/router/k", [k])], f"{p}/router/topk", outputs=2, axis=-1)
        weights = g.node("GatherElements", [scores, idx], f"{p}/router/weights", axis=1)
        if s.norm_topk_prob:
            total = g.node("ReduceSum", [weights, g.const(f"{p}/router/ax3", [-1])], f"{p}/router/wsum", keepdims=1)
            weights = g.node("Div", [weights, g.node("Add", [total, g.const(f"{p}/router/eps", 1e-20, np.float32)], f"{p}/router/wsum_eps")],
                             f"{p}/router/wnorm")
        if s.routed_scaling_factor != 1.0:
            weights = g.node("Mul", [weights, g.const(f"{p}/router/rsf", s.routed_scaling_factor, np.float32)], f"{p}/router/scaled")
        zeros = g.node("Mul", [scores, g.const(f"{p}/router/zero3", 0.0, np.float32)], f"{p}/router/zeros3")
        dense_w = g.node("ScatterElements", [zeros, idx, weights], f"{p}/router/dense", axis=1)
        ones = g.node("Add", [g.node("Mul", [weights, g.const(f"{p}/router/zero4", 0.0, np.float32)], f"{p}/router/z4"),
                              g.const(f"{p}/router/one2", 1.0, np.float32)], f"{p}/router/ones2")
        selected = g.node("ScatterElements", [zeros, idx, ones], f"{p}/router/selected", axis=1)
        return selected, dense_w

    def moe(self, x: str, moe: Moe, i: int) -> str:
        g, s = self.g, self.s
        p = f"/model/layers.{i}/mlp"
        x2d = g.node("Reshape", [x, self.shape([-1, s.hidden_size])], f"{p}/flatten")
        selected, dense_w = self.routing(x2d, moe, p)
        e = s.n_routed_experts
        sel_cols = g.node("Split", [g.node("Transpose", [selected], f"{p}/sel/T", perm=[1, 0])], f"{p}/sel/Split",
                          outputs=e, axis=0, num_outputs=e)
        w_cols = g.node("Split", [g.node("Transpose", [dense_w], f"{p}/w/T", perm=[1, 0])], f"{p}/w/Split",
                        outputs=e, axis=0, num_outputs=e)
        out = g.node("Mul", [x2d, g.const(f"{p}/zero", 0.0, np.float32)], f"{p}/zeros")
        for j, expert in enumerate(moe.experts):
            q = f"{p}/experts.{j}"
            if not self.sparse_experts:  # every expert on every token (a baseline for benchmarks)
                ye = _gated_mlp(g, x2d, expert, q)
                out = g.node("Add", [out, g.node("Mul", [ye, g.node("Transpose", [w_cols[j]], f"{q}/wT", perm=[1, 0])],
                                                 f"{q}/weighted")], f"{q}/add")
                continue
            flat = g.node("Reshape", [sel_cols[j], self.shape([-1])], f"{q}/selflat")
            rows = g.node("Reshape", [g.node("NonZero", [flat], f"{q}/NonZero"), self.shape([-1, 1])], f"{q}/rows")
            xe = g.node("GatherND", [x2d, rows], f"{q}/gather")  # only the tokens routed here
            ye = _gated_mlp(g, xe, expert, q)
            we = g.node("GatherND", [g.node("Reshape", [w_cols[j], self.shape([-1])], f"{q}/wflat"),
                                     rows], f"{q}/weights")
            ye = g.node("Mul", [ye, g.node("Unsqueeze", [we, g.const(f"{q}/ax", [-1])], f"{q}/wcol")], f"{q}/weighted")
            out = g.node("ScatterND", [out, rows, ye], f"{q}/add", reduction="add")
        if moe.shared:
            out = g.node("Add", [out, _gated_mlp(g, x2d, moe.shared, f"{p}/shared_experts")], f"{p}/plus_shared")
        return g.node("Reshape", [out, g.node("Shape", [x], f"{p}/shape")], f"{p}/unflatten")


def build_graph(spec: MlaSpec, t: MlaTensors, data_file: str, sparse_experts: bool = True,
                latent_cache: bool = True) -> onnx.ModelProto:
    g = _Graph(data_file)
    m = _Mla(g, spec, sparse_experts, latent_cache)
    x = _embedding(g, "input_ids", t.embed)
    cos_rows = g.node("Gather", [g.external("rope.cos", t.cos), "position_ids"], "/model/rope/cos")
    sin_rows = g.node("Gather", [g.external("rope.sin", t.sin), "position_ids"], "/model/rope/sin")
    cos_k = g.node("Concat", [cos_rows, cos_rows], "/model/rope/cos2", axis=-1)  # (B, S, dr)
    sin_k = g.node("Concat", [sin_rows, sin_rows], "/model/rope/sin2", axis=-1)
    cos_q = g.node("Unsqueeze", [cos_k, g.const("/model/rope/ax", [2])], "/model/rope/cosq")  # (B, S, 1, dr)
    sin_q = g.node("Unsqueeze", [sin_k, g.const("/model/rope/ax2", [2])], "/model/rope/sinq")
    boundaries = {}  # layer -> the residual stream entering it (export/graph/parts.py)
    for i, layer in enumerate(t.layers):
        if i:
            boundaries[i] = [x]
        h = m.norm(x, layer.input_norm, f"/model/layers.{i}/input_layernorm")
        x = g.node("Add", [x, m.attention(h, layer, i, cos_q, sin_q, cos_k, sin_k)], f"/model/layers.{i}/attn_residual")
        h = m.norm(x, layer.post_norm, f"/model/layers.{i}/post_attention_layernorm")
        if layer.moe:
            y = m.moe(h, layer.moe, i)
        else:
            y = _gated_mlp(g, h, layer.mlp, f"/model/layers.{i}/mlp")
        x = g.node("Add", [x, y], f"/model/layers.{i}/mlp_residual")
    pos = g.node("Unsqueeze", ["logits_positions", g.const("/model/axes_last", [-1])], "/model/positions/Unsqueeze")
    picked = g.node("GatherND", [x, pos], "/model/positions/GatherND", batch_dims=1)
    _linear(g, m.norm(picked, t.final_norm, "/model/norm"), t.lm_head, "/lm_head", "positions")
    g.nodes[-1].output[0] = "logits"

    cache = ["batch", 1, "cache_capacity", spec.latent_dim]
    per_head = ["batch", spec.num_heads, "cache_capacity", spec.qk_nope_head_dim + spec.qk_rope_head_dim]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "sequence"]),
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]),
        helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
        helper.make_tensor_value_info("logits_positions", TensorProto.INT64, ["batch", "positions"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", F, ["batch", "positions", spec.vocab_size])]
    if latent_cache:
        inputs += [helper.make_tensor_value_info(f"past_latent.{i}", F, cache) for i in range(spec.num_layers)]
        outputs += [helper.make_tensor_value_info(f"present_latent.{i}", F, cache) for i in range(spec.num_layers)]
        outputs += [helper.make_tensor_value_info(f"present_latent_alias.{i}", F, cache) for i in range(spec.num_layers)]
    else:
        for kind in ("key", "value"):
            inputs += [helper.make_tensor_value_info(f"past_{kind}.{i}", F, per_head) for i in range(spec.num_layers)]
            outputs += [helper.make_tensor_value_info(f"present_{kind}.{i}", F, per_head) for i in range(spec.num_layers)]
    graph = helper.make_graph(g.nodes, "edgeds_mla_decoder", inputs, outputs, initializer=g.initializers)
    return mark_boundaries(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)],
                                             producer_name="edgeds", ir_version=10), boundaries)


def write_onnx_mla(spec: MlaSpec, tensors: MlaTensors, folder: Path, data_file: str,
                   sparse_experts: bool = True, latent_cache: bool = True) -> dict:
    """sparse_experts=False and latent_cache=False build the baselines benchmarks compare against."""
    onnx.save_model(build_graph(spec, tensors, data_file, sparse_experts, latent_cache), str(folder / "model.onnx"))
    names = io_names(spec.num_layers)
    if not latent_cache:
        heads, dim = spec.num_heads, spec.qk_nope_head_dim + spec.qk_rope_head_dim
        return {"file": "model.onnx", "data_file": data_file, "opset": OPSET,
                "inputs": names["inputs"][:5], "outputs": ["logits"],
                "kv_cache": {"kind": "per_head", "heads": heads, "head_dim": dim,
                             "bytes_per_token": 2 * spec.num_layers * heads * dim * 4}}
    return {
        "file": "model.onnx", "data_file": data_file, "opset": OPSET,
        "inputs": names["inputs"], "outputs": names["outputs"],
        "kv_cache": {
            "kind": "mla_latent",
            "layout": "batch, 1, capacity, kv_lora_rank + qk_rope_head_dim",
            "dtype": "float32",
            "values_per_token_per_layer": spec.latent_dim,
            "bytes_per_token": spec.num_layers * spec.latent_dim * 4,
            "past": "past_latent.{i}",
            "present": "present_latent.{i} and present_latent_alias.{i} (bind both to the past buffer)",
            "lengths": "seqlens_k = total length - 1 per sequence; position_ids per token; right-padded prefill",
        },
        "ops": {
            "attention": "absorbed MLA: W_UK folded into the query, com.microsoft.GroupQueryAttention with one KV "
                         "head over the cached latent, then W_UV",
            "moe": "exact reference routing in-graph; each routed expert runs only on its tokens (NonZero/GatherND/ScatterND)",
            "linear": linear_op(tensors.lm_head),
            "w_uk_w_uv": "per-head batched MatMul; int8 per-column on disk, expanded to float by constant folding "
                         "at load" if tensors.lm_head.bits else "per-head batched MatMul",
        },
        "mtp_layers_left_out": spec.mtp_layers_left_out,
    }
