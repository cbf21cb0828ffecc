"""Symmetric, blockwise weight-only quantization (INT8, INT4), in numpy.

Symmetric (zero point 0) on purpose: TensorRT takes only zero-point-0 INT8 weights, and one
scheme for every backend keeps an artifact portable. Blockwise along the input dimension: a
block of 128 costs 3% more bytes than per-channel and bounds the error of each block by its own
largest weight, so one outlier column cannot flatten a whole output row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ExportError

QMAX = {8: 127, 4: 7}


@dataclass(frozen=True)
class Scheme:
    """How the exporter stores weights: bits None means float (`float_dtype`)."""

    bits: int | None
    block_size: int
    float_dtype: str = "float32"
    embedding_bits: int | None = None

    @property
    def name(self) -> str:
        return f"int{self.bits}" if self.bits else {"float32": "fp32", "float16": "fp16"}[self.float_dtype]

    def manifest(self) -> dict:
        return {
            "weights": self.name,
            "symmetric": True,
            "granularity": "per-block along the input dimension" if self.bits else None,
            "block_size": self.block_size if self.bits else None,
            "scale_dtype": "float32",
            "embedding": f"int{self.embedding_bits} per-row" if self.embedding_bits else self.float_dtype,
            "lm_head": self.name,
        }


SCHEMES = {
    "int8": Scheme(bits=8, block_size=128, embedding_bits=8),
    "int4": Scheme(bits=4, block_size=32, embedding_bits=8),
    "fp16": Scheme(bits=None, block_size=0, float_dtype="float16"),
    "fp32": Scheme(bits=None, block_size=0, float_dtype="float32"),
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
    """blocks (..., size) float -> q_out int8 (..., size), s_out float32 (...), chunk by chunk of rows."""
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


def pack_matmulnbits(qw: QuantizedWeight) -> np.ndarray:
    """ONNX Runtime MatMulNBits layout: uint8 (N, blocks, block_size*bits/8), zero point implied
    at 2^(bits-1), so a symmetric value v is stored as v + 2^(bits-1)."""
    unsigned = (qw.q.astype(np.int16) + (1 << (qw.bits - 1))).astype(np.uint8)
    if qw.bits == 8:
        return unsigned
    low, high = unsigned[..., 0::2], unsigned[..., 1::2]
    return (low | (high << 4)).astype(np.uint8)
