"""Writes a dense decoder (llama, qwen2) as one ONNX graph built for ONNX Runtime's fast
decode path (the linear layers, norms and LM head: graph/onnx_ops.py).

- Attention is GroupQueryAttention with rotary inside it and a KV cache buffer of fixed
  capacity: `past_*` and `present_*` are bound to the same memory by the runtime, so a decode
  step writes one position per sequence in place and nothing concatenates the cache.
- With `--kv-cache int8` the cache is int8 with calibrated per-channel scales, and an If per
  layer sends a prompt with nothing cached through float attention (see `_attention`).
- With `--kv-cache float16` attention runs in float16 between two Casts: half the cache memory,
  and GroupQueryAttention then runs on GPU providers, whose kernels take float16 only (in a
  float32 graph it falls back to the CPU with copies around it every layer).
- Per-sequence lengths (`seqlens_k`) let sequences of different lengths share a batch.
- The TensorRT target (`target="tensorrt"`) keeps these inputs, outputs and the cache protocol,
  with attention and rotary from plain ops (graph/attention.py, `_tensorrt_attention`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..graph import attention as plain_attention
from ..graph.onnx_ops import (
    DTYPES,
    MS,
    Graph,
    decoder_model,
    embedding,
    gated_mlp,
    linear,
    linear_op,
    logits,
    norm,
    skip_norm,
)
from ..tensors import ModelTensors
from .spec import DecoderSpec


def io_names(num_layers: int, int8_cache: bool = False) -> dict:
    return {
        "inputs": ["input_ids", "seqlens_k", "total_sequence_length", "logits_positions"]
        + (["fresh_prompt"] if int8_cache else [])
        + [f"past_key.{i}" for i in range(num_layers)]
        + [f"past_value.{i}" for i in range(num_layers)],
        "outputs": ["logits"]
        + [f"present_key.{i}" for i in range(num_layers)]
        + [f"present_value.{i}" for i in range(num_layers)],
    }


KvScales = list[
    tuple[np.ndarray, np.ndarray]
]  # per layer: key and value scales, [kv_heads, head_dim]


def _attention(g: Graph, spec: DecoderSpec, i: int, qkv: str, cos: str, sin: str,
               scales: tuple[np.ndarray, np.ndarray] | None, half: bool = False) -> str:
    """GroupQueryAttention over layer i's cache; writes present_key.i / present_value.i.

    With an int8 cache (`scales`), ONNX Runtime's quantized attention is 2-3.5x slower than
    the float one on a whole prompt (it dequantizes per query row), while faster on decode
    steps. So an If on `fresh_prompt` picks per call: a prompt with nothing cached attends in
    float32 over its own keys and values and returns them quantized ([batch, kv_heads,
    prompt, head_dim], for the runtime to copy into the cache); every other call (decode
    steps, later chunks of a long prompt) attends over the int8 cache and writes it in place.

    `half`: a float16 cache; the projections around it stay float32 (cos and sin come cast)."""
    p = f"/model/layers.{i}/attn"
    gqa = dict(domain=MS, num_heads=spec.num_heads, kv_num_heads=spec.num_kv_heads,
               do_rotary=1, rotary_interleaved=0, scale=float(spec.head_dim ** -0.5))
    lengths = ["seqlens_k", "total_sequence_length", cos, sin]
    present = [f"present_key.{i}", f"present_value.{i}"]
    if scales is None:
        if half:
            qkv = g.node("Cast", [qkv], f"{p}/qkv/Cast", to=TensorProto.FLOAT16)
        g.nodes.append(
            helper.make_node(
                "GroupQueryAttention",
                [qkv, "", "", f"past_key.{i}", f"past_value.{i}", *lengths],
                [f"{p}/output", *present],
                name=f"{p}/GroupQueryAttention",
                **gqa,
            )
        )
        if half:
            return g.node("Cast", [f"{p}/output"], f"{p}/output/Cast", to=TensorProto.FLOAT)
        return f"{p}/output"
    k_scale, v_scale = scales
    shape = (1, spec.num_kv_heads, 1, spec.head_dim)
    one, zero = g.shared("/kv/one", 1.0, np.float32), g.shared("/kv/zero_point", 0, np.int8)
    fresh = [
        helper.make_node(
            "GroupQueryAttention",
            [qkv, "", "", "", "", *lengths],
            [f"{p}/fresh/output", f"{p}/fresh/key", f"{p}/fresh/value"],
            name=f"{p}/fresh/GroupQueryAttention",
            **gqa,
        )
    ]
    for kind, scale in (("key", k_scale), ("value", v_scale)):
        inverse = g.const(f"{p}/{kind}_inverse_scale", (1 / scale).reshape(shape), np.float32)
        fresh += [
            helper.make_node(
                "Mul",
                [f"{p}/fresh/{kind}", inverse],
                [f"{p}/fresh/{kind}_scaled"],
                name=f"{p}/fresh/{kind}/Mul",
            ),
            helper.make_node(
                "QuantizeLinear",
                [f"{p}/fresh/{kind}_scaled", one, zero],
                [f"{p}/fresh/{kind}_int8"],
                name=f"{p}/fresh/{kind}/Quantize",
            ),
        ]
    cached = [
        helper.make_node(
            "GroupQueryAttention",
            [
                qkv,
                "",
                "",
                f"past_key.{i}",
                f"past_value.{i}",
                *lengths,
                "",
                "",
                "",  # 9-11: positions, bias, sinks
                g.const(f"{p}/k_scale", k_scale, np.float32),
                g.const(f"{p}/v_scale", v_scale, np.float32),
            ],
            [f"{p}/cached/output", f"{p}/cached/key", f"{p}/cached/value"],
            name=f"{p}/cached/GroupQueryAttention",
            k_quant_type="PER_CHANNEL",
            v_quant_type="PER_CHANNEL",
            kv_cache_bit_width=8,
            **gqa,
        )
    ]

    def branch(name: str, nodes: list, outs: list[str]) -> onnx.GraphProto:
        types = [TensorProto.FLOAT, TensorProto.INT8, TensorProto.INT8]
        return helper.make_graph(
            nodes,
            f"{p}/{name}",
            [],
            [helper.make_tensor_value_info(o, t, None) for o, t in zip(outs, types)],
        )

    g.nodes.append(
        helper.make_node(
            "If",
            ["fresh_prompt"],
            [f"{p}/output", *present],
            name=f"{p}/If",
            then_branch=branch(
                "fresh",
                fresh,
                [f"{p}/fresh/output", f"{p}/fresh/key_int8", f"{p}/fresh/value_int8"],
            ),
            else_branch=branch(
                "cached", cached, [f"{p}/cached/output", f"{p}/cached/key", f"{p}/cached/value"]
            ),
        )
    )
    return f"{p}/output"


def rotate(g: Graph, x: str, cos: str, sin: str, half: int, name: str) -> str:
    """Rotary embedding of x (..., 2 * half), non-interleaved halves; cos and sin broadcast to
    (..., half)."""
    x1, x2 = g.node(
        "Split", [x, g.const(f"{name}/halves", [half, half])], f"{name}/Split", outputs=2, axis=-1
    )
    first = g.node(
        "Sub",
        [g.node("Mul", [x1, cos], f"{name}/x1cos"), g.node("Mul", [x2, sin], f"{name}/x2sin")],
        f"{name}/First",
    )
    second = g.node(
        "Add",
        [g.node("Mul", [x2, cos], f"{name}/x2cos"), g.node("Mul", [x1, sin], f"{name}/x1sin")],
        f"{name}/Second",
    )
    return g.node("Concat", [first, second], f"{name}/Concat", axis=-1)


def _tensorrt_attention(g: Graph, spec: DecoderSpec, i: int, qkv: str, cos: str, sin: str) -> str:
    """Layer i's attention from plain ops over its cache (graph/attention.py); writes
    present_key.i / present_value.i. cos, sin: the tables (positions, head_dim / 2)."""
    p = f"/model/layers.{i}/attn"
    heads, kv_heads, d = spec.num_heads, spec.num_kv_heads, spec.head_dim
    if "/rope/rows" not in g.named:
        positions = plain_attention.token_positions(g)
        axis = g.const("/model/rope/heads_axis", [2])
        g.named["/rope/rows"] = tuple(
            g.node(
                "Unsqueeze",
                [g.node("Gather", [table, positions], f"/model/rope/{kind}/Gather"), axis],
                f"/model/rope/{kind}/Unsqueeze",
            )
            for kind, table in (("cos", cos), ("sin", sin))
        )
    cos_rows, sin_rows = g.named["/rope/rows"]  # (batch, sequence, 1, head_dim / 2)
    q, k, v = g.node(
        "Split",
        [qkv, g.const(f"{p}/qkv/split", [heads * d, kv_heads * d, kv_heads * d])],
        f"{p}/qkv/Split",
        outputs=3,
        axis=-1,
    )

    def heads_first(x: str, n: int, name: str, rope: bool) -> str:  # (b, s, n*d) -> (b, n, s, d)
        x = g.node(
            "Reshape", [x, g.const(f"{p}/{name}/shape", [0, 0, n, d])], f"{p}/{name}/Reshape"
        )
        if rope:
            x = rotate(g, x, cos_rows, sin_rows, d // 2, f"{p}/{name}/rope")
        return g.node("Transpose", [x], f"{p}/{name}/T", perm=[0, 2, 1, 3])

    for kind, x in (
        ("key", heads_first(k, kv_heads, "k", True)),
        ("value", heads_first(v, kv_heads, "v", False)),
    ):
        plain_attention.write_cache(
            g, f"past_{kind}.{i}", x, f"present_{kind}.{i}", f"{p}/{kind}_cache"
        )
    group = heads // kv_heads
    q = g.node(
        "Reshape",
        [heads_first(q, heads, "q", True), g.const(f"{p}/q/grouped", [0, kv_heads, group, -1, d])],
        f"{p}/q/Grouped",
    )  # query heads h = kv head * group + j share kv head h // group
    out = plain_attention.attend(g, q, f"present_key.{i}", float(d ** -0.5), f"{p}/attend",
                                 values=f"present_value.{i}")  # (b, kvh, group, s, d)
    out = g.node("Transpose", [out], f"{p}/out/T", perm=[0, 3, 1, 2, 4])
    return g.node(
        "Reshape", [out, g.const(f"{p}/out/shape", [0, 0, heads * d])], f"{p}/out/Reshape"
    )


def build_graph(
    spec: DecoderSpec,
    t: ModelTensors,
    data_file: str,
    kv_scales: KvScales | None = None,
    kv_cache: str = "float32",
    target: str = "onnxruntime",
) -> onnx.ModelProto:
    """`kv_scales`: keep the cache in int8 with these static per-channel scales; else `kv_cache`
    is float32 or float16. `target`: graph/onnx_ops.TARGETS (tensorrt: a float32 cache)."""
    g = Graph(data_file, target)
    eps = spec.rms_norm_eps
    cache_shape = ["batch", spec.num_kv_heads, "cache_capacity", spec.head_dim]
    cache_type = TensorProto.INT8 if kv_scales else DTYPES[kv_cache]
    half = kv_cache == "float16"

    x = embedding(g, "input_ids", t.embed)
    cos, sin = g.external("rope.cos", t.cos), g.external("rope.sin", t.sin)
    if half:  # casts of initializers: ONNX Runtime folds them into float16 constants at load
        cos = g.node("Cast", [cos], "/model/rope/cos/Cast", to=TensorProto.FLOAT16)
        sin = g.node("Cast", [sin], "/model/rope/sin/Cast", to=TensorProto.FLOAT16)
    h = norm(
        g, x, "layers.0.input_norm", t.layers[0].input_norm, "/model/layers.0/input_layernorm", eps
    )
    residual = x
    # layer -> the tensors that carry the residual stream into it (export/graph/parts.py)
    boundaries = {}
    for i, layer in enumerate(t.layers):
        p = f"/model/layers.{i}"
        qkv = linear(g, h, layer.qkv, f"{p}/attn/qkv_proj", "tokens")
        if g.tensorrt:
            attn = _tensorrt_attention(g, spec, i, qkv, cos, sin)
        else:
            attn = _attention(g, spec, i, qkv, cos, sin, kv_scales[i] if kv_scales else None, half)
        o = linear(g, attn, layer.o, f"{p}/attn/o_proj", "tokens")
        h, residual = skip_norm(g, o, residual, f"layers.{i}.post_norm", layer.post_norm,
                                f"{p}/post_attention_layernorm", eps)
        down = gated_mlp(g, h, layer.mlp, f"{p}/mlp", "tokens")
        if i + 1 < len(t.layers):
            h, residual = skip_norm(
                g,
                down,
                residual,
                f"layers.{i + 1}.input_norm",
                t.layers[i + 1].input_norm,
                f"/model/layers.{i + 1}/input_layernorm",
                eps,
            )
            boundaries[i + 1] = [h, residual]
        else:
            residual = g.node("Add", [down, residual], f"{p}/residual_add")

    logits(g, residual, "final_norm", t.final_norm, t.lm_head, eps)

    f = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]),
        helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
        helper.make_tensor_value_info(
            "logits_positions", TensorProto.INT64, ["batch", "positions"]
        ),
    ] + ([helper.make_tensor_value_info("fresh_prompt", TensorProto.BOOL, [])] if kv_scales else [])
    outputs = [helper.make_tensor_value_info("logits", f, ["batch", "positions", spec.vocab_size])]
    for kind in ("key", "value"):
        inputs += [
            helper.make_tensor_value_info(f"past_{kind}.{i}", cache_type, cache_shape)
            for i in range(spec.num_layers)
        ]
        # An int8 graph's fresh prompt returns only the prompt's positions (see _attention).
        present_shape = (
            [*cache_shape[:2], "present_length", cache_shape[3]] if kv_scales else cache_shape
        )
        outputs += [helper.make_tensor_value_info(f"present_{kind}.{i}", cache_type, present_shape)
                    for i in range(spec.num_layers)]
    return decoder_model(g, "edgeds_decoder", inputs, outputs, boundaries)


def write_onnx(
    spec: DecoderSpec,
    tensors: ModelTensors,
    folder: Path,
    data_file: str,
    kv_cache: str = "float32",
    tokenizer_file: Path | None = None,
    target: str = "onnxruntime",
) -> dict:
    """`kv_cache="int8"`: the float32-cache graph is written first and run over calibration text
    (kv_calibration.py), then replaced by the int8-cache graph with those scales.
    `kv_cache="float16"`: attention and its cache in float16 (see `_attention`)."""
    # An int8 cache is calibrated on the float32-cache graph, built first.
    model = build_graph(
        spec,
        tensors,
        data_file,
        kv_cache="float32" if kv_cache == "int8" else kv_cache,
        target=target,
    )
    kv_note = {}
    if kv_cache == "int8":
        from .kv_calibration import CALIBRATION_TOKENS, MARGIN, calibration_ids, kv_scales

        onnx.save_model(model, str(folder / "model.onnx"))
        ids = calibration_ids(
            tokenizer_file, spec.vocab_size, min(CALIBRATION_TOKENS, tensors.cos.shape[0])
        )
        scales = kv_scales(
            folder / "model.onnx", spec.num_layers, spec.num_kv_heads, spec.head_dim, ids
        )
        model = build_graph(spec, tensors, data_file, scales)
        kv_note = {
            "scales": f"static, per kv head and channel: {MARGIN} x the largest |value| over "
            f"{len(ids)} calibration tokens, / 127; larger values saturate",
            "fresh_prompt": "true for a call whose prompts have nothing cached: present_* are then "
            "[batch, kv_heads, prompt, head_dim], the prompt's int8 keys and values, "
            "for the runtime to copy into its cache; false: updated in place as above",
        }
    if kv_cache == "float16":
        kv_note = {
            "attention": "GroupQueryAttention in float16 between Casts from and to the float32 "
            "projections (the kernels GPU providers have)"
        }
    onnx.save_model(model, str(folder / "model.onnx"))
    names = io_names(spec.num_layers, kv_cache == "int8")
    return {
        "file": "model.onnx",
        "data_file": data_file,
        "opset": model.opset_import[0].version,
        "inputs": names["inputs"],
        "outputs": names["outputs"],
        "kv_cache": {
            "kind": "shared_buffer",
            "layout": "batch, kv_heads, capacity, head_dim",
            "dtype": kv_cache,
            **kv_note,
            "past": "past_key.{i} / past_value.{i}",
            "present": "present_key.{i} / present_value.{i} (bind to the same memory as past)",
            "lengths": "seqlens_k = total length - 1 per sequence; sequences right-padded on "
                       "prefill",
        },
        "ops": TENSORRT_OPS | {"linear": linear_op(tensors.lm_head, target)}
        if target == "tensorrt"
        else {
            "attention": "com.microsoft.GroupQueryAttention (rotary inside, cos/sin tables for "
                         "positions < context)",
            "linear": linear_op(tensors.lm_head),
            "norm": "SimplifiedLayerNormalization / com.microsoft.SkipSimplifiedLayerNormalization",
        },
    }


TENSORRT_OPS = {
    "attention": "MatMul/Softmax over the cache's first total_sequence_length positions, masked by "
    "position; new keys and values written with ScatterElements; rotary from Gather/Split/Mul",
    "norm": "RMS norm from ReduceMean/Sqrt/Div",
}
