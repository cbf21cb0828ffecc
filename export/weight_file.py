"""An append-only binary file of tensors: the external data of the ONNX graph.

Tensors are written as soon as they are quantized and then dropped, so export memory stays at
about one layer, whatever the model size. The OpenVINO writer maps the same file back to build
its constants, so both formats hold bit-identical quantized weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ALIGN = 64


class WeightFile:
    def __init__(self, path: Path):
        self.path = path
        self._f = open(path, "wb")
        self._offset = 0
        self._map: np.memmap | None = None

    def append(self, array: np.ndarray) -> tuple[int, int]:
        """Write one tensor; returns (offset, length) in bytes."""
        data = np.ascontiguousarray(array)
        pad = (-self._offset) % ALIGN
        if pad:
            self._f.write(b"\0" * pad)
            self._offset += pad
        offset = self._offset
        self._f.write(memoryview(data).cast("B"))
        self._offset += data.nbytes
        return offset, data.nbytes

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def view(self, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """A read-only view of a written tensor, backed by the file (no copy in memory)."""
        self.close()
        if self._map is None:
            self._map = np.memmap(
                self.path, dtype=np.uint8, mode="c"
            )  # copy-on-write: OpenVINO wants a writable buffer; nothing writes
        count = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return self._map[offset : offset + count].view(dtype).reshape(shape)
