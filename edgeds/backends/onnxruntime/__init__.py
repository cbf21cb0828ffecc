"""ONNX Runtime backend: the cache is a numpy buffer per layer that ORT updates in place.

`past_*` and `present_*` are bound to the same memory, GroupQueryAttention writes each new key
and value at the sequence's own length, and a decode step moves no cache bytes at all. A slot
is refilled by binding views of its rows, while the other slots' caches stay untouched.

The cache holds float32, float16 or, from `--kv-cache int8` exports, int8 (the graph
quantizes). An int8 graph returns a fresh prompt's keys and values instead of writing them (it
attends over the prompt in float32), and the prefill copies them into the slot's rows.

On a CUDA or TensorRT provider the cache lives in device memory (OrtValues, bound by address
like the numpy buffers) wherever the graph's attention runs there (float16 graphs and
`--target tensorrt` graphs: backend.attention_on_device): attention then reads and writes it
where it runs, and no cache byte crosses the bus in a step.

On the CPU provider an artifact's graph parts (export/graph_parts.py) are loaded as one session
each, on parallel threads: ONNX Runtime prepacks a session's weights on one thread, and that is
nearly all of its load time. A call then runs the parts in turn, each handing the residual
stream to the next through a buffer bound to both.

An artifact exported with `--small-batch-graph` has a second graph whose linear layers run
ONNX Runtime's one-row kernel (export/small_batch_graph.py). Where the profile allows it
(`small_batch_max`), it is loaded when the first batch of at most that many sequences starts
and is bound to the same cache: prefill calls run the main graph, decode steps of such batches
the second one.

One job per module: `plan.py` (which providers run an artifact here, and why: what selection
asks), `sessions.py` (provider and session options, loading a graph's sessions and checking them
against the manifest), `cache.py` (the cache buffers), `binding.py` (binding one call's inputs,
outputs and cache rows), `backend.py` (prefill and decode over them).
"""

from .backend import OnnxRuntimeBackend
from .sessions import DEVICE_MEMORY, PARALLEL_LOAD_MIN_ORT, loads_in_parts

__all__ = ["DEVICE_MEMORY", "PARALLEL_LOAD_MIN_ORT", "OnnxRuntimeBackend", "loads_in_parts"]
