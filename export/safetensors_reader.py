"""A minimal safetensors reader: header JSON, then each tensor read with plain file reads.

Plain reads instead of a memory map keep the checkpoint out of the process's resident memory
(a mapped 15 GB checkpoint would count fully toward RSS once read), and bf16 is widened to
float32 here with numpy, so reading needs no torch (FP8 bytes are handed over raw, for
export/fp8.py to scale). The format holds no code: nothing to unpickle.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np

from .errors import ExportError

DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}
# Stored as raw bytes and decoded by the caller with its scales (export/fp8.py).
RAW_DTYPES = {"F8_E4M3": np.uint8}
KNOWN = {**DTYPES, **RAW_DTYPES}
MAX_HEADER = 100 << 20


class SafetensorsFile:
    def __init__(self, path: Path):
        self.path = path
        size = path.stat().st_size
        try:
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                if n > min(MAX_HEADER, size - 8):
                    raise ValueError("header length out of range")
                header = json.loads(f.read(n))
        except (struct.error, ValueError, UnicodeDecodeError) as exc:
            raise ExportError(f"{path.name} is not a valid safetensors file ({exc})") from exc
        header.pop("__metadata__", None)
        self.data_start = 8 + n
        self.entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, meta in header.items():
            start, end = meta["data_offsets"]
            if self.data_start + end > size or end < start:
                raise ExportError(
                    f"{path.name} is truncated or corrupt (tensor '{name}' lies past its end)"
                )
            known = KNOWN.get(meta["dtype"])
            expected = math.prod(meta["shape"]) * np.dtype(known or np.uint8).itemsize
            if known is not None and end - start != expected:
                raise ExportError(f"{path.name} is corrupt (tensor '{name}' has {end - start} "
                                  f"bytes for shape {meta['shape']} of {meta['dtype']})")
            self.entries[name] = (meta["dtype"], tuple(meta["shape"]), start, end)

    def keys(self) -> list[str]:
        return list(self.entries)

    def dtype(self, name: str) -> str:
        return self.entries[name][0]

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name][1]

    def read_raw(self, name: str) -> np.ndarray:
        """An FP8 tensor's bytes, uint8 of its shape (decoded with its scales by the caller)."""
        dtype, shape, _, _ = self.entries[name]
        if dtype not in RAW_DTYPES:
            raise ExportError(f"tensor '{name}' has dtype {dtype}, not {', '.join(RAW_DTYPES)}")
        return self._bytes(name).view(RAW_DTYPES[dtype]).reshape(shape)

    def read(self, name: str) -> np.ndarray:
        """The tensor as float32 (widened from bf16/f16)."""
        dtype, shape, _, _ = self.entries[name]
        if dtype not in DTYPES:
            raise ExportError(f"tensor '{name}' has dtype {dtype}; supported: {', '.join(DTYPES)}")
        values = self._bytes(name).view(DTYPES[dtype]).reshape(shape)
        if dtype == "BF16":  # bf16 is the top half of a float32; shifted in place, no 2nd copy
            wide = values.astype(np.uint32)
            wide <<= 16
            return wide.view(np.float32)
        return values.astype(np.float32, copy=False)

    def _bytes(self, name: str) -> np.ndarray:
        _, _, start, end = self.entries[name]
        raw = np.empty(end - start, np.uint8)
        with open(self.path, "rb") as f:
            f.seek(self.data_start + start)
            if f.readinto(memoryview(raw)) != raw.size:
                raise ExportError(f"{self.path.name} is truncated (tensor '{name}')")
        return raw
