"""The records of every tensor the graphs need, and the writer that stores them.

A `ModelTensors` says where each tensor lies in the weight file; the ONNX and OpenVINO writers
only assemble graphs around those records. Each attention kind reads its checkpoint into them
(dense/tensors.py, mla/tensors.py) with a `TensorWriter`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np

from .checkpoint import Checkpoint
from .quantize import Scheme, pack_matmulnbits, quantize, quantize_columns, quantize_rows
from .weight_file import WeightFile


@dataclass(frozen=True)
class Stored:
    """One tensor in a weight file: the artifact's main one, or `file` where named."""

    offset: int
    dtype: str
    shape: tuple[int, ...]
    file: str | None = None


# A per-channel int8 weight's layouts: "kn", W^T (K, N) row-major, as the graphs' integer
# matmuls take it; "n16k4", the native GEMM's own: (N/16, K/4, 16, 4), each 16-column block's
# four consecutive K values of a column side by side (what VNNI's dpbusd and AMX's B tiles read),
# so that the native backend reads the weights where they lie in the artifact's memory map
# instead of packing a copy at load. The graphs undo it with BLOCKED_TO_KN (a transpose of
# constants, folded when the session or model is compiled).
KN, N16K4 = "kn", "n16k4"
BLOCKED_TO_KN = (1, 3, 0, 2)  # (N/16, K/4, 16, 4) -> (K/4, 4, N/16, 16), then reshaped (K, N)


def _blocked(q: np.ndarray) -> np.ndarray:
    """int8 W^T (K, N) in the n16k4 layout."""
    k, n = q.shape
    return np.ascontiguousarray(q.reshape(k // 4, 4, n // 16, 16).transpose(2, 0, 3, 1))


def unblocked(p: np.ndarray) -> np.ndarray:
    """An n16k4 array back as W^T (K, N) (a view where numpy can, else a copy)."""
    nb, kb = p.shape[:2]
    return p.transpose(BLOCKED_TO_KN).reshape(kb * 4, nb * 16)


@dataclass(frozen=True)
class Linear:
    """y = x @ W^T + b. Blockwise (block_size > 0): `weight` is MatMulNBits-packed uint8
    (N, blocks, bytes) with `scales` (N,blocks). Per channel (bits 8, block_size 0): `weight` is
    int8 W^T (K, N) with `scales` (N,); in the n16k4 `layout` it is (N/16, K/4, 16, 4), with each
    column's sum `col_sums` (N,) int32 beside it (what the GEMM's zero point subtracts), so that
    nothing of it is read at load. Float: `weight` is W^T, shape (K, N)."""

    n: int
    k: int
    weight: Stored
    scales: Stored | None = None
    bits: int | None = None
    block_size: int = 0
    bias: Stored | None = None
    layout: str = KN
    col_sums: Stored | None = None

    @property
    def per_channel(self) -> bool:
        """int8 W^T with one scale per output channel: an integer matmul's weights."""
        return bool(self.bits) and not self.block_size


@dataclass(frozen=True)
class Embedding:
    """Float table (V, H), or int8 rows (V, H) with per-row scales (V, 1)."""

    table: Stored
    scales: Stored | None = None


@dataclass(frozen=True)
class GatedMlp:
    """down(silu(gate(x)) * up(x))."""

    gate: Linear
    up: Linear
    down: Linear


L = TypeVar("L")


@dataclass(frozen=True)
class ModelTensors(Generic[L]):
    """Every tensor of a decoder; the layer record is the attention kind's own
    (dense.tensors.Layer, mla.tensors.MlaLayer)."""

    embed: Embedding
    layers: tuple[L, ...]
    final_norm: Stored
    lm_head: Linear
    cos: Stored
    sin: Stored


class TensorWriter:
    """Stores arrays in the weight file as `Stored` records, quantized as the scheme says."""

    def __init__(self, ckpt: Checkpoint, scheme: Scheme, out: WeightFile, blocked: bool = False):
        """blocked: per-channel int8 weights stored in the native GEMM's layout (N16K4) where
        their widths allow it."""
        self.ckpt, self.scheme, self.out, self.blocked = ckpt, scheme, out, blocked

    def store(self, array: np.ndarray) -> Stored:
        offset, _ = self.out.append(array)
        return Stored(offset, str(array.dtype), tuple(array.shape))

    def read(self, name: str) -> np.ndarray:
        return self.ckpt.tensor(name)

    def linear(self, weight_names: list[str], bias_names: list[str | None] | None = None) -> Linear:
        """Read, concatenate (fused projections) and store the named weights as one linear layer."""
        parts = [self.read(n) for n in weight_names]
        w = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)  # no copy of one
        bias = None
        if bias_names and any(bias_names):
            parts = [
                self.read(b) if b else np.zeros(self.read(wn).shape[0], np.float32)
                for wn, b in zip(weight_names, bias_names)
            ]
            bias = self.store(np.concatenate(parts).astype(np.float32))
        return self.linear_from(w, bias)

    def mlp(self, gate: str, up: str, down: str) -> GatedMlp:
        return GatedMlp(self.linear([gate]), self.linear([up]), self.linear([down]))

    def linear_from(self, w: np.ndarray, bias: Stored | None = None) -> Linear:
        """Store a (N, K) weight already in memory: quantized and packed, or transposed float."""
        n, k = w.shape
        if self.scheme.per_channel:
            q, scales = quantize_columns(w)
            if self.blocked and n % 16 == 0 and k % 4 == 0:
                sums = q.sum(axis=0, dtype=np.int32)
                return Linear(n, k, self.store(_blocked(q)), self.store(scales), 8, 0, bias,
                              N16K4, self.store(sums))
            return Linear(n, k, self.store(q), self.store(scales), 8, 0, bias)
        if self.scheme.bits:
            qw = quantize(w, self.scheme.bits, self.scheme.block_size)
            return Linear(
                n,
                k,
                self.store(pack_matmulnbits(qw)),
                self.store(qw.scales),
                qw.bits,
                qw.block_size,
                bias,
            )
        return Linear(
            n, k, self.store(np.ascontiguousarray(w.T.astype(self.scheme.float_dtype))), bias=bias
        )

    def embedding(self, name: str) -> Embedding:
        table = self.read(name)
        if self.scheme.embedding_bits:
            q, scales = quantize_rows(table, self.scheme.embedding_bits)
            return Embedding(self.store(q), self.store(scales))
        return Embedding(self.store(table.astype(self.scheme.table_dtype)))


TENSOR_INDEX = "tensors.json"


def write_tensor_index(tensors: ModelTensors, folder: Path) -> str:
    """Where each tensor lies in the weight file, by role (the ModelTensors record as JSON, its
    layers dense or MLA: mla.tensors.MlaLayer): what the native backends read the weights by,
    with no graph to parse."""
    (folder / TENSOR_INDEX).write_text(json.dumps(asdict(tensors)) + "\n", encoding="utf-8")
    return TENSOR_INDEX
