"""Symmetric weight quantization (INT8 per output channel, INT4 blockwise), in numpy.

Symmetric (zero point 0) on purpose: TensorRT takes only zero-point-0 INT8 weights, and one
scheme for every backend keeps an artifact portable.

INT8 is per output channel so that the graph can run integer matmuls (MatMulIntegerToFloat:
MLAS's u8 x s8 VNNI/AMX kernels) with int8 activations: a scale that is constant along the input
dimension can be applied after the whole dot product is accumulated in int32. On the 1.5B
shape that runs 8-128 rows 1.1-1.8x faster than blockwise MatMulNBits (one row: up to 20% slower)
(benchmarks/results/ort_int8_kernels.md). INT4 stays blockwise along the input dimension
(block 32, MatMulNBits): 4 bits per channel would flatten a row to 15 levels.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .errors import ExportError

QMAX = {8: 127, 4: 7}


@dataclass(frozen=True)
class Scheme:
    """How the exporter stores weights: bits None means float (`float_dtype`); block_size 0
    means one scale per output channel."""

    name: str  # what --weights and the manifest call it
    bits: int | None
    block_size: int
    float_dtype: str = "float32"
    embedding_bits: int | None = None
    embedding_dtype: str | None = None  # a float table's dtype where it is not float_dtype
    activations: str | None = None  # int8 only: manifest Quantization.activations

    @property
    def per_channel(self) -> bool:
        return self.bits is not None and self.block_size == 0

    def manifest(self) -> dict:
        return {
            "weights": self.name,
            "symmetric": True,
            "granularity": (
                None
                if not self.bits
                else "per output channel"
                if self.per_channel
                else "per-block along the input dimension"
            ),
            "block_size": self.block_size if self.bits and not self.per_channel else None,
            "scale_dtype": "float32",
            "embedding": f"int{self.embedding_bits} per-row"
            if self.embedding_bits
            else self.table_dtype,
            "lm_head": self.name,
            **({"activations": self.activations} if self.activations else {}),
        }

    @property
    def table_dtype(self) -> str:
        """A float embedding table's dtype."""
        return self.embedding_dtype or self.float_dtype

    def with_options(self, embedding: str | None = None, activations: str | None = None) -> Scheme:
        """The scheme with export's --embedding (int8 or a float dtype for the table) and
        --activations (int8 weights: what the native decoder rounds matmul inputs to)."""
        scheme = self
        if embedding is not None:
            if embedding not in EMBEDDINGS:
                raise ExportError(f"unknown embedding '{embedding}'; choose from "
                                  f"{', '.join(EMBEDDINGS)}")
            if embedding == "int8":
                scheme = replace(scheme, embedding_bits=8, embedding_dtype=None)
            else:
                scheme = replace(scheme, embedding_bits=None, embedding_dtype=embedding)
        if activations is not None:
            if activations not in ACTIVATIONS:
                raise ExportError(f"unknown activations '{activations}'; choose from "
                                  f"{', '.join(ACTIVATIONS)}")
            if (activations == "float") != (self.name in ("int8-wo", "int4")) or self.bits is None:
                raise ExportError(f"--activations {activations} is not for --weights {self.name}: "
                                  "int8 or int16 go with int8, float with int8-wo or int4")
            scheme = replace(scheme, activations="float" if activations == "float"
                             else f"{activations} per row")
        return scheme


EMBEDDINGS = ("int8", "float16", "float32")  # export --embedding: the table per row, or float
# export --activations: int8 weights' rows as int8 or int16 (native); MatMulNBits' float
ACTIVATIONS = ("int8", "int16", "float")


SCHEMES = {
    "int8": Scheme("int8", bits=8, block_size=0, embedding_bits=8),
    # Weight-only INT8 (blockwise, float activations in MatMulNBits' own int8 blocks of 128):
    # closest to the float model; as fast or faster at one row, 1.1-1.8x slower at 8-128 rows
    # than "int8".
    "int8-wo": Scheme("int8-wo", bits=8, block_size=128, embedding_bits=8),
    "int4": Scheme("int4", bits=4, block_size=32, embedding_bits=8),
    "fp16": Scheme("fp16", bits=None, block_size=0, float_dtype="float16"),
    "fp32": Scheme("fp32", bits=None, block_size=0, float_dtype="float32"),
}


@dataclass(frozen=True)
class QuantizedWeight:
    """q: int8 values of shape (N, blocks, block_size); scales: float32 (N, blocks)."""

    q: np.ndarray
    scales: np.ndarray
    bits: int

    @property
    def shape(self) -> tuple[int, int]:
        n, blocks, size = self.q.shape
        return n, blocks * size

    @property
    def block_size(self) -> int:
        return self.q.shape[2]

    def dequantize(self) -> np.ndarray:
        return (self.q.astype(np.float32) * self.scales[:, :, None]).reshape(self.shape)


def block_size_for(k: int, wanted: int) -> int:
    """The largest power of two <= wanted, >= 16, that divides k (what MatMulNBits accepts)."""
    size = wanted
    while size >= 16:
        if k % size == 0:
            return size
        size //= 2
    raise ExportError(f"input dimension {k} is not a multiple of 16; cannot quantize blockwise")


ROWS_PER_CHUNK = 4096  # bounds the float temporaries to a few rows, not a whole vocabulary


def _quantize_blocks(blocks: np.ndarray, bits: int, q_out: np.ndarray, s_out: np.ndarray) -> None:
    """blocks (..., size) float -> q_out int8 (..., size), s_out float32 (...), chunk by chunk of
    rows."""
    for start in range(0, blocks.shape[0], ROWS_PER_CHUNK):
        chunk = blocks[start : start + ROWS_PER_CHUNK].astype(np.float32, copy=False)
        scales = np.abs(chunk).max(axis=-1) / np.float32(QMAX[bits])
        safe = np.where(scales == 0, np.float32(1.0), scales)
        scaled = chunk / safe[..., None]
        np.rint(scaled, out=scaled)
        np.clip(scaled, -QMAX[bits], QMAX[bits], out=scaled)
        q_out[start : start + ROWS_PER_CHUNK] = scaled
        s_out[start : start + ROWS_PER_CHUNK] = scales


def quantize(w: np.ndarray, bits: int, block_size: int) -> QuantizedWeight:
    """Quantize a (N, K) float weight to `bits`, symmetric, with blocks along K."""
    n, k = w.shape
    size = block_size_for(k, block_size)
    blocks = w.reshape(n, k // size, size)
    q = np.empty(blocks.shape, np.int8)
    scales = np.empty(blocks.shape[:2], np.float32)
    _quantize_blocks(blocks, bits, q, scales)
    return QuantizedWeight(q=q, scales=scales, bits=bits)


def quantize_rows(table: np.ndarray, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric quantization of an embedding table: (int8 (V, H), float32 (V, 1))."""
    q = np.empty(table.shape, np.int8)
    scales = np.empty((table.shape[0], 1), np.float32)
    _quantize_blocks(table, bits, q, scales[:, 0])
    return q, scales


def quantize_columns(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel INT8 of a (N, K) weight, laid out for x @ W: (int8 (K, N), float32
    (N,))."""
    q, scales = quantize_rows(w, 8)
    return np.ascontiguousarray(q.T), scales[:, 0]


def quantize_per_column(matrices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """INT8 per column of each (rows, cols) matrix of a (H, rows, cols) stack, for x @ W:
    (int8 (H, rows, cols), float32 (H, 1, cols))."""
    scales = (np.abs(matrices).max(axis=1, keepdims=True) / 127).astype(np.float32)
    q = np.clip(np.rint(matrices / np.where(scales == 0, 1, scales)), -127, 127).astype(np.int8)
    return q, scales


def pack_matmulnbits(qw: QuantizedWeight) -> np.ndarray:
    """ONNX Runtime MatMulNBits layout: uint8 (N, blocks, block_size*bits/8), zero point implied
    at 2^(bits-1), so a symmetric value v is stored as v + 2^(bits-1)."""
    unsigned = (qw.q.astype(np.int16) + (1 << (qw.bits - 1))).astype(np.uint8)
    if qw.bits == 8:
        return unsigned
    low, high = unsigned[..., 0::2], unsigned[..., 1::2]
    return (low | (high << 4)).astype(np.uint8)
