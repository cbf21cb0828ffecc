"""The OpenVINO graph pieces every decoder IR shares: linear layers on compressed weights, the
gated MLP, RMS norm, the embedding.

Weights stay compressed: a u8/u4 constant, a zero point of 2^(bits-1), and per-block scales
feed each MatMul; OpenVINO's CPU plugin recognizes this pattern and runs int8/int4 kernels
without ever materializing float weights. Constants share the weight file's memory map.
"""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from ..tensors import BLOCKED_TO_KN, KN, Embedding, GatedMlp, Linear, Stored
from ..weight_file import WeightFile

# The IR's inputs, as OpenVINO GenAI's stateful decoders name them (plus logits_positions).
INPUTS = ["input_ids", "attention_mask", "position_ids", "beam_idx", "logits_positions"]


class Builder:
    """Graph pieces over the weight file's tensors, which stay compressed in the IR."""

    def __init__(self, weights: WeightFile):
        self.weights = weights

    def const(self, s: Stored, shape: tuple[int, ...] | None = None) -> ov.Node:
        view = self.weights.view(s.offset, np.dtype(s.dtype), shape or s.shape)
        return ov.op.Constant(view, shared_memory=True)

    def int8_weight(self, lin: Linear) -> ov.Node:
        """A per-channel linear's int8 W^T (K, N); the n16k4 layout undone by constant ops that
        the compiled model folds (an unblocked copy here would hold every expert in memory)."""
        w = self.const(lin.weight)
        if lin.layout == KN:
            return w
        w = ops.transpose(w, ops.constant(np.array(BLOCKED_TO_KN, np.int64)))
        return ops.reshape(w, ops.constant(np.array([lin.k, lin.n], np.int64)), False)

    def mlp(self, x, mlp: GatedMlp):
        return self.linear(
            ops.multiply(ops.swish(self.linear(x, mlp.gate)), self.linear(x, mlp.up)), mlp.down
        )

    def linear(self, x, lin: Linear):
        if lin.per_channel:  # int8 W^T (K, N), one scale per output channel
            weight = ops.multiply(ops.convert(self.int8_weight(lin), np.float32),
                                  self.const(lin.scales, (1, lin.n)))
            y = ops.matmul(x, weight, False, False)
        elif lin.bits:
            blocks = lin.k // lin.block_size
            if lin.bits == 8:
                w = self.const(lin.weight, (lin.n, blocks, lin.block_size))
            else:
                packed = self.weights.view(lin.weight.offset, np.uint8, lin.weight.shape)
                w = ov.op.Constant(
                    ov.Tensor(packed, ov.Shape([lin.n, blocks, lin.block_size]), ov.Type.u4)
                )
            if lin.bits == 8:
                zero = ops.constant(np.uint8(128))
            else:
                zero = ov.op.Constant(ov.Type.u4, ov.Shape([]), [8])
            centered = ops.subtract(ops.convert(w, np.float32), ops.convert(zero, np.float32))
            scaled = ops.multiply(centered, self.const(lin.scales, (lin.n, blocks, 1)))
            weight = ops.reshape(scaled, ops.constant(np.array([lin.n, lin.k], np.int64)), False)
            y = ops.matmul(x, weight, False, True)
        else:
            weight = self.const(lin.weight)
            if lin.weight.dtype != "float32":
                weight = ops.convert(weight, np.float32)
            y = ops.matmul(x, weight, False, False)
        if lin.bias:
            y = ops.add(y, self.const(lin.bias))
        return y

    def rms_norm(self, x, weight: Stored, eps: float):
        var = ops.reduce_mean(
            ops.power(x, ops.constant(np.float32(2.0))), ops.constant(np.array([-1])), True
        )
        inv = ops.divide(
            ops.constant(np.float32(1.0)), ops.sqrt(ops.add(var, ops.constant(np.float32(eps))))
        )
        return ops.multiply(ops.multiply(x, inv), self.const(weight))

    def embedding(self, ids, emb: Embedding):
        rows = ops.gather(self.const(emb.table), ids, ops.constant(np.int64(0)))
        if emb.table.dtype != "float32":
            rows = ops.convert(rows, np.float32)
        if emb.scales is None:
            return rows
        row_scales = ops.gather(self.const(emb.scales), ids, ops.constant(np.int64(0)))
        return ops.multiply(rows, row_scales)


def rotate_half(x, half: int):
    x1, x2 = ops.variadic_split(
        x, ops.constant(np.int64(-1)), ops.constant(np.array([half, half]))
    ).outputs()
    return ops.concat([ops.negative(x2), x1], -1)


def i64(values) -> ov.Node:
    return ops.constant(np.array(values, np.int64))


def f32(value: float) -> ov.Node:
    return ops.constant(np.float32(value))
