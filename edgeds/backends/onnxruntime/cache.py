"""The ONNX Runtime backend's KV cache: per layer a key and a value buffer (per-head layouts), or
one MLA latent buffer that serves as both; numpy arrays, or OrtValues in device memory. The
sessions read and write these buffers in place, bound by address (binding.py)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from ...manifest import KvLayout
from ..slots import grown, loaded_rows_stop


class Cache:
    def __init__(self, layout: KvLayout, memory: tuple[str, int] | None):
        """`memory`: None for numpy buffers, else (device, id) of the OrtValues."""
        self.layout, self.memory = layout, memory
        self.dtype = np.dtype(layout.dtype)  # int8: quantized by the graph
        self.latent = layout.buffers == 1
        self.keys: list = []
        self.values: list = []
        self.batch_size = self.capacity = 0

    def allocate(self, batch_size: int, capacity: int) -> None:
        """Buffers for `batch_size` slots of `capacity` tokens (kept where the sizes are the
        same: a slot's rows past its length are never read)."""
        shape = self.layout.shape(batch_size, capacity)
        if self.batch_size != batch_size or self.capacity != capacity:
            layers = range(self.layout.layers)
            # The old cache goes before the new one comes: no peak of both.
            self.keys = self.values = None
            self.keys = [self._zeros(shape) for _ in layers]
            self.values = [] if self.latent else [self._zeros(shape) for _ in layers]
        self.batch_size, self.capacity = batch_size, capacity

    def grow(self, capacity: int) -> bool:
        """Enlarge every buffer to `capacity` tokens, keeping what it holds; False if it already
        holds that many."""
        if capacity <= self.capacity:
            return False
        for caches in (self.keys, self.values):
            # One layer at a time: the old buffer goes as the new one comes. A device buffer
            # comes over to the host and back: grows are rare.
            for i in range(len(caches)):
                old = caches[i] if isinstance(caches[i], np.ndarray) else caches[i].numpy()
                caches[i] = self._on_device(grown(old, capacity, token_axis=2))
        self.capacity = capacity
        return True

    def bindings(self) -> list[tuple[object, list[str], list[str]]]:
        """(buffer, graph inputs, graph outputs) bound to it."""
        if self.latent:
            return [(c, [f"past_latent.{i}"], [f"present_latent.{i}", f"present_latent_alias.{i}"])
                    for i, c in enumerate(self.keys)]
        return [(c, [f"past_{kind}.{i}"], [f"present_{kind}.{i}"])
                for kind, caches in (("key", self.keys), ("value", self.values))
                for i, c in enumerate(caches)]

    def rows(self, cache, rows: slice) -> tuple[int, list[int]]:
        """Address and shape of a cache buffer's rows (slots)."""
        if isinstance(cache, np.ndarray):
            view = cache[rows]
            return view.ctypes.data, list(view.shape)
        shape = cache.shape()
        row_bytes = int(np.prod(shape[1:])) * self.dtype.itemsize
        return cache.data_ptr() + rows.start * row_bytes, [rows.stop - rows.start, *shape[1:]]

    def fresh(self, prompts: int, longest: int) -> list[np.ndarray]:
        """One host array per buffer to receive a fresh prompt's keys and values (int8-cache
        graphs return them instead of writing the cache)."""
        return [np.empty(self.layout.shape(prompts, longest), self.dtype) for _ in self.bindings()]

    def store(self, rows: slice, fresh: list[np.ndarray]) -> None:
        """Copy what `fresh` received into the slots' first positions."""
        for (cache, _, _), new in zip(self.bindings(), fresh):
            cache[rows, :, :new.shape[2]] = new

    def slot_rows(self, slot: int, start: int, stop: int) -> np.ndarray:
        """A copy of positions [start, stop) of a slot: [buffers, layers, heads, tokens, dim]
        (numpy buffers only)."""
        return np.stack([np.stack([c[slot, :, start:stop] for c in caches])
                         for caches in self._host_buffers()])

    def load_slot_rows(self, slot: int, start: int, rows: np.ndarray) -> None:
        """Write rows (as slot_rows gives them) at positions start.. of a slot."""
        stop = loaded_rows_stop(start, rows, 3, self.capacity)
        for caches, part in zip(self._host_buffers(), rows):
            for c, layer in zip(caches, part):
                c[slot, :, start:stop] = layer

    def _host_buffers(self) -> list[list[np.ndarray]]:
        if self.memory is not None:
            raise ValueError("the cache is in device memory: no rows to copy")
        return [self.keys] if self.latent else [self.keys, self.values]

    def _zeros(self, shape: tuple[int, ...]):
        """A cache buffer of zeros (padding rows are never attended, but must not hold NaNs)."""
        return self._on_device(np.zeros(shape, self.dtype))

    def _on_device(self, host: np.ndarray):
        """`host` where the cache lives: itself, or an OrtValue in device memory."""
        if self.memory is None:
            return host
        return ort.OrtValue.ortvalue_from_numpy(host, *self.memory)
