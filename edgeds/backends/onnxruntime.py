"""ONNX Runtime backend: the cache is a numpy buffer per layer that ORT updates in place.

`past_*` and `present_*` are bound to the same memory, GroupQueryAttention writes each new key
and value at the sequence's own length, and a decode step moves no cache bytes at all. A slot
is refilled by binding views of its rows, while the other slots' caches stay untouched.

The cache holds float32, float16 or, from `--kv-cache int8` exports, int8 (the graph
quantizes). An int8 graph returns a fresh prompt's keys and values instead of writing them (it
attends over the prompt in float32), and the prefill copies them into the slot's rows.

On a CUDA or TensorRT provider the cache lives in device memory (OrtValues, bound by address
like the numpy buffers): attention then reads and writes it where it runs, and no cache byte
crosses the bus in a step.

On the CPU provider an artifact's graph parts (export/graph_parts.py) are loaded as one session
each, on parallel threads: ONNX Runtime prepacks a session's weights on one thread, and that is
nearly all of its load time. A call then runs the parts in turn, each handing the residual
stream to the next through a buffer bound to both.

An artifact exported with `--small-batch-graph` has a second graph whose linear layers run
ONNX Runtime's one-row kernel (export/small_batch_graph.py). Where the profile allows it
(`small_batch_max`), it is loaded when the first batch of at most that many sequences starts
and is bound to the same cache: prefill calls run the main graph, decode steps of such batches
the second one.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..artifact import Artifact
from ..errors import ArtifactError
from ..manifest import Graph
from .base import SlotLengths

log = logging.getLogger("edgeds")

# GroupQueryAttention's int8 cache on the CPU: verified on ONNX Runtime 1.30 and 1.32.
INT8_CACHE_MIN_ORT = (1, 30)
PADDING_BUDGET = 1.25  # padded tokens allowed per real token in one batched prefill
# Rows of one prefill call, for several short prompts or one long prompt in chunks. Prefill is
# compute-bound, and the int8 kernels reach their speed by a few hundred rows
# (benchmarks/results/ort_int8_kernels.md); beyond that a larger call only adds activation
# memory (16 x 128 tokens in one call: +1 GB, and slower) and a long prompt could exhaust it.
PREFILL_ROWS = 512
# Graph parts pay from here: ONNX Runtime 1.32 creates sessions on parallel threads, 1.30 held
# the GIL while creating one (benchmarks/results/xeon-amx-16t.md, session 7).
PARALLEL_LOAD_MIN_ORT = (1, 32)
# Providers whose attention reads the cache from device memory, and ORT's name for it.
DEVICE_MEMORY = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda"}


def _prefill_groups(slots: list[int], lengths: list[int]) -> list[tuple[int, int]]:
    """Split prompts into runs of consecutive slots that share one right-padded call, while
    padding stays within budget and the call within PREFILL_ROWS; returns (start, stop) pairs."""
    groups, start = [], 0
    for i in range(1, len(slots) + 1):
        if i < len(slots) and slots[i] == slots[i - 1] + 1:
            group = lengths[start:i + 1]
            padded = max(group) * len(group)
            if padded <= PREFILL_ROWS and padded <= PADDING_BUDGET * sum(group):
                continue
        groups.append((start, i))
        start = i
    return groups


def _provider_name(provider) -> str:
    return provider[0] if isinstance(provider, tuple) else provider


def _ort_version() -> tuple[int, int]:
    return tuple(int(p) for p in ort.__version__.split(".")[:2])


def loads_in_parts(graph: Graph, provider) -> bool:
    """Whether the backend loads this graph's parts (export/graph_parts.py) instead of the whole
    graph: on the CPU provider, with an ONNX Runtime that creates them in parallel."""
    return (bool(graph.parts) and _provider_name(provider) == "CPUExecutionProvider"
            and _ort_version() >= PARALLEL_LOAD_MIN_ORT)


def _session_options(threads: int | None, config: dict | None, profile_prefix: str | None,
                     part: bool) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ORT's CPU arena keeps the largest prefill's activations for the rest of a job (~260 MB
    # after 512-row prefill calls of the 1.5B); without it they are freed after each call,
    # and decode steps ran no slower (benchmarks/results/before-after.md).
    opts.enable_cpu_mem_arena = False
    # Memory patterns are kept per input shape; in the int8-cache graph's If branches they
    # add up over the prompt shapes of a job (+1.7 GB over 64 mixed prompts, measured).
    opts.enable_mem_pattern = False
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    for key, value in (config or {}).items():
        opts.add_session_config_entry(key, str(value))
    if profile_prefix:  # ORT's per-node timings (benchmarks/op_profile.py)
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    if part:
        # A part's threads would otherwise spin on after its run, taking the cores from the
        # next part's (batch-1 decode at half speed on two cores, measured).
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    return opts


def _load_sessions(files: list[str], opts: list[ort.SessionOptions], providers: list,
                   threads: int | None, first: tuple[int, ...] = ()) -> list[ort.InferenceSession]:
    """One session per file; several are created on parallel threads, as many as the run may
    use (ONNX Runtime 1.32 releases the GIL while it creates one; 1.30 did not). The files at
    indices `first` start before the others (the longest to create: so that no thread is left
    alone with one of them at the end)."""
    def create(i: int) -> ort.InferenceSession:
        return ort.InferenceSession(files[i], opts[i], providers=providers)

    if len(files) == 1:
        return [create(0)]
    with ThreadPoolExecutor(min(len(files), threads or os.cpu_count() or 1)) as pool:
        started = {i: pool.submit(create, i) for i in sorted(range(len(files)), key=lambda i: i not in first)}
        return [started[i].result() for i in range(len(files))]


def _check_chain(io: list[tuple[set, set]], root) -> list[str]:
    """The tensors sessions hand on; refuses parts that do not chain into one decoder (each input
    of a later part written by an earlier one, the logits by the last)."""
    produced = set().union(*(outs for _, outs in io))
    written: set[str] = set()
    for ins, outs in io:
        if (ins & produced) - written:  # reads what only a later part writes
            raise ArtifactError(f"{root}: its graph parts do not chain in the manifest's order")
        written |= outs
    if "logits" not in io[-1][1]:
        raise ArtifactError(f"{root}: its last graph part does not produce the logits")
    return sorted(produced & set().union(*(ins for ins, _ in io)))


def _check_widths(sessions, carried: list[str], layout, model, root) -> None:
    """The widths the graph itself declares against the manifest's, whose numbers size the
    buffers bound to it: a manifest edited to other widths is refused here, by name."""
    want = {"logits": (-1, model.vocab_size, "vocab_size")}
    want |= {name: (-1, model.hidden_size, "hidden_size") for name in carried}
    for s in sessions:
        for arg in [*s.get_inputs(), *s.get_outputs()]:
            checks = [want[arg.name]] if arg.name in want else []
            if arg.name.startswith(("past_", "present_")) and len(arg.shape) == 4:
                checks = [(1, layout.heads, "cache heads"), (3, layout.head_dim, "cache width")]
            for axis, size, what in checks:
                dim = arg.shape[axis]
                if isinstance(dim, int) and dim != size:
                    raise ArtifactError(
                        f"{root}: its ONNX graph's {arg.name} is {dim} wide on axis "
                        f"{axis % len(arg.shape)}, the manifest's {what} says {size}")


class _Graph:
    """The sessions of one graph (its parts, or the whole), run in turn, and the names each reads
    and writes."""

    def __init__(self, sessions: list[ort.InferenceSession], root):
        self.sessions = sessions
        self.io = [({i.name for i in s.get_inputs()}, {o.name for o in s.get_outputs()}) for s in sessions]
        # Residual-stream tensors one part hands to the next: [batch, sequence, hidden] float32.
        self.carried = _check_chain(self.io, root)


def _graph_files(graph, provider) -> list[str]:
    """A manifest.Graph's or SmallBatchGraph's files to load: its parts, or the whole."""
    return [part.file for part in graph.parts] if loads_in_parts(graph, provider) else [graph.file]


class _Call:
    """The bindings of one call, one per session run in turn, and the buffers they hand on
    (ORT reads bound memory by address at run time: the buffers must live until then)."""

    def __init__(self, bindings: list[ort.IOBinding], sessions: list[ort.InferenceSession]):
        self.bindings, self.sessions, self.buffers = bindings, sessions, []

    def run(self) -> None:
        for session, binding in zip(self.sessions, self.bindings):
            session.run_with_iobinding(binding)


class OnnxRuntimeBackend:
    name = "onnxruntime"
    supports_refill = True

    def __init__(self, artifact: Artifact, providers: list, threads: int | None = None,
                 session_options: dict | None = None, profile_prefix: str | None = None,
                 cache_on_device: bool | None = None, small_batch_max: int = 0):
        """`cache_on_device`: keep the cache in OrtValues (None: where the first provider has
        device memory and attention runs there; True on the CPU provider runs the same code
        with host OrtValues). `small_batch_max`: decode batches up to this size on the
        artifact's small-batch graph, where it has one (0: never load it)."""
        graph = artifact.graph("onnx")
        m = artifact.model
        # The cache layout comes from the manifest: per-head K and V buffers, or one MLA latent
        # buffer per layer that serves as both key and value.
        self.layout = artifact.manifest.kv_layout("onnx")
        self.latent = self.layout.buffers == 1
        self.layers, self.vocab_size = self.layout.layers, m.vocab_size
        self.cache_dtype = np.dtype(self.layout.dtype)  # int8: quantized by the graph
        if self.cache_dtype == np.int8 and _ort_version() < INT8_CACHE_MIN_ORT:
            raise ArtifactError(f"{artifact.root}: its int8 KV cache needs onnxruntime >= "
                                f"{'.'.join(map(str, INT8_CACHE_MIN_ORT))} (installed: {ort.__version__})")
        self.positions_input = "position_ids" in graph.inputs
        # int8-cache graphs attend over a fresh prompt in float32 and return its keys and
        # values for us to store (export/onnx_writer.py, _attention).
        self.fresh_input = "fresh_prompt" in graph.inputs
        self._flags = {True: np.array(True), False: np.array(False)}  # bound by address: they must live on
        # The small-batch graph loads when the first batch small enough for it starts: a job of
        # larger batches (an offline job) never pays its memory and load time.
        self.small_batch_max = small_batch_max if graph.small_batch else 0
        self.small, self.small_batch_error = None, None
        self._load = (artifact, providers, threads, session_options, profile_prefix)
        self.main = self._load_graph(graph)
        self.session = self.main.sessions[0]
        self.hidden_size = m.hidden_size
        self.device = self.session.get_providers()[0]
        # A CPU input that a GPU node reads is copied to the device when it is bound, not when
        # the graph runs: with a GPU provider the decode step's small inputs are bound again at
        # every step (on the CPU they are read in place, and binding once is enough).
        self._copied_at_bind = self.device != "CPUExecutionProvider"
        if cache_on_device and self.fresh_input:
            raise ValueError("an int8-cache graph writes a fresh prompt's cache from the host: it stays in numpy buffers")
        if cache_on_device is None:
            # The cache belongs where attention runs: GroupQueryAttention's GPU kernels take
            # float16 only, and float32 graphs run it on the CPU (a device cache would then
            # cross the bus twice per layer: 44 vs 5578 tok/s at batch 64 on an H200).
            cache_on_device = self.device in DEVICE_MEMORY and self.cache_dtype == np.float16
        self.cache_memory = None  # numpy buffers; else (device, id) of the OrtValues
        if cache_on_device:
            device_id = self.session.get_provider_options().get(self.device, {}).get("device_id", 0)
            self.cache_memory = (DEVICE_MEMORY.get(self.device, "cpu"), int(device_id))
        self.batch_size = self.capacity = 0

    def _load_graph(self, graph) -> _Graph:
        """One graph's sessions, its parts on parallel threads where it has them."""
        artifact, providers, threads, session_options, profile_prefix = self._load
        files = _graph_files(graph, providers[0])
        # One options object per session: profiles are named by prefix and creation time, and
        # sessions created at once would write over each other's. Sessions run in turn (parts,
        # or two graphs) stop their threads' spinning after each run.
        in_turn = len(files) > 1 or self.small_batch_max > 0
        opts = [_session_options(threads, session_options, profile_prefix and f"{profile_prefix}.{Path(f).stem}",
                                 in_turn) for f in files]
        # The last part holds the LM head, the graph's largest weight: it starts first.
        sessions = _load_sessions([str(artifact.path(f)) for f in files], opts, providers, threads, (len(files) - 1,))
        graph = _Graph(sessions, artifact.root)
        _check_widths(sessions, graph.carried, self.layout, artifact.model, artifact.root)
        return graph

    def _small_graph(self) -> _Graph | None:
        """The small-batch graph, loaded on first use. It only speeds decoding up: where it does
        not load (an onnxruntime without its kernel, say) decoding stays on the main graph, and
        the reason is logged and kept in `small_batch_error`."""
        if self.small is None and self.small_batch_max:
            artifact = self._load[0]
            try:
                self.small = self._load_graph(artifact.graph("onnx").small_batch)
            except Exception as exc:  # noqa: BLE001 - whatever ONNX Runtime raises
                self.small_batch_max = 0
                self.small_batch_error = (f"small-batch graph: not loaded ({type(exc).__name__}: "
                                          f"{str(exc).splitlines()[0][:200]}); decoding on the main graph")
                log.warning("edgeds: %s", self.small_batch_error)
        return self.small

    @property
    def sessions(self) -> list[ort.InferenceSession]:
        return self.main.sessions + (self.small.sessions if self.small else [])

    def _cache_bindings(self) -> list[tuple[np.ndarray, list[str], list[str]]]:
        """(buffer, graph inputs, graph outputs) bound to it."""
        if self.latent:
            return [(self.keys[i], [f"past_latent.{i}"], [f"present_latent.{i}", f"present_latent_alias.{i}"])
                    for i in range(self.layers)]
        return [(c, [f"past_{kind}.{i}"], [f"present_{kind}.{i}"])
                for kind, caches in (("key", self.keys), ("value", self.values)) for i, c in enumerate(caches)]

    def _zeros(self, shape: tuple[int, ...], old=None):
        """A cache buffer of zeros (padding rows are never attended, but must not hold NaNs),
        holding `old`'s contents in its first positions."""
        host = np.zeros(shape, self.cache_dtype)
        if old is not None:  # a device buffer comes over to the host and back: grows are rare
            old = old if isinstance(old, np.ndarray) else old.numpy()
            host[:, :, : old.shape[2]] = old
        if self.cache_memory is None:
            return host
        return ort.OrtValue.ortvalue_from_numpy(host, *self.cache_memory)

    def _rows(self, cache, rows: slice) -> tuple[int, list[int]]:
        """Address and shape of a cache buffer's rows (slots)."""
        if isinstance(cache, np.ndarray):
            view = cache[rows]
            return view.ctypes.data, list(view.shape)
        shape = cache.shape()
        row_bytes = int(np.prod(shape[1:])) * self.cache_dtype.itemsize
        return cache.data_ptr() + rows.start * row_bytes, [rows.stop - rows.start, *shape[1:]]

    def start(self, batch_size: int, capacity: int) -> None:
        if self.small is not None and batch_size > self.small_batch_max:
            # A batch too large for the small-batch graph: its sessions (the weights' size again)
            # go before this batch's cache comes, and the next small batch loads them again. A
            # job runs one batch size, so this is once per job, not per step.
            self.small = self._decode = self.decode_graph = None
        shape = self.layout.shape(batch_size, capacity)
        if self.batch_size != batch_size or self.capacity != capacity:
            self.keys = self.values = None  # the old cache goes before the new one comes: no peak of both
            self.keys = [self._zeros(shape) for _ in range(self.layers)]
            self.values = [] if self.latent else [self._zeros(shape) for _ in range(self.layers)]
        self.batch_size, self.capacity = batch_size, capacity
        self.slot_lengths = SlotLengths(batch_size)
        self._bind_decode()

    def grow(self, capacity: int) -> None:
        if capacity <= self.capacity:
            return
        shape = self.layout.shape(self.batch_size, capacity)
        for caches in (self.keys, self.values):
            for i in range(len(caches)):  # one layer at a time: the old buffer goes as the new one comes
                caches[i] = self._zeros(shape, caches[i])
        self.capacity = capacity
        self._bind_decode()

    def _bind_decode(self) -> None:
        batch_size = self.batch_size
        # Decode inputs live in fixed buffers bound once; a step only rewrites their contents.
        self._ids = np.zeros((batch_size, 1), np.int64)
        self._seqlens = np.zeros(batch_size, np.int32)
        self._total = np.zeros((), np.int32)
        self._positions = np.zeros((batch_size, 1), np.int64)
        self._logits = np.zeros((batch_size, 1, self.vocab_size), np.float32)
        self._token_positions = np.zeros((batch_size, 1), np.int64)
        small = batch_size <= self.small_batch_max and self._small_graph()
        self.decode_graph = small or self.main
        self._decode = self._bind(self._ids, self._seqlens, self._total, self._positions,
                                  self._logits, slice(0, batch_size), self._token_positions, graph=self.decode_graph)

    def _bind_step_inputs(self, bindings: list[ort.IOBinding], io: list[tuple[set, set]], ids, seqlens, total,
                          positions, token_positions, fresh: bool) -> None:
        inputs = [("input_ids", ids), ("seqlens_k", seqlens), ("total_sequence_length", total),
                  ("logits_positions", positions)]
        if self.positions_input:
            inputs.append(("position_ids", token_positions))
        if self.fresh_input:
            inputs.append(("fresh_prompt", self._flags[fresh]))
        for b, (ins, _) in zip(bindings, io):
            for name, arr in inputs:
                if name in ins:
                    b.bind_input(name, "cpu", 0, arr.dtype, list(arr.shape), arr.ctypes.data)

    def _bind(self, ids, seqlens, total, positions, logits, rows: slice, token_positions,
              fresh: list[np.ndarray] | None = None, graph: _Graph | None = None) -> _Call:
        """`fresh`: one array per cache buffer that receives a fresh prompt's keys and values
        (int8-cache graphs); without it the cache rows are updated in place. `graph`: the main
        one unless named."""
        graph = graph or self.main
        call = _Call([s.io_binding() for s in graph.sessions], graph.sessions)
        self._bind_step_inputs(call.bindings, graph.io, ids, seqlens, total, positions, token_positions,
                               fresh is not None)
        memory = self.cache_memory or ("cpu", 0)
        caches = self._cache_bindings()
        call.buffers = [np.empty((*ids.shape, self.hidden_size), np.float32) for _ in graph.carried]
        for b, (ins, outs) in zip(call.bindings, graph.io):
            if "logits" in outs:
                b.bind_output("logits", "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
            for name, buf in zip(graph.carried, call.buffers):
                bind = b.bind_input if name in ins else b.bind_output if name in outs else None
                if bind:
                    bind(name, "cpu", 0, np.float32, list(buf.shape), buf.ctypes.data)
            for j, (cache, names_in, names_out) in enumerate(caches):
                if names_in[0] not in ins:
                    continue
                address, shape = self._rows(cache, rows)
                for name in names_in:
                    b.bind_input(name, *memory, self.cache_dtype, shape, address)
                if fresh is not None:
                    address, shape = fresh[j].ctypes.data, list(fresh[j].shape)
                for name in names_out:
                    b.bind_output(name, *memory, self.cache_dtype, shape, address)
        return call

    def _run_prompts(self, rows: slice, prompts: list[np.ndarray], every_position: bool = False,
                     past: int = 0) -> np.ndarray:
        """One call: the prompts (right-padded) go into the cache rows after `past` cached tokens."""
        n, longest = len(prompts), max(len(p) for p in prompts)
        ids = np.zeros((n, longest), np.int64)  # right-padded; padding is never attended
        for j, p in enumerate(prompts):
            ids[j, : len(p)] = p
        lens = np.array([len(p) for p in prompts], np.int32)
        if every_position:
            positions = np.tile(np.arange(longest, dtype=np.int64), (n, 1))
        else:
            positions = (lens - 1).astype(np.int64)[:, None]
        logits = np.empty((n, positions.shape[1], self.vocab_size), np.float32)
        token_positions = np.tile(np.arange(past, past + longest, dtype=np.int64), (n, 1))
        fresh = None
        if self.fresh_input and past == 0:
            fresh = [np.empty(self.layout.shape(n, longest), self.cache_dtype) for _ in self._cache_bindings()]
        # ORT reads inputs by address at run time: every bound array stays referenced until then.
        seqlens, total = past + lens - 1, np.array(past + longest, np.int32)
        self._bind(ids, seqlens, total, positions, logits, rows, token_positions, fresh).run()
        if fresh is not None:
            for (cache, _, _), new in zip(self._cache_bindings(), fresh):
                cache[rows, :, :longest] = new
        return logits if every_position else logits[:, 0]

    def prefill(self, slots: list[int], prompts: list[np.ndarray], every_position: bool = False) -> np.ndarray:
        if any(len(p) > self.capacity for p in prompts):
            raise ValueError("prompt longer than the cache capacity")
        if every_position:  # scoring: every position's logits, one prompt per call
            out = np.stack([self._run_prompts(slice(s, s + 1), [p], True)[0] for s, p in zip(slots, prompts)])
        else:
            out = np.empty((len(slots), self.vocab_size), np.float32)
            for start, stop in _prefill_groups(slots, [len(p) for p in prompts]):
                if stop - start == 1 and len(prompts[start]) > PREFILL_ROWS:
                    out[start] = self._run_chunked(slots[start], prompts[start])
                    continue
                rows = slice(slots[start], slots[stop - 1] + 1)
                out[start:stop] = self._run_prompts(rows, prompts[start:stop])
        for s, p in zip(slots, prompts):
            self.slot_lengths.filled(s, len(p))
        return out

    def _run_chunked(self, slot: int, prompt: np.ndarray) -> np.ndarray:
        """A long prompt in calls of PREFILL_ROWS tokens, each attending to what the earlier ones
        cached: activation memory stays that of one chunk, whatever the prompt's length."""
        rows = slice(slot, slot + 1)
        for done in range(0, len(prompt), PREFILL_ROWS):
            logits = self._run_prompts(rows, [prompt[done:done + PREFILL_ROWS]], past=done)
        return logits[0]

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        self._ids[:, 0] = tokens
        self.slot_lengths.decode_positions(self.capacity, out=self._seqlens)
        self._token_positions[:, 0] = self._seqlens
        self._total[...] = self._seqlens.max() + 1
        if self._copied_at_bind:
            self._bind_step_inputs(self._decode.bindings, self.decode_graph.io, self._ids, self._seqlens, self._total,
                                   self._positions, self._token_positions, False)
        self._decode.run()
        self.slot_lengths.advance()
        return self._logits[:, 0]

    def release(self, slot: int) -> None:
        self.slot_lengths.released(slot)

    @property
    def lengths(self) -> np.ndarray:
        return self.slot_lengths.lengths
