"""A second ONNX graph for decode steps of a few sequences: the int8 weights as MatMulNBits.

Why: the integer GEMM that makes prefill and large batches fast (MatMulIntegerToFloat, with
per-row activation quantization around it) is slower on one row than ONNX Runtime's
MatMulNBits kernel, which streams the same int8 weights with fewer nodes around it: a batch-1
step took 40-60 ms against 63-70 ms on a 2-core EPYC, and 21-22 ms against 28-38 ms on a
16-core AMX Xeon; from a few rows on the integer GEMM wins (benchmarks/results/).

The graph is the main one with every linear layer repacked, not re-quantized: the same int8
values and per-channel scales (each channel's scale repeated over MatMulNBits' blocks), so
both graphs hold identical weights and differ only in how activations are rounded. Everything
else (embedding table, norms, biases, rotary tables) stays where the main graph reads it, in
the main weight file; only the repacked weights are new, about as many bytes as the main ones.
The runtime binds both graphs to the same KV cache: prefill runs the main graph, decode steps
of at most the profile's `small_batch_max` sequences run this one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, is_dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from .graph.onnx_ops import linear_op
from .quantize import block_size_for
from .tensors import N16K4, Linear, ModelTensors, Stored, unblocked
from .weight_file import WeightFile

FILE = "decode_small.onnx"
DATA_FILE = "decode_small.onnx.data"
# The scales repeat per block, so any size gives the same weights; the kernel quantizes the
# activations per block. 256 against 128 (int8-wo's): as fast or faster at batch 1, 4 and 8 in
# three rounds on the AMX Xeon, and its sessions load faster on two cores (session 9 results).
BLOCK_SIZE = 256


def repack(lin: Linear, source: WeightFile, out: WeightFile) -> Linear:
    """An int8 per-channel linear (W^T int8 (K, N), scales (N,)) as MatMulNBits' uint8 (N, blocks,
    block) with value + 128 and (N, blocks) scales, written to `out`."""
    w = source.view(lin.weight.offset, np.dtype(lin.weight.dtype), lin.weight.shape)
    if lin.layout == N16K4:
        w = unblocked(w)  # (K, N) int8
    scales = source.view(lin.scales.offset, np.dtype(lin.scales.dtype), lin.scales.shape)
    size = block_size_for(lin.k, BLOCK_SIZE)
    # v + 128 of an int8 is its two's-complement byte with the top bit flipped: one uint8 copy
    # (the transpose), no wider temporary, even for a 70B model's LM head.
    packed = np.ascontiguousarray(w.view(np.uint8).T)
    np.bitwise_xor(packed, np.uint8(0x80), out=packed)
    packed = packed.reshape(lin.n, lin.k // size, size)
    blocks = np.ascontiguousarray(np.repeat(scales[:, None], lin.k // size, axis=1))

    def stored(array: np.ndarray) -> Stored:
        offset, _ = out.append(array)
        return Stored(offset, str(array.dtype), tuple(array.shape), out.path.name)

    return Linear(lin.n, lin.k, stored(packed), stored(blocks), 8, size, lin.bias)


def repacked(record, source: WeightFile, out: WeightFile):
    """`record` (a ModelTensors, a layer, an MLP, a tuple of experts, ...) with every int8
    per-channel linear in it repacked; whatever else it holds is returned as it is."""
    if isinstance(record, Linear):
        return repack(record, source, out) if record.per_channel else record
    if isinstance(record, tuple):
        return tuple(repacked(r, source, out) for r in record)
    if is_dataclass(record) and not isinstance(record, Stored):
        return replace(
            record,
            **{f.name: repacked(getattr(record, f.name), source, out) for f in fields(record)},
        )
    return record


def write_small_batch_graph(onnx_graph: Callable[..., onnx.ModelProto], spec, tensors: ModelTensors,
                            folder: Path, source: WeightFile, kv_cache: str) -> dict:
    """Writes the graph (`onnx_graph`: the attention kind's builder of the main graph) and its
    weight file into `folder`; returns its manifest entry."""
    out = WeightFile(folder / DATA_FILE)
    small = repacked(tensors, source, out)
    out.close()
    model = onnx_graph(spec, small, source.path.name, kv_cache=kv_cache)
    onnx.save_model(model, str(folder / FILE))
    return {
        "file": FILE,
        "data_file": DATA_FILE,
        "linear": linear_op(small.lm_head)
        + " (the main graph's int8 weights and scales, repacked)",
        "use": "decode steps of a few sequences; same inputs, outputs and KV cache as the main "
               "graph",
    }
