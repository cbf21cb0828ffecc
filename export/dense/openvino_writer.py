"""Writes a dense decoder as an OpenVINO IR (stateful), from the same weight file as the ONNX
graph (the linear layers, norms and embedding: graph/openvino_ops.py).

- The KV cache is model state (ReadValue -> Concat -> SDPA, Assign). The CPU plugin fuses that
  pattern into an in-place cache of its own, so no step copies the whole cache.
- Per-sequence lengths come from `attention_mask` (left padding) and `position_ids`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops
from openvino import opset6

from ..graph.openvino_ops import INPUTS, Builder, i64, rotate_half
from ..tensors import ModelTensors
from ..weight_file import WeightFile
from .spec import DecoderSpec


def build_model(spec: DecoderSpec, t: ModelTensors, weights: WeightFile) -> ov.Model:
    b = Builder(weights)
    heads, kv_heads, d = spec.num_heads, spec.num_kv_heads, spec.head_dim
    input_ids = ops.parameter([-1, -1], np.int64, name="input_ids")
    attention_mask = ops.parameter([-1, -1], np.int64, name="attention_mask")
    position_ids = ops.parameter([-1, -1], np.int64, name="position_ids")
    beam_idx = ops.parameter([-1], np.int32, name="beam_idx")
    logits_positions = ops.parameter([-1, -1], np.int64, name="logits_positions")
    params = [input_ids, attention_mask, position_ids, beam_idx, logits_positions]
    for p in params:
        p.output(0).get_tensor().set_names({p.get_friendly_name()})

    batch = ops.gather(ops.shape_of(input_ids), i64([0]), i64(0))  # 1-D, for building shapes
    seq = ops.gather(ops.shape_of(input_ids), i64(1), i64(0))
    total = ops.gather(ops.shape_of(attention_mask), i64(1), i64(0))
    past_len = ops.subtract(total, seq)

    # Boolean mask (batch, 1, seq, total): causal over absolute positions, padding keys off,
    # and each query always sees itself so fully padded rows never produce NaN.
    rows = ops.unsqueeze(ops.add(ops.range(i64(0), seq, i64(1), "i64"), past_len), i64(1))
    cols = ops.unsqueeze(ops.range(i64(0), total, i64(1), "i64"), i64(0))
    causal = ops.less_equal(cols, rows)
    keep = ops.not_equal(ops.unsqueeze(attention_mask, i64([1, 2])), i64(0))
    mask = ops.logical_or(ops.logical_and(ops.unsqueeze(causal, i64([0, 1])), keep),
                          ops.unsqueeze(ops.equal(cols, rows), i64([0, 1])))

    cos_rows = ops.gather(b.const(t.cos), position_ids, i64(0))
    sin_rows = ops.gather(b.const(t.sin), position_ids, i64(0))
    cos = ops.unsqueeze(ops.concat([cos_rows, cos_rows], -1), i64(1))
    sin = ops.unsqueeze(ops.concat([sin_rows, sin_rows], -1), i64(1))

    def rope(x):
        return ops.add(ops.multiply(x, cos), ops.multiply(rotate_half(x, d // 2), sin))

    def heads_first(x, n):
        return ops.transpose(ops.reshape(x, i64([0, 0, n, d]), True), i64([0, 2, 1, 3]))

    empty_cache = ops.broadcast(
        ops.constant(np.float32(0)), ops.concat([batch, i64([kv_heads, 0, d])], 0)
    )
    x = b.embedding(input_ids, t.embed)
    sinks = []
    for i, layer in enumerate(t.layers):
        h = b.rms_norm(x, layer.input_norm, spec.rms_norm_eps)
        qkv = b.linear(h, layer.qkv)
        q, k, v = ops.variadic_split(
            qkv, i64(-1), i64([heads * d, kv_heads * d, kv_heads * d])
        ).outputs()
        q, k, v = (
            rope(heads_first(q, heads)),
            rope(heads_first(k, kv_heads)),
            heads_first(v, kv_heads),
        )
        caches = []
        for kind, new in (("key", k), ("value", v)):
            var_id = f"past_key_values.{i}.{kind}"
            past = opset6.read_value(
                empty_cache, var_id, np.float32, ov.PartialShape([-1, kv_heads, -1, d])
            )
            full = ops.concat([ops.gather(past, beam_idx, i64(0)), new], 2)
            sinks.append(opset6.assign(full, var_id))
            if heads != kv_heads:
                full = ops.broadcast(
                    ops.unsqueeze(full, i64(2)),
                    ops.concat(
                        [
                            batch,
                            i64([kv_heads, heads // kv_heads]),
                            ops.gather(ops.shape_of(full), i64([2, 3]), i64(0)),
                        ],
                        0,
                    ),
                )
                full = ops.reshape(full, i64([0, heads, -1, d]), True)
            caches.append(full)
        attn = ops.scaled_dot_product_attention(
            q, caches[0], caches[1], mask, ops.constant(np.float32(d**-0.5))
        )
        attn = ops.reshape(ops.transpose(attn, i64([0, 2, 1, 3])), i64([0, 0, heads * d]), True)
        x = ops.add(x, b.linear(attn, layer.o))
        h = b.rms_norm(x, layer.post_norm, spec.rms_norm_eps)
        x = ops.add(x, b.mlp(h, layer.mlp))

    picked = ops.gather(x, logits_positions, i64(1), 1)
    logits = b.linear(b.rms_norm(picked, t.final_norm, spec.rms_norm_eps), t.lm_head)
    logits.output(0).get_tensor().set_names({"logits"})
    return ov.Model([logits.output(0)], sinks, params, "edgeds_decoder")


def write_openvino(
    spec: DecoderSpec, tensors: ModelTensors, folder: Path, weights: WeightFile
) -> dict:
    model = build_model(spec, tensors, weights)
    ov.save_model(model, str(folder / "openvino_model.xml"), compress_to_fp16=False)
    return {
        "file": "openvino_model.xml",
        "data_file": "openvino_model.bin",
        "inputs": INPUTS,
        "outputs": ["logits"],
        "kv_cache": {
            "kind": "stateful",
            "variables": "past_key_values.{i}.key / past_key_values.{i}.value",
            "layout": "batch, kv_heads, length, head_dim",
            "lengths": "attention_mask (batch, past + new), sequences left-padded; position_ids "
                       "per token",
        },
        "ops": {
            "attention": "ScaledDotProductAttention over ReadValue/Concat/Assign state (CPU plugin "
                         "fuses into an in-place cache)",
            "linear": "MatMul on u8/u4 constants with zero point and per-block scales (compressed "
                      "weights)"
            if tensors.lm_head.bits
            else "MatMul",
        },
    }
