"""Writes DeepSeek-V2/V3 (MLA + MoE) as a stateful OpenVINO IR; same design as the ONNX graph
(onnx_writer.py beside it): the state holds the latent (kv_lora_rank + qk_rope_head_dim per token
per layer), attention is absorbed, routing is exact, and each expert runs only on its tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops
from openvino import opset6, opset15

from ..graph.openvino_ops import INPUTS, Builder, f32, i64, rotate_half
from ..weight_file import WeightFile
from .spec import MlaSpec, latent_cache_sizes
from .tensors import MlaTensors, Moe, PerHead


class MlaBuilder(Builder):
    def __init__(self, weights: WeightFile, spec: MlaSpec):
        super().__init__(weights)
        self.s = spec

    def per_head(self, x, p: PerHead):
        w = self.const(p.weight)
        if p.scales is not None:
            w = ops.multiply(ops.convert(w, np.float32), self.const(p.scales))
        elif p.weight.dtype != "float32":
            w = ops.convert(w, np.float32)
        return ops.matmul(x, w, False, False)

    def routing(self, x2d, moe: Moe):
        s = self.s
        e, k = s.n_routed_experts, s.num_experts_per_tok
        logits = ops.matmul(x2d, self.const(moe.router), False, False)
        if s.routing == "sigmoid_noaux_tc":
            scores = ops.sigmoid(logits)
            choice = ops.add(scores, self.const(moe.router_bias)) if moe.router_bias else scores
        else:
            scores = ops.softmax(logits, -1)
            choice = scores
        if s.routing in ("sigmoid_noaux_tc", "softmax_group_limited") and s.n_group > 1:
            per_group = e // s.n_group
            grouped = ops.reshape(choice, i64([0, s.n_group, per_group]), True)
            if s.routing == "sigmoid_noaux_tc":
                top2 = ops.topk(grouped, i64(2), -1, "max", "value").output(0)
                gscore = ops.reduce_sum(top2, i64([-1]), False)
            else:
                gscore = ops.reduce_max(grouped, i64([-1]), False)
            gidx = ops.topk(gscore, i64(s.topk_group), -1, "max", "value").output(1)
            gmask = opset15.scatter_elements_update(
                ops.multiply(gscore, f32(0)),
                gidx,
                ops.add(ops.multiply(ops.convert(gidx, np.float32), f32(0)), f32(1)),
                i64(1),
            )
            emask = ops.reshape(
                ops.multiply(
                    ops.unsqueeze(gmask, i64(-1)),
                    ops.constant(np.ones((1, 1, per_group), np.float32)),
                ),
                i64([0, e]),
                True,
            )
            fill = f32(-1e30 if s.routing == "sigmoid_noaux_tc" else 0.0)
            choice = ops.select(ops.convert(emask, "boolean"), choice, fill)
        idx = ops.topk(choice, i64(k), -1, "max", "value").output(1)
        weights = ops.gather_elements(scores, idx, 1)
        if s.norm_topk_prob:
            weights = ops.divide(
                weights, ops.add(ops.reduce_sum(weights, i64([-1]), True), f32(1e-20))
            )
        if s.routed_scaling_factor != 1.0:
            weights = ops.multiply(weights, f32(s.routed_scaling_factor))
        zeros = ops.multiply(scores, f32(0))
        dense_w = opset15.scatter_elements_update(zeros, idx, weights, i64(1))
        selected = opset15.scatter_elements_update(
            zeros, idx, ops.add(ops.multiply(weights, f32(0)), f32(1)), i64(1)
        )
        return selected, dense_w

    def moe(self, x, moe: Moe):
        s = self.s
        x2d = ops.reshape(x, i64([-1, s.hidden_size]), False)
        selected, dense_w = self.routing(x2d, moe)
        out = ops.multiply(x2d, f32(0))
        for j, expert in enumerate(moe.experts):
            col = ops.gather(selected, i64(j), i64(1))
            rows = ops.transpose(
                ops.non_zero(col, "i64"), i64([1, 0])
            )  # (n, 1): only tokens routed here
            ye = self.mlp(ops.gather_nd(x2d, rows), expert)
            we = ops.gather_nd(ops.gather(dense_w, i64(j), i64(1)), rows)
            out = opset15.scatter_nd_update(
                out, rows, ops.multiply(ye, ops.unsqueeze(we, i64(-1))), "sum"
            )
        if moe.shared:
            out = ops.add(out, self.mlp(x2d, moe.shared))
        return ops.reshape(out, ops.shape_of(x), False)


def build_model(spec: MlaSpec, t: MlaTensors, weights: WeightFile) -> ov.Model:
    b = MlaBuilder(weights, spec)
    heads, dn, dr, dv, lat = (
        spec.num_heads,
        spec.qk_nope_head_dim,
        spec.qk_rope_head_dim,
        spec.v_head_dim,
        spec.kv_lora_rank,
    )
    params = {n: ops.parameter([-1, -1], np.int64, name=n) for n in INPUTS if n != "beam_idx"}
    params["beam_idx"] = ops.parameter([-1], np.int32, name="beam_idx")
    for name, p in params.items():
        p.output(0).get_tensor().set_names({name})
    input_ids, attention_mask = params["input_ids"], params["attention_mask"]
    batch = ops.gather(ops.shape_of(input_ids), i64([0]), i64(0))
    batch_seq = ops.gather(ops.shape_of(input_ids), i64([0, 1]), i64(0))
    seq = ops.gather(ops.shape_of(input_ids), i64(1), i64(0))
    total = ops.gather(ops.shape_of(attention_mask), i64(1), i64(0))
    past_len = ops.subtract(total, seq)
    rows = ops.unsqueeze(ops.add(ops.range(i64(0), seq, i64(1), "i64"), past_len), i64(1))
    cols = ops.unsqueeze(ops.range(i64(0), total, i64(1), "i64"), i64(0))
    keep = ops.not_equal(ops.unsqueeze(attention_mask, i64([1, 2])), i64(0))
    mask = ops.logical_or(
        ops.logical_and(ops.unsqueeze(ops.less_equal(cols, rows), i64([0, 1])), keep),
        ops.unsqueeze(ops.equal(cols, rows), i64([0, 1])),
    )
    cos_rows = ops.gather(b.const(t.cos), params["position_ids"], i64(0))
    sin_rows = ops.gather(b.const(t.sin), params["position_ids"], i64(0))
    cos_k, sin_k = (
        ops.concat([cos_rows, cos_rows], -1),
        ops.concat([sin_rows, sin_rows], -1),
    )  # (B, S, dr)
    cos_q, sin_q = ops.unsqueeze(cos_k, i64(2)), ops.unsqueeze(sin_k, i64(2))

    def rope(x, cos, sin):
        return ops.add(ops.multiply(x, cos), ops.multiply(rotate_half(x, dr // 2), sin))

    empty = ops.broadcast(f32(0), ops.concat([batch, i64([1, 0, lat + dr])], 0))
    x = b.embedding(input_ids, t.embed)
    sinks = []
    for i, layer in enumerate(t.layers):
        h = b.rms_norm(x, layer.input_norm, spec.rms_norm_eps)
        q_in = (
            b.rms_norm(b.linear(h, layer.q_a), layer.q_a_norm, spec.rms_norm_eps)
            if layer.q_a
            else h
        )
        q = ops.reshape(b.linear(q_in, layer.q), i64([0, 0, heads, dn + dr]), True)
        q_nope, q_rope = ops.variadic_split(q, i64(-1), i64([dn, dr])).outputs()
        q_rope = rope(q_rope, cos_q, sin_q)
        qn = ops.reshape(ops.transpose(q_nope, i64([2, 0, 1, 3])), i64([heads, -1, dn]), False)
        q_lat = ops.reshape(
            b.per_head(qn, layer.w_uk), ops.concat([i64([heads]), batch_seq, i64([lat])], 0), False
        )
        query = ops.transpose(
            ops.concat([ops.transpose(q_lat, i64([1, 2, 0, 3])), q_rope], -1), i64([0, 2, 1, 3])
        )
        c, k_rope = ops.variadic_split(b.linear(h, layer.kv_a), i64(-1), i64([lat, dr])).outputs()
        key = ops.unsqueeze(
            ops.concat(
                [b.rms_norm(c, layer.kv_a_norm, spec.rms_norm_eps), rope(k_rope, cos_k, sin_k)], -1
            ),
            i64(1),
        )  # (B, 1, S, L + dr)
        var_id = f"past_latent.{i}"
        past = opset6.read_value(empty, var_id, np.float32, ov.PartialShape([-1, 1, -1, lat + dr]))
        latent = ops.concat([ops.gather(past, params["beam_idx"], i64(0)), key], 2)
        sinks.append(opset6.assign(latent, var_id))
        attn = ops.scaled_dot_product_attention(
            query, latent, latent, mask, f32(spec.softmax_scale)
        )  # (B, H, S, L+dr)
        attn = ops.slice(attn, i64([0]), i64([lat]), i64([1]), i64([3]))
        out = ops.reshape(ops.transpose(attn, i64([1, 0, 2, 3])), i64([heads, -1, lat]), False)
        values = ops.reshape(
            b.per_head(out, layer.w_uv), ops.concat([i64([heads]), batch_seq, i64([dv])], 0), False
        )
        values = ops.reshape(
            ops.transpose(values, i64([1, 2, 0, 3])), i64([0, 0, heads * dv]), True
        )
        x = ops.add(x, b.linear(values, layer.o))
        h = b.rms_norm(x, layer.post_norm, spec.rms_norm_eps)
        x = ops.add(x, b.moe(h, layer.moe) if layer.moe else b.mlp(h, layer.mlp))
    picked = ops.gather(x, params["logits_positions"], i64(1), 1)
    logits = b.linear(b.rms_norm(picked, t.final_norm, spec.rms_norm_eps), t.lm_head)
    logits.output(0).get_tensor().set_names({"logits"})
    return ov.Model([logits.output(0)], sinks, [params[n] for n in INPUTS], "edgeds_mla_decoder")


def write_openvino(spec: MlaSpec, tensors: MlaTensors, folder: Path, weights: WeightFile) -> dict:
    ov.save_model(
        build_model(spec, tensors, weights),
        str(folder / "openvino_model.xml"),
        compress_to_fp16=False,
    )
    return {
        "file": "openvino_model.xml",
        "data_file": "openvino_model.bin",
        "inputs": INPUTS,
        "outputs": ["logits"],
        "kv_cache": {
            "kind": "stateful_mla_latent",
            "variables": "past_latent.{i}",
            "layout": "batch, 1, length, kv_lora_rank + qk_rope_head_dim",
            **latent_cache_sizes(spec),
            "lengths": "attention_mask (batch, past + new), sequences left-padded; position_ids "
                       "per token",
        },
        "ops": {
            "attention": "absorbed MLA: ScaledDotProductAttention of the latent-space query over "
                         "the latent state",
            "moe": "exact reference routing; each routed expert runs only on its tokens "
                   "(NonZero/GatherND/ScatterNDUpdate)",
        },
    }
