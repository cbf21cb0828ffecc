"""I/O binding of one call: host inputs, the logits, the residual stream handed between graph
parts, and the cache rows of the slots it runs. ORT reads and writes bound memory by address
at run time, so whatever is bound must live until the call has run."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from .cache import Cache
from .sessions import Sessions


class Call:
    """The bindings of one call, one per session run in turn, and the buffers they hand on."""

    def __init__(self, bindings: list[ort.IOBinding], sessions: list[ort.InferenceSession]):
        self.bindings, self.sessions, self.buffers = bindings, sessions, []

    def run(self) -> None:
        for session, binding in zip(self.sessions, self.bindings):
            session.run_with_iobinding(binding)


def bind_inputs(bindings: list[ort.IOBinding], io: list[tuple[set, set]],
                inputs: dict[str, np.ndarray]) -> None:
    """Bind host arrays to the sessions that read them."""
    for b, (ins, _) in zip(bindings, io):
        for name, arr in inputs.items():
            if name in ins:
                b.bind_input(name, "cpu", 0, arr.dtype, list(arr.shape), arr.ctypes.data)


def bind_call(graph: Sessions, inputs: dict[str, np.ndarray], logits: np.ndarray,
              cache: Cache, rows: slice, hidden_size: int,
              fresh: list[np.ndarray] | None = None) -> Call:
    """A call of `graph` over the cache rows `rows`. `fresh`: one array per cache buffer that
    receives a fresh prompt's keys and values (int8-cache graphs); without it the cache rows
    are updated in place."""
    call = Call([s.io_binding() for s in graph.sessions], graph.sessions)
    bind_inputs(call.bindings, graph.io, inputs)
    memory = cache.memory or ("cpu", 0)
    caches = cache.bindings()
    tokens = inputs["input_ids"].shape  # [batch, sequence]
    call.buffers = [np.empty((*tokens, hidden_size), np.float32) for _ in graph.carried]
    for b, (ins, outs) in zip(call.bindings, graph.io):
        if "logits" in outs:
            b.bind_output("logits", "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
        for name, buf in zip(graph.carried, call.buffers):
            bind = b.bind_input if name in ins else b.bind_output if name in outs else None
            if bind:
                bind(name, "cpu", 0, np.float32, list(buf.shape), buf.ctypes.data)
        for j, (buffer, names_in, names_out) in enumerate(caches):
            if names_in[0] not in ins:
                continue
            address, shape = cache.rows(buffer, rows)
            for name in names_in:
                b.bind_input(name, *memory, cache.dtype, shape, address)
            if fresh is not None:
                address, shape = fresh[j].ctypes.data, list(fresh[j].shape)
            for name in names_out:
                b.bind_output(name, *memory, cache.dtype, shape, address)
    return call
