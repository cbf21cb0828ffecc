"""Writes the decoder as one ONNX graph built for ONNX Runtime's fast decode path.

- INT8 linear layers are integer matmuls: each row (token) of the input is quantized to 8 bits
  with its own scale, multiplied by the per-channel int8 weights in int32 and scaled back per
  channel in the GEMM itself (com.microsoft.MatMulIntegerToFloat, MLAS's VNNI/AMX kernels), then
  per row. Per-row scales keep every token's result independent of what else shares the batch.
  int8-wo and INT4 layers are MatMulNBits; float exports use plain MatMul.
- Attention is GroupQueryAttention with rotary inside it and a KV cache buffer of fixed
  capacity: `past_*` and `present_*` are bound to the same memory by the runtime, so a decode
  step writes one position per sequence in place and nothing concatenates the cache.
- With `--kv-cache int8` the cache is int8 with calibrated per-channel scales, and an If per
  layer sends a prompt with nothing cached through float attention (see `_attention`).
- With `--kv-cache float16` attention runs in float16 between two Casts: half the cache memory,
  and GroupQueryAttention then runs on GPU providers, whose kernels take float16 only (in a
  float32 graph it falls back to the CPU with copies around it every layer).
- Per-sequence lengths (`seqlens_k`) let sequences of different lengths share a batch.
- `logits_positions` picks which positions reach the LM head: a prefill computes logits for
  the last prompt token only, instead of the whole prompt times the vocabulary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..graph.parts import mark_boundaries
from ..spec import DecoderSpec
from .tensors import Embedding, GatedMlp, Linear, ModelTensors, Stored

OPSET = 21
MS = "com.microsoft"
ACCURACY_LEVEL = 4
# int8 activations (accuracy level 4) pay off on long dot products; on short ones (tiny test
# models, narrow MLA/expert projections) they buy no speed and cost accuracy.
MIN_K_FOR_INT8_ACTIVATIONS = 256
# The graph input whose [batch, n] shape the rows of a `rows` key have.
ROWS_OF = {"tokens": "input_ids", "positions": "logits_positions"}
DTYPES = {
    "float32": TensorProto.FLOAT,
    "float16": TensorProto.FLOAT16,
    "int8": TensorProto.INT8,
    "uint8": TensorProto.UINT8,
}


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


class _Graph:
    def __init__(self, data_file: str):
        self.data_file = data_file
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._shared: set[str] = set()
        self.row_zero_points: dict[str, str] = {}  # rows key -> uint8 zero points, one per row

    def external(self, name: str, s: Stored) -> str:
        t = TensorProto()
        t.name = name
        t.data_type = DTYPES[s.dtype]
        t.dims.extend(s.shape)
        t.data_location = TensorProto.EXTERNAL
        nbytes = int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize
        for key, value in (("location", s.file or self.data_file), ("offset", s.offset), ("length", nbytes)):
            entry = t.external_data.add()
            entry.key, entry.value = key, str(value)
        self.initializers.append(t)
        return name

    def const(self, name: str, values, dtype=np.int64) -> str:
        self.initializers.append(onnx.numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    def shared(self, name: str, value, dtype) -> str:
        """A scalar constant used by many nodes, stored once."""
        if name not in self._shared:
            self._shared.add(name)
            self.const(name, value, dtype)
        return name

    def node(self, op: str, inputs: list[str], name: str, outputs: int = 1, domain: str = "", **attrs):
        outs = [f"{name}/output_{j}" for j in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, domain=domain, **attrs))
        return outs[0] if outputs == 1 else outs


def _row_quantize(g: _Graph, x: str, k: int, name: str, rows: str | None = None) -> tuple[str, str]:
    """x quantized per row, symmetric, as uint8 with zero point 128, and the row scales: MLAS has
    fast u8 x s8 kernels, while its s8 x s8 path measured 12x slower on AVX-512 VNNI.

    Every node here runs once per linear layer per step, and on many threads each costs a
    dispatch whatever its size, so the subgraph is kept to the fewest nodes that do the work:
    QuantizeLinear takes the row scales itself (one block per row). A row of zeros gets scale 0:
    its quantized values are then arbitrary, but the row rescale makes its result exactly 0.
    Inputs with the same rows (`rows` names them) share one zero-point tensor."""
    peak = g.node("ReduceMax", [g.node("Abs", [x], f"{name}/Abs"), g.shared("/int8/last_axis", [-1], np.int64)],
                  f"{name}/RowMax", keepdims=1)
    scale = g.node("Mul", [peak, g.shared("/int8/inv_qmax", 1 / 127, np.float32)], f"{name}/RowScale")
    # The zero point must have the scale's shape; its rows are only known at run time. Shared
    # zero points take it from the graph input that has those rows, not from a layer's
    # activations: a graph part (export/graph/parts.py) can then make its own from its inputs.
    zero = g.row_zero_points.get(rows) if rows else None
    if zero is None:
        if rows:
            prefix = f"/int8/{rows}"
            rows_shape = g.node("Concat", [g.node("Shape", [ROWS_OF[rows]], f"{prefix}/Shape"),
                                           g.shared("/int8/one_row", [1], np.int64)], f"{prefix}/RowsShape", axis=0)
        else:
            prefix = name
            rows_shape = g.node("Shape", [scale], f"{prefix}/RowsShape")
        zero = g.node("Expand", [g.shared("/int8/zero_point", 128, np.uint8), rows_shape], f"{prefix}/ZeroPoints")
        if rows:
            g.row_zero_points[rows] = zero
    return g.node("QuantizeLinear", [x, scale, zero], f"{name}/Quantize", axis=-1, block_size=k), scale


def _int8_matmul(g: _Graph, xq: str, lin: Linear, name: str) -> str:
    """xq @ W in units of xq's row scales; the channel scales are applied inside the GEMM's
    output stage (MLAS scales each tile while it is in cache)."""
    return g.node("MatMulIntegerToFloat", [xq, g.external(f"{name}.qweight", lin.weight), g.shared("/int8/one", 1.0, np.float32),
                                           g.external(f"{name}.scales", lin.scales), g.shared("/int8/zero_point", 128, np.uint8)],
                  f"{name}/MatMulIntegerToFloat", domain=MS)


def _int8_linear(g: _Graph, x: str, lin: Linear, name: str, rows: str | None = None) -> str:
    xq, scale = _row_quantize(g, x, lin.k, name, rows)
    return g.node("Mul", [_int8_matmul(g, xq, lin, name), scale], f"{name}/RowRescale")


def _gated_mlp(g: _Graph, x: str, mlp: GatedMlp, name: str, rows: str | None = None) -> str:
    """down(silu(gate(x)) * up(x)). Gate and up are two matmuls, not one fused and split: the
    split copied the widest activation of the layer (4% of a prefill, 2 threads). With int8
    weights they share x's quantization, and up's output stays in units of x's row scales: the
    down projection quantizes its input per row, which no row's scale changes, so that scale is
    applied once to down's far narrower output instead."""
    gate, up, down = mlp.gate, mlp.up, mlp.down
    if not all(lin.per_channel and not lin.bias for lin in (gate, up, down)):  # a bias is not in row-scale units
        act = g.node("Mul", [_silu(g, _linear(g, x, gate, f"{name}/gate_proj", rows), name),
                             _linear(g, x, up, f"{name}/up_proj", rows)], f"{name}/Mul")
        return _linear(g, act, down, f"{name}/down_proj", rows)
    xq, x_scale = _row_quantize(g, x, gate.k, f"{name}/gate_up", rows)
    gated = g.node("Mul", [_int8_matmul(g, xq, gate, f"{name}/gate_proj"), x_scale], f"{name}/gate_proj/RowRescale")
    act = g.node("Mul", [_silu(g, gated, name), _int8_matmul(g, xq, up, f"{name}/up_proj")], f"{name}/Mul")
    aq, act_scale = _row_quantize(g, act, down.k, f"{name}/down_proj", rows)
    scale = g.node("Mul", [act_scale, x_scale], f"{name}/down_proj/RowScaleWithUp")
    return g.node("Mul", [_int8_matmul(g, aq, down, f"{name}/down_proj"), scale], f"{name}/down_proj/RowRescale")


def _silu(g: _Graph, x: str, name: str) -> str:
    return g.node("Mul", [x, g.node("Sigmoid", [x], f"{name}/Sigmoid")], f"{name}/SiLU")


def _linear(g: _Graph, x: str, lin: Linear, name: str, rows: str | None = None) -> str:
    """`rows`: a name for the rows of x (e.g. "tokens"), shared by linears whose inputs have
    the same leading shape, so that they can share per-row constants."""
    if lin.per_channel:
        y = _int8_linear(g, x, lin, name, rows)
    elif lin.bits:
        b = g.external(f"{name}.qweight", lin.weight)
        s = g.external(f"{name}.scales", lin.scales)
        y = g.node(
            "MatMulNBits", [x, b, s], f"{name}/MatMulNBits", domain=MS,
            K=lin.k, N=lin.n, bits=lin.bits, block_size=lin.block_size,
            accuracy_level=ACCURACY_LEVEL if lin.k >= MIN_K_FOR_INT8_ACTIVATIONS else 0,
        )
    else:
        w = g.external(f"{name}.weight", lin.weight)
        if lin.weight.dtype != "float32":
            w = g.node("Cast", [w], f"{name}/Cast", to=TensorProto.FLOAT)
        y = g.node("MatMul", [x, w], f"{name}/MatMul")
    if lin.bias:
        y = g.node("Add", [y, g.external(f"{name}.bias", lin.bias)], f"{name}/BiasAdd")
    return y


def _embedding(g: _Graph, ids: str, emb: Embedding) -> str:
    table = g.external("embed_tokens.weight", emb.table)
    rows = g.node("Gather", [table, ids], "/model/embed_tokens/Gather")
    if emb.scales is None:
        if emb.table.dtype != "float32":
            rows = g.node("Cast", [rows], "/model/embed_tokens/Cast", to=TensorProto.FLOAT)
        return rows
    scales = g.external("embed_tokens.scales", emb.scales)
    rows = g.node("Cast", [rows], "/model/embed_tokens/Cast", to=TensorProto.FLOAT)
    row_scales = g.node("Gather", [scales, ids], "/model/embed_tokens/GatherScales")
    return g.node("Mul", [rows, row_scales], "/model/embed_tokens/Dequantize")


KvScales = list[tuple[np.ndarray, np.ndarray]]  # per layer: key and value scales, [kv_heads, head_dim]


def _attention(g: _Graph, spec: DecoderSpec, i: int, qkv: str, cos: str, sin: str,
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
        g.nodes.append(helper.make_node("GroupQueryAttention", [qkv, "", "", f"past_key.{i}", f"past_value.{i}", *lengths],
                                        [f"{p}/output", *present], name=f"{p}/GroupQueryAttention", **gqa))
        if half:
            return g.node("Cast", [f"{p}/output"], f"{p}/output/Cast", to=TensorProto.FLOAT)
        return f"{p}/output"
    k_scale, v_scale = scales
    shape = (1, spec.num_kv_heads, 1, spec.head_dim)
    one, zero = g.shared("/kv/one", 1.0, np.float32), g.shared("/kv/zero_point", 0, np.int8)
    fresh = [helper.make_node("GroupQueryAttention", [qkv, "", "", "", "", *lengths],
                              [f"{p}/fresh/output", f"{p}/fresh/key", f"{p}/fresh/value"], name=f"{p}/fresh/GroupQueryAttention", **gqa)]
    for kind, scale in (("key", k_scale), ("value", v_scale)):
        inverse = g.const(f"{p}/{kind}_inverse_scale", (1 / scale).reshape(shape), np.float32)
        fresh += [helper.make_node("Mul", [f"{p}/fresh/{kind}", inverse], [f"{p}/fresh/{kind}_scaled"], name=f"{p}/fresh/{kind}/Mul"),
                  helper.make_node("QuantizeLinear", [f"{p}/fresh/{kind}_scaled", one, zero], [f"{p}/fresh/{kind}_int8"],
                                   name=f"{p}/fresh/{kind}/Quantize")]
    cached = [helper.make_node(
        "GroupQueryAttention",
        [qkv, "", "", f"past_key.{i}", f"past_value.{i}", *lengths, "", "", "",  # 9-11: positions, bias, sinks
         g.const(f"{p}/k_scale", k_scale, np.float32), g.const(f"{p}/v_scale", v_scale, np.float32)],
        [f"{p}/cached/output", f"{p}/cached/key", f"{p}/cached/value"], name=f"{p}/cached/GroupQueryAttention",
        k_quant_type="PER_CHANNEL", v_quant_type="PER_CHANNEL", kv_cache_bit_width=8, **gqa)]

    def branch(name: str, nodes: list, outs: list[str]) -> onnx.GraphProto:
        types = [TensorProto.FLOAT, TensorProto.INT8, TensorProto.INT8]
        return helper.make_graph(nodes, f"{p}/{name}", [], [helper.make_tensor_value_info(o, t, None) for o, t in zip(outs, types)])

    g.nodes.append(helper.make_node(
        "If", ["fresh_prompt"], [f"{p}/output", *present], name=f"{p}/If",
        then_branch=branch("fresh", fresh, [f"{p}/fresh/output", f"{p}/fresh/key_int8", f"{p}/fresh/value_int8"]),
        else_branch=branch("cached", cached, [f"{p}/cached/output", f"{p}/cached/key", f"{p}/cached/value"])))
    return f"{p}/output"


def build_graph(spec: DecoderSpec, t: ModelTensors, data_file: str, kv_scales: KvScales | None = None,
                kv_cache: str = "float32") -> onnx.ModelProto:
    """`kv_scales`: keep the cache in int8 with these static per-channel scales; else `kv_cache`
    is float32 or float16."""
    g = _Graph(data_file)
    eps = spec.rms_norm_eps
    cache_shape = ["batch", spec.num_kv_heads, "cache_capacity", spec.head_dim]
    cache_type = TensorProto.INT8 if kv_scales else DTYPES[kv_cache]
    half = kv_cache == "float16"

    x = _embedding(g, "input_ids", t.embed)
    cos, sin = g.external("rope.cos", t.cos), g.external("rope.sin", t.sin)
    if half:  # casts of initializers: ONNX Runtime folds them into float16 constants at load
        cos = g.node("Cast", [cos], "/model/rope/cos/Cast", to=TensorProto.FLOAT16)
        sin = g.node("Cast", [sin], "/model/rope/sin/Cast", to=TensorProto.FLOAT16)
    h = g.node("SimplifiedLayerNormalization", [x, g.external("layers.0.input_norm", t.layers[0].input_norm)],
               "/model/layers.0/input_layernorm", axis=-1, epsilon=eps)
    residual = x
    boundaries = {}  # layer -> the tensors that carry the residual stream into it (export/graph/parts.py)
    for i, layer in enumerate(t.layers):
        p = f"/model/layers.{i}"
        qkv = _linear(g, h, layer.qkv, f"{p}/attn/qkv_proj", "tokens")
        attn = _attention(g, spec, i, qkv, cos, sin, kv_scales[i] if kv_scales else None, half)
        o = _linear(g, attn, layer.o, f"{p}/attn/o_proj", "tokens")
        h, _, _, residual = g.node(
            "SkipSimplifiedLayerNormalization",
            [o, residual, g.external(f"layers.{i}.post_norm", layer.post_norm)],
            f"{p}/post_attention_layernorm", outputs=4, domain=MS, epsilon=eps,
        )
        down = _gated_mlp(g, h, layer.mlp, f"{p}/mlp", "tokens")
        if i + 1 < len(t.layers):
            nxt = t.layers[i + 1].input_norm
            h, _, _, residual = g.node(
                "SkipSimplifiedLayerNormalization",
                [down, residual, g.external(f"layers.{i + 1}.input_norm", nxt)],
                f"/model/layers.{i + 1}/input_layernorm", outputs=4, domain=MS, epsilon=eps,
            )
            boundaries[i + 1] = [h, residual]
        else:
            residual = g.node("Add", [down, residual], f"{p}/residual_add")

    # Only the requested positions reach the final norm and the LM head.
    pos = g.node("Unsqueeze", ["logits_positions", g.const("/model/axes_last", [-1])], "/model/positions/Unsqueeze")
    picked = g.node("GatherND", [residual, pos], "/model/positions/GatherND", batch_dims=1)
    normed = g.node("SimplifiedLayerNormalization", [picked, g.external("final_norm", t.final_norm)],
                    "/model/norm", axis=-1, epsilon=eps)
    _linear(g, normed, t.lm_head, "/lm_head", "positions")
    g.nodes[-1].output[0] = "logits"  # the LM head's last node produces the graph output

    f = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]),
        helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
        helper.make_tensor_value_info("logits_positions", TensorProto.INT64, ["batch", "positions"]),
    ] + ([helper.make_tensor_value_info("fresh_prompt", TensorProto.BOOL, [])] if kv_scales else [])
    outputs = [helper.make_tensor_value_info("logits", f, ["batch", "positions", spec.vocab_size])]
    for kind in ("key", "value"):
        inputs += [helper.make_tensor_value_info(f"past_{kind}.{i}", cache_type, cache_shape) for i in range(spec.num_layers)]
        # An int8 graph's fresh prompt returns only the prompt's positions (see _attention).
        present_shape = [*cache_shape[:2], "present_length", cache_shape[3]] if kv_scales else cache_shape
        outputs += [helper.make_tensor_value_info(f"present_{kind}.{i}", cache_type, present_shape)
                    for i in range(spec.num_layers)]
    graph = helper.make_graph(g.nodes, "edgeds_decoder", inputs, outputs, initializer=g.initializers)
    return mark_boundaries(helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)],
        producer_name="edgeds",
        ir_version=10,
    ), boundaries)


def linear_op(lin: Linear) -> str:
    if lin.per_channel:
        return ("com.microsoft.MatMulIntegerToFloat: int8 weights per output channel x uint8 activations "
                "per row (dynamic, symmetric)")
    return f"com.microsoft.MatMulNBits accuracy_level={ACCURACY_LEVEL}" if lin.bits else "MatMul"


def write_onnx(spec: DecoderSpec, tensors: ModelTensors, folder: Path, data_file: str, kv_cache: str = "float32",
               tokenizer_file: Path | None = None) -> dict:
    """`kv_cache="int8"`: the float32-cache graph is written first and run over calibration text
    (export/kv_calibration.py), then replaced by the int8-cache graph with those scales.
    `kv_cache="float16"`: attention and its cache in float16 (see `_attention`)."""
    # An int8 cache is calibrated on the float32-cache graph, built first.
    model = build_graph(spec, tensors, data_file, kv_cache="float32" if kv_cache == "int8" else kv_cache)
    kv_note = {}
    if kv_cache == "int8":
        from ..kv_calibration import CALIBRATION_TOKENS, MARGIN, calibration_ids, kv_scales

        onnx.save_model(model, str(folder / "model.onnx"))
        ids = calibration_ids(tokenizer_file, spec.vocab_size, min(CALIBRATION_TOKENS, tensors.cos.shape[0]))
        scales = kv_scales(folder / "model.onnx", spec.num_layers, spec.num_kv_heads, spec.head_dim, ids)
        model = build_graph(spec, tensors, data_file, scales)
        kv_note = {"scales": f"static, per kv head and channel: {MARGIN} x the largest |value| over "
                             f"{len(ids)} calibration tokens, / 127; larger values saturate",
                   "fresh_prompt": "true for a call whose prompts have nothing cached: present_* are then "
                                   "[batch, kv_heads, prompt, head_dim], the prompt's int8 keys and values, "
                                   "for the runtime to copy into its cache; false: updated in place as above"}
    if kv_cache == "float16":
        kv_note = {"attention": "GroupQueryAttention in float16 between Casts from and to the float32 "
                                "projections (the kernels GPU providers have)"}
    onnx.save_model(model, str(folder / "model.onnx"))
    names = io_names(spec.num_layers, kv_cache == "int8")
    return {
        "file": "model.onnx",
        "data_file": data_file,
        "opset": OPSET,
        "inputs": names["inputs"],
        "outputs": names["outputs"],
        "kv_cache": {
            "kind": "shared_buffer",
            "layout": "batch, kv_heads, capacity, head_dim",
            "dtype": kv_cache,
            **kv_note,
            "past": "past_key.{i} / past_value.{i}",
            "present": "present_key.{i} / present_value.{i} (bind to the same memory as past)",
            "lengths": "seqlens_k = total length - 1 per sequence; sequences right-padded on prefill",
        },
        "ops": {
            "attention": "com.microsoft.GroupQueryAttention (rotary inside, cos/sin tables for positions < context)",
            "linear": linear_op(tensors.lm_head),
            "norm": "SimplifiedLayerNormalization / com.microsoft.SkipSimplifiedLayerNormalization",
        },
    }
