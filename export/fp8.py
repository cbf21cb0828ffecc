"""DeepSeek's FP8 checkpoints: float8_e4m3fn weights with one `weight_scale_inv` per block.

V3, V3.1, R1 and R1-0528 are published this way (`quantization_config` in config.json; blocks of
128x128, the last block of a dimension partial when it is not a multiple of 128). A weight is
dequantized here, in numpy, one tensor at a time, as `fp8 value * scale_inv` of its block: the
exporter then quantizes it to its own scheme like any float weight, so no float copy of the
model is ever written or held.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import ExportError

FP8_DTYPE = "F8_E4M3"  # the safetensors name of torch.float8_e4m3fn
SCALE_SUFFIX = "_scale_inv"  # "X.weight" is scaled by "X.weight_scale_inv"
SCALE_DTYPES = {"F32": np.float32, "BF16": np.uint16}
SCALE_FORMATS = (None, "ue8m0")  # V3.1 stores power-of-two scales (8-bit exponent, no mantissa)


def _e4m3fn_table() -> np.ndarray:
    """float32 value of each of the 256 e4m3fn bytes: 1 sign, 4 exponent (bias 7), 3 mantissa
    bits; exponent 0 is subnormal; S.1111.111 is NaN; there is no infinity."""
    b = np.arange(256)
    sign = np.where(b & 0x80, -1.0, 1.0)
    exp, man = (b >> 3) & 0xF, b & 0x7
    value = np.where(exp == 0, man / 8 * 2.0**-6, (1 + man / 8) * 2.0 ** (exp - 7))
    value = np.where((b & 0x7F) == 0x7F, np.nan, sign * value)
    return value.astype(np.float32)


E4M3FN = _e4m3fn_table()


@dataclass(frozen=True)
class Fp8Config:
    """The checkpoint's `quantization_config`, validated."""

    block_rows: int
    block_cols: int
    scale_fmt: str | None

    @staticmethod
    def parse(q: object) -> Fp8Config:
        if not isinstance(q, dict):
            raise ExportError(
                f"config.json quantization_config must be an object, got {type(q).__name__}"
            )
        method = q.get("quant_method")
        if method != "fp8":
            raise ExportError(
                f"quantization_config quant_method '{method}' is not supported; supported: "
                "fp8 (DeepSeek's block-scaled float8_e4m3fn)"
            )
        fmt = q.get("fmt", "e4m3")
        if fmt != "e4m3":
            raise ExportError(f"quantization_config fmt '{fmt}' is not supported; supported: e4m3")
        scheme = q.get("activation_scheme", "dynamic")
        if scheme != "dynamic":
            raise ExportError(
                f"quantization_config activation_scheme '{scheme}' is not supported; "
                "supported: dynamic"
            )
        scale_fmt = q.get("scale_fmt")
        if scale_fmt not in SCALE_FORMATS:
            raise ExportError(
                f"quantization_config scale_fmt '{scale_fmt}' is not supported; supported: "
                "ue8m0 or none"
            )
        block = q.get("weight_block_size")
        if (
            not isinstance(block, list)
            or len(block) != 2
            or not all(type(b) is int and 0 < b <= 1 << 16 for b in block)
        ):
            raise ExportError(
                f"quantization_config weight_block_size must be two positive integers "
                f"[rows, cols], got {block!r}"
            )
        return Fp8Config(block[0], block[1], scale_fmt)

    def scale_shape(self, shape: tuple[int, ...]) -> tuple[int, int]:
        n, k = shape
        return math.ceil(n / self.block_rows), math.ceil(k / self.block_cols)

    def manifest(self) -> dict:
        return {
            "format": "fp8 e4m3fn, block-scaled",
            "weight_block_size": [self.block_rows, self.block_cols],
            "scale_fmt": self.scale_fmt,
            "dequantized": "per tensor at export, then quantized as `quantization` says",
        }


def check_scales(name: str, scales: np.ndarray, expected: tuple[int, int]) -> None:
    """A scale tensor fit for `name`: the block grid's shape, finite, not negative."""
    if scales.shape != expected:
        raise ExportError(
            f"scale tensor '{name}' has shape {list(scales.shape)}; the weight's "
            f"blocks need {list(expected)}"
        )
    if not np.isfinite(scales).all():
        raise ExportError(f"scale tensor '{name}' holds NaN or infinity; the checkpoint is corrupt")
    if (scales < 0).any():
        raise ExportError(
            f"scale tensor '{name}' holds a negative scale; the checkpoint is corrupt"
        )


def dequantize(raw: np.ndarray, scales: np.ndarray, block_rows: int, block_cols: int) -> np.ndarray:
    """float32 (N, K) of fp8 bytes `raw` (N, K) times each block's scale (ceil(N/br), ceil(K/bc)),
    one block row at a time so no second full-size temporary is made."""
    w = E4M3FN[raw]
    k = raw.shape[1]
    for i in range(scales.shape[0]):
        rows = w[i * block_rows : (i + 1) * block_rows]
        rows *= np.repeat(scales[i], block_cols)[:k]
    return w
