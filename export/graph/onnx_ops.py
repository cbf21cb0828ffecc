"""The ONNX op builders every decoder graph shares: linear layers, the gated MLP, norms, the
embedding and the LM head at the requested positions.

- INT8 linear layers are integer matmuls: each row (token) of the input is quantized to 8 bits
  with its own scale, multiplied by the per-channel int8 weights in int32 and scaled back per
  channel in the GEMM itself (com.microsoft.MatMulIntegerToFloat, MLAS's VNNI/AMX kernels), then
  per row. Per-row scales keep every token's result independent of what else shares the batch.
  int8-wo and INT4 layers are MatMulNBits; float exports use plain MatMul.
- The TensorRT target (`Graph(..., target="tensorrt")`) writes the same pieces from ops every
  TensorRT 10.x ONNX parser takes: int8 weights behind DequantizeLinear (zero point 0) into a
  float MatMul (weight-only; TensorRT fuses the pair), RMS norm from ReduceMean / Sqrt, the
  embedding gathered from its dequantized table. Attention: graph/attention.py.
- Initializers are external: they point into the weight file where the tensor records
  (export/tensors.py) say each tensor lies.
- `logits_positions` picks which positions reach the LM head: a prefill computes logits for
  the last prompt token only, instead of the whole prompt times the vocabulary.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..tensors import BLOCKED_TO_KN, KN, Embedding, GatedMlp, Linear, Stored
from .parts import mark_boundaries

OPSET = 21
TENSORRT_OPSET = 20  # the newest opset TensorRT 10.3's parser reads (onnx-parser-ops.json)
MS = "com.microsoft"
ACCURACY_LEVEL = 4  # MatMulNBits': int8 activations per block (accuracy_level below for 0)
# int8 activations (accuracy level 4) pay off on long dot products; on short ones (tiny test
# models, narrow MLA/expert projections) they buy no speed and cost accuracy.
MIN_K_FOR_INT8_ACTIVATIONS = 256
# The graph input whose [batch, n] shape the rows of a `rows` key have.
ROWS_OF = {"tokens": "input_ids", "positions": "logits_positions"}
TARGETS = ("onnxruntime", "tensorrt")
DTYPES = {
    "float32": TensorProto.FLOAT,
    "float16": TensorProto.FLOAT16,
    "int8": TensorProto.INT8,
    "uint8": TensorProto.UINT8,
}



class Graph:
    def __init__(self, data_file: str, target: str = "onnxruntime"):
        self.data_file, self.target = data_file, target
        self.tensorrt = target == "tensorrt"
        self.named: dict[str, str] = {}  # subgraphs built once per graph (graph/attention.py)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._shared: set[str] = set()
        self.row_zero_points: dict[str, str] = {}  # rows key -> uint8 zero points, one per row
        # rows key -> a tensor holding [rows, 1], for rows made in the graph (an expert's tokens)
        self.row_shapes: dict[str, str] = {}

    def external(self, name: str, s: Stored) -> str:
        t = TensorProto()
        t.name = name
        t.data_type = DTYPES[s.dtype]
        t.dims.extend(s.shape)
        t.data_location = TensorProto.EXTERNAL
        nbytes = int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize
        for key, value in (
            ("location", s.file or self.data_file),
            ("offset", s.offset),
            ("length", nbytes),
        ):
            entry = t.external_data.add()
            entry.key, entry.value = key, str(value)
        self.initializers.append(t)
        return name

    def const(self, name: str, values, dtype=np.int64) -> str:
        self.initializers.append(
            onnx.numpy_helper.from_array(np.asarray(values, dtype=dtype), name)
        )
        return name

    def shared(self, name: str, value, dtype) -> str:
        """A scalar constant used by many nodes, stored once."""
        if name not in self._shared:
            self._shared.add(name)
            self.const(name, value, dtype)
        return name

    def node(
        self, op: str, inputs: list[str], name: str, outputs: int = 1, domain: str = "", **attrs
    ):
        outs = [f"{name}/output_{j}" for j in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, domain=domain, **attrs))
        return outs[0] if outputs == 1 else outs


def row_quantize(g: Graph, x: str, k: int, name: str, rows: str | None = None) -> tuple[str, str]:
    """x quantized per row, symmetric, as uint8 with zero point 128, and the row scales: MLAS has
    fast u8 x s8 kernels, while its s8 x s8 path measured 12x slower on AVX-512 VNNI.

    Every node here runs once per linear layer per step, and on many threads each costs a
    dispatch whatever its size, so the subgraph is kept to the fewest nodes that do the work:
    QuantizeLinear takes the row scales itself (one block per row). A row of zeros gets scale 0:
    its quantized values are then arbitrary, but the row rescale makes its result exactly 0.
    Inputs with the same rows (`rows` names them) share one zero-point tensor."""
    peak = g.node(
        "ReduceMax",
        [g.node("Abs", [x], f"{name}/Abs"), g.shared("/int8/last_axis", [-1], np.int64)],
        f"{name}/RowMax",
        keepdims=1,
    )
    made_rows = g.row_shapes.get(rows) if rows else None
    if made_rows:
        # Such rows can be none (an expert no token chose), and ONNX Runtime before 1.32 returns
        # an empty input unreduced: (0, k), which QuantizeLinear then refuses as a scale.
        peak = g.node("Reshape", [peak, made_rows], f"{name}/RowMaxShape")
    scale = g.node(
        "Mul", [peak, g.shared("/int8/inv_qmax", 1 / 127, np.float32)], f"{name}/RowScale"
    )
    # The zero point must have the scale's shape; its rows are only known at run time. Shared
    # zero points take it from the graph input that has those rows, not from a layer's
    # activations: a graph part (export/graph/parts.py) can then make its own from its inputs.
    zero = g.row_zero_points.get(rows) if rows else None
    if zero is None:
        if made_rows:
            prefix, rows_shape = rows, made_rows
        elif rows:
            prefix = f"/int8/{rows}"
            rows_shape = g.node(
                "Concat",
                [
                    g.node("Shape", [ROWS_OF[rows]], f"{prefix}/Shape"),
                    g.shared("/int8/one_row", [1], np.int64),
                ],
                f"{prefix}/RowsShape",
                axis=0,
            )
        else:
            prefix = name
            rows_shape = g.node("Shape", [scale], f"{prefix}/RowsShape")
        zero = g.node(
            "Expand",
            [g.shared("/int8/zero_point", 128, np.uint8), rows_shape],
            f"{prefix}/ZeroPoints",
        )
        if rows:
            g.row_zero_points[rows] = zero
    return g.node(
        "QuantizeLinear", [x, scale, zero], f"{name}/Quantize", axis=-1, block_size=k
    ), scale


def int8_weight(g: Graph, lin: Linear, name: str) -> str:
    """A per-channel linear's int8 W^T (K, N): its initializer, or for the n16k4 layout a
    transpose and reshape of it, constants that the session folds at load."""
    w = g.external(f"{name}.qweight", lin.weight)
    if lin.layout == KN:
        return w
    w = g.node("Transpose", [w], f"{name}/Unblock", perm=list(BLOCKED_TO_KN))
    return g.node("Reshape", [w, g.const(f"{name}/kn_shape", [lin.k, lin.n])], f"{name}/KN")


def int8_matmul(g: Graph, xq: str, lin: Linear, name: str) -> str:
    """xq @ W in units of xq's row scales; the channel scales are applied inside the GEMM's
    output stage (MLAS scales each tile while it is in cache)."""
    return g.node(
        "MatMulIntegerToFloat",
        [
            xq,
            int8_weight(g, lin, name),
            g.shared("/int8/one", 1.0, np.float32),
            g.external(f"{name}.scales", lin.scales),
            g.shared("/int8/zero_point", 128, np.uint8),
        ],
        f"{name}/MatMulIntegerToFloat",
        domain=MS,
    )


def to_float(g: Graph, x: str, name: str) -> str:
    """An int8 (or float16) tensor as float32. TensorRT takes int8 only into DequantizeLinear."""
    if g.tensorrt:
        return g.node(
            "DequantizeLinear",
            [x, g.shared("/trt/one", 1.0, np.float32), g.shared("/trt/zero_point", 0, np.int8)],
            f"{name}/DequantizeInt8",
        )
    return g.node("Cast", [x], f"{name}/Cast", to=TensorProto.FLOAT)


def _dequantized_matmul(g: Graph, x: str, lin: Linear, name: str) -> str:
    """x @ (W int8 * channel scales): weight-only int8 as TensorRT fuses it."""
    w = g.node(
        "DequantizeLinear",
        [
            int8_weight(g, lin, name),
            g.external(f"{name}.scales", lin.scales),
            g.const(f"{name}.zero_points", np.zeros(lin.n, np.int8), np.int8),
        ],
        f"{name}/DequantizeLinear",
        axis=1,
    )
    return g.node("MatMul", [x, w], f"{name}/MatMul")


def _int8_linear(g: Graph, x: str, lin: Linear, name: str, rows: str | None = None) -> str:
    xq, scale = row_quantize(g, x, lin.k, name, rows)
    return g.node("Mul", [int8_matmul(g, xq, lin, name), scale], f"{name}/RowRescale")


def gated_mlp(g: Graph, x: str, mlp: GatedMlp, name: str, rows: str | None = None) -> str:
    """down(silu(gate(x)) * up(x)). Gate and up are two matmuls, not one fused and split: the
    split copied the widest activation of the layer (4% of a prefill, 2 threads). With int8
    weights they share x's quantization, and up's output stays in units of x's row scales: the
    down projection quantizes its input per row, which no row's scale changes, so that scale is
    applied once to down's far narrower output instead."""
    gate, up, down = mlp.gate, mlp.up, mlp.down
    if g.tensorrt or not all(
        lin.per_channel and not lin.bias for lin in (gate, up, down)
    ):  # a bias is not in row-scale units
        act = g.node("Mul", [silu(g, linear(g, x, gate, f"{name}/gate_proj", rows), name),
                             linear(g, x, up, f"{name}/up_proj", rows)], f"{name}/Mul")
        return linear(g, act, down, f"{name}/down_proj", rows)
    xq, x_scale = row_quantize(g, x, gate.k, f"{name}/gate_up", rows)
    gated = g.node(
        "Mul",
        [int8_matmul(g, xq, gate, f"{name}/gate_proj"), x_scale],
        f"{name}/gate_proj/RowRescale",
    )
    act = g.node(
        "Mul", [silu(g, gated, name), int8_matmul(g, xq, up, f"{name}/up_proj")], f"{name}/Mul"
    )
    aq, act_scale = row_quantize(g, act, down.k, f"{name}/down_proj", rows)
    scale = g.node("Mul", [act_scale, x_scale], f"{name}/down_proj/RowScaleWithUp")
    return g.node(
        "Mul",
        [int8_matmul(g, aq, down, f"{name}/down_proj"), scale],
        f"{name}/down_proj/RowRescale",
    )


def silu(g: Graph, x: str, name: str) -> str:
    return g.node("Mul", [x, g.node("Sigmoid", [x], f"{name}/Sigmoid")], f"{name}/SiLU")


def linear(g: Graph, x: str, lin: Linear, name: str, rows: str | None = None) -> str:
    """`rows`: a name for the rows of x (e.g. "tokens"), shared by linears whose inputs have
    the same leading shape, so that they can share per-row constants."""
    if lin.per_channel:
        y = (
            _dequantized_matmul(g, x, lin, name)
            if g.tensorrt
            else _int8_linear(g, x, lin, name, rows)
        )
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


def embedding(g: Graph, ids: str, emb: Embedding) -> str:
    table = g.external("embed_tokens.weight", emb.table)
    if (
        g.tensorrt and emb.scales is not None
    ):  # TensorRT gathers no int8: the table dequantized first
        table = to_float(g, table, "/model/embed_tokens/table")
    rows = g.node("Gather", [table, ids], "/model/embed_tokens/Gather")
    if emb.scales is None:
        if emb.table.dtype != "float32":
            rows = g.node("Cast", [rows], "/model/embed_tokens/Cast", to=TensorProto.FLOAT)
        return rows
    scales = g.external("embed_tokens.scales", emb.scales)
    if not g.tensorrt:
        rows = g.node("Cast", [rows], "/model/embed_tokens/Cast", to=TensorProto.FLOAT)
    row_scales = g.node("Gather", [scales, ids], "/model/embed_tokens/GatherScales")
    return g.node("Mul", [rows, row_scales], "/model/embed_tokens/Dequantize")


def norm(g: Graph, x: str, weight_name: str, weight: Stored, name: str, eps: float) -> str:
    """RMS norm of x's last axis with the stored weight (initializer `weight_name`)."""
    w = g.external(weight_name, weight)
    if not g.tensorrt:
        return g.node("SimplifiedLayerNormalization", [x, w], name, axis=-1, epsilon=eps)
    mean_square = g.node(
        "ReduceMean",
        [g.node("Mul", [x, x], f"{name}/Square"), g.shared("/trt/last_axis", [-1], np.int64)],
        f"{name}/ReduceMean",
        keepdims=1,
    )
    rms = g.node(
        "Sqrt",
        [
            g.node(
                "Add", [mean_square, g.const(f"{name}/epsilon", eps, np.float32)], f"{name}/AddEps"
            )
        ],
        f"{name}/Sqrt",
    )
    return g.node("Mul", [g.node("Div", [x, rms], f"{name}/Div"), w], f"{name}/Scale")


def skip_norm(g: Graph, x: str, residual: str, weight_name: str, weight: Stored, name: str,
              eps: float) -> tuple[str, str]:
    """(RMS norm of residual + x, residual + x): one fused contrib op for ONNX Runtime."""
    if g.tensorrt:
        total = g.node("Add", [x, residual], f"{name}/ResidualAdd")
        return norm(g, total, weight_name, weight, name, eps), total
    h, _, _, total = g.node(
        "SkipSimplifiedLayerNormalization",
        [x, residual, g.external(weight_name, weight)],
        name,
        outputs=4,
        domain=MS,
        epsilon=eps,
    )
    return h, total


def logits(g: Graph, stream: str, norm_weight_name: str, final_norm: Stored, lm_head: Linear,
           eps: float) -> None:
    """The graph output `logits`: only the requested positions of the residual stream reach the
    final norm and the LM head."""
    pos = g.node("Unsqueeze", ["logits_positions", g.const("/model/axes_last", [-1])],
                 "/model/positions/Unsqueeze")
    picked = g.node("GatherND", [stream, pos], "/model/positions/GatherND", batch_dims=1)
    linear(
        g,
        norm(g, picked, norm_weight_name, final_norm, "/model/norm", eps),
        lm_head,
        "/lm_head",
        "positions",
    )
    g.nodes[-1].output[0] = "logits"  # the LM head's last node produces the graph output


def decoder_model(g: Graph, name: str, inputs: list, outputs: list,
                  boundaries: dict[int, list[str]]) -> onnx.ModelProto:
    """The model of g's nodes and initializers, with the layer boundaries that graph parts are
    cut at (graph/parts.py)."""
    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.initializers)
    opsets = ([helper.make_opsetid("", TENSORRT_OPSET)] if g.tensorrt
              else [helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)])
    return mark_boundaries(helper.make_model(
        graph,
        opset_imports=opsets,
        producer_name="edgeds",
        ir_version=10,
    ), boundaries)


@contextmanager
def accuracy_level(level: int):
    """MatMulNBits' accuracy level for the graphs written inside, restored after: 0 keeps the
    activations float (export --activations float), where level 4 rounds them to int8 per block
    of K (the MoE model's int8-wo: +0.111% perplexity at 0, 98.6% top-1; 97.7% at 4)."""
    global ACCURACY_LEVEL
    saved, ACCURACY_LEVEL = ACCURACY_LEVEL, level
    try:
        yield
    finally:
        ACCURACY_LEVEL = saved


def linear_op(lin: Linear, target: str = "onnxruntime") -> str:
    if target == "tensorrt":
        return ("DequantizeLinear (int8 per output channel, zero point 0) -> MatMul: weight-only, "
                "float activations" if lin.per_channel else "MatMul")
    if lin.per_channel:
        return (
            "com.microsoft.MatMulIntegerToFloat: int8 weights per output channel x uint8 "
            "activations per row (dynamic, symmetric)"
        )
    return f"com.microsoft.MatMulNBits accuracy_level={ACCURACY_LEVEL}" if lin.bits else "MatMul"
