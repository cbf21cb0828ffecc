"""The ONNX Runtime backend itself: prefill (prompts grouped into right-padded calls, long ones in
chunks) and decode steps (inputs in fixed buffers bound once) over the sessions and the cache."""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort

from ... import tensor_index
from ...artifact import Artifact
from ...errors import ArtifactError, UsageError
from ..slots import SlotLengths, prompt_starts
from .binding import Call, bind_call, bind_inputs
from .cache import Cache
from .sessions import DEVICE_MEMORY, INT8_CACHE_MIN_ORT, Sessions, load_graph, ort_version

log = logging.getLogger("edgeds")

PADDING_BUDGET = 1.25  # padded tokens allowed per real token in one batched prefill
# Rows of one prefill call, for several short prompts or one long prompt in chunks. Prefill is
# compute-bound, and the int8 kernels reach their speed by a few hundred rows
# (benchmarks/results/ort_int8_kernels.md); beyond that a larger call only adds activation
# memory (16 x 128 tokens in one call: +1 GB, and slower) and a long prompt could exhaust it.
PREFILL_ROWS = 512


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


def attention_on_device(device: str, graph, cache_dtype: np.dtype) -> bool:
    """Whether this graph's attention runs on `device`'s own memory, so that its cache belongs
    there: GroupQueryAttention's GPU kernels take float16 only (float32 graphs run it on the CPU,
    where a device cache would cross the bus twice per layer: 44 vs 5578 tok/s at batch 64 on an
    H200); a `--target tensorrt` graph attends with plain MatMul/Softmax, which GPU providers
    run at either dtype."""
    return device in DEVICE_MEMORY and (cache_dtype == np.float16 or graph.tensorrt is not None)


def _device_cache(device: str, dtype: str = "float16") -> str:
    return (f"onnxruntime on {device}: the {dtype} cache lives in device memory (OrtValues), "
            "not rows to copy: every prompt is prefilled in full, and --prefix-cache DIR is "
            "refused")


class OnnxRuntimeBackend:
    name = "onnxruntime"
    supports_refill = True
    # The prefix cache: a slot's rows are rows of the numpy cache buffers, copied in and out;
    # a prompt resumed after loaded rows runs alone (GroupQueryAttention takes a batch of one
    # after a past), as a long prompt's later chunks do. Off per instance where it cannot be.
    supports_prefix_cache = True
    no_prefix_cache: str | None = None
    kv_token_axis = 3  # of kv_rows' [buffers, layers, heads, tokens, head_dim]

    @staticmethod
    def no_prefix_cache_for(artifact: Artifact, providers: list[str] | None = None) -> str | None:
        """Why this artifact's graph keeps no prefix cache on these providers (None: the CPU
        provider), or None: what an instance decides, asked before one is loaded (doctor)."""
        if "fresh_prompt" in artifact.graph("onnx").inputs:
            return ("onnxruntime: an int8-cache graph attends over a fresh prompt in float32 but "
                    "over int8 rows after loaded ones, so cached prefixes would change tokens")
        device = providers[0] if providers else "CPUExecutionProvider"
        dtype = np.dtype(artifact.manifest.kv_layout("onnx").dtype)
        if attention_on_device(device, artifact.graph("onnx"), dtype):
            return _device_cache(device, dtype.name)
        return None

    def __init__(self, artifact: Artifact, providers: list, threads: int | None = None,
                 session_options: dict | None = None, profile_prefix: str | None = None,
                 cache_on_device: bool | None = None, small_batch_max: int = 0):
        """`cache_on_device`: keep the cache in OrtValues (None: where the first provider has
        device memory and attention runs there; True on the CPU provider runs the same code
        with host OrtValues). `small_batch_max`: decode batches up to this size on the
        artifact's small-batch graph, where it has one (0: never load it)."""
        graph = artifact.graph("onnx")
        tensor_index.rope_rows(artifact, graph)  # tables for the whole context, before loading
        # The cache layout comes from the manifest: per-head K and V buffers, or one MLA latent
        # buffer per layer that serves as both key and value.
        self.layout = artifact.manifest.kv_layout("onnx")
        self.vocab_size, self.hidden_size = artifact.model.vocab_size, artifact.model.hidden_size
        cache_dtype = np.dtype(self.layout.dtype)
        if cache_dtype == np.int8 and ort_version() < INT8_CACHE_MIN_ORT:
            need = ".".join(map(str, INT8_CACHE_MIN_ORT))
            raise ArtifactError(f"{artifact.root}: its int8 KV cache needs onnxruntime >= "
                                f"{need} (installed: {ort.__version__})")
        self.positions_input = "position_ids" in graph.inputs
        # int8-cache graphs attend over a fresh prompt in float32 and return its keys and
        # values for us to store (export/onnx_writer.py, _attention).
        self.fresh_input = "fresh_prompt" in graph.inputs
        # Bound by address: they must live on.
        self._flags = {True: np.array(True), False: np.array(False)}
        # The small-batch graph loads when the first batch small enough for it starts: a job of
        # larger batches (an offline job) never pays its memory and load time.
        self.small_batch_max = small_batch_max if graph.small_batch else 0
        self.small, self.small_batch_error = None, None
        self._artifact = artifact
        self._load = (providers, threads, session_options, profile_prefix)
        self.main = self._load_graph(graph)
        self.session = self.main.sessions[0]
        self.device = self.session.get_providers()[0]
        # A CPU input that a GPU node reads is copied to the device when it is bound, not when
        # the graph runs: with a GPU provider the decode step's small inputs are bound again at
        # every step (on the CPU they are read in place, and binding once is enough).
        self._copied_at_bind = self.device != "CPUExecutionProvider"
        if cache_on_device and self.fresh_input:
            raise UsageError("an int8-cache graph writes a fresh prompt's cache from the host: "
                             "it stays in numpy buffers")
        attends_on_device = attention_on_device(self.device, graph, cache_dtype)
        if cache_on_device is None:
            cache_on_device = attends_on_device
        memory = None  # numpy buffers; else (device, id) of the OrtValues
        if cache_on_device:
            device_id = self.session.get_provider_options().get(self.device, {}).get("device_id", 0)
            memory = (DEVICE_MEMORY.get(self.device, "cpu"), int(device_id))
        self.cache = Cache(self.layout, memory)
        # A host cache that a GPU node reads is copied at bind time too: bound once, every
        # decode step would attend over the cache as it was at the first (--cache-on-host).
        self._cache_copied_at_bind = self._copied_at_bind and memory is None and attends_on_device
        self.no_prefix_cache = self.no_prefix_cache_for(artifact) or (
            _device_cache(self.device, cache_dtype.name) if memory else None)
        self.supports_prefix_cache = self.no_prefix_cache is None

    @property
    def batch_size(self) -> int:
        return self.cache.batch_size

    @property
    def capacity(self) -> int:
        return self.cache.capacity

    def _load_graph(self, graph) -> Sessions:
        providers, threads, session_options, profile_prefix = self._load
        # Sessions run in turn with another graph's stop their threads' spinning after each run.
        return load_graph(self._artifact, graph, self.layout, providers, threads, session_options,
                          profile_prefix, in_turn=self.small_batch_max > 0)

    def _small_graph(self) -> Sessions | None:
        """The small-batch graph, loaded on first use. It only speeds decoding up: where it does
        not load (an onnxruntime without its kernel, say) decoding stays on the main graph, and
        the reason is logged and kept in `small_batch_error`."""
        if self.small is None and self.small_batch_max:
            try:
                self.small = self._load_graph(self._artifact.graph("onnx").small_batch)
            except Exception as exc:  # noqa: BLE001 - whatever ONNX Runtime raises
                self.small_batch_max = 0
                self.small_batch_error = (
                    f"small-batch graph: not loaded ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:200]}); decoding on the main graph")
                log.warning("edgeds: %s", self.small_batch_error)
        return self.small

    @property
    def sessions(self) -> list[ort.InferenceSession]:
        return self.main.sessions + (self.small.sessions if self.small else [])

    def start(self, batch_size: int, capacity: int) -> None:
        if self.small is not None and batch_size > self.small_batch_max:
            # A batch too large for the small-batch graph: its sessions (the weights' size again)
            # go before this batch's cache comes, and the next small batch loads them again. A
            # job runs one batch size, so this is once per job, not per step.
            self.small = self._decode = self.decode_graph = None
        self.cache.allocate(batch_size, capacity)
        self.slot_lengths = SlotLengths(batch_size)
        self._bind_decode()

    def grow(self, capacity: int) -> None:
        if self.cache.grow(capacity):
            self._bind_decode()

    def _step_inputs(self, ids, seqlens, total, positions, token_positions,
                     fresh: bool) -> dict[str, np.ndarray]:
        inputs = {"input_ids": ids, "seqlens_k": seqlens, "total_sequence_length": total,
                  "logits_positions": positions}
        if self.positions_input:
            inputs["position_ids"] = token_positions
        if self.fresh_input:
            inputs["fresh_prompt"] = self._flags[fresh]
        return inputs

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
        self._decode_inputs = self._step_inputs(self._ids, self._seqlens, self._total,
                                                self._positions, self._token_positions, False)
        self._decode: Call = bind_call(self.decode_graph, self._decode_inputs, self._logits,
                                       self.cache, slice(0, batch_size), self.hidden_size)

    def _run_prompts(self, rows: slice, prompts: list[np.ndarray], every_position: bool = False,
                     past: int = 0) -> np.ndarray:
        """One call: the prompts (right-padded) go into the cache rows after `past` cached
        tokens."""
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
        fresh = self.cache.fresh(n, longest) if self.fresh_input and past == 0 else None
        # ORT reads inputs by address at run time: every bound array stays referenced until then.
        seqlens, total = past + lens - 1, np.array(past + longest, np.int32)
        inputs = self._step_inputs(ids, seqlens, total, positions, token_positions,
                                   fresh is not None)
        bind_call(self.main, inputs, logits, self.cache, rows, self.hidden_size, fresh).run()
        if fresh is not None:
            self.cache.store(rows, fresh)
        return logits if every_position else logits[:, 0]

    @property
    def cache_layout(self) -> str:
        """What a row of kv_rows holds, for the prefix cache's keys."""
        kind = "latent" if self.cache.latent else "k,v"
        return (f"onnxruntime:{self.cache.dtype.name}:{kind}[{self.layout.layers},"
                f"{self.layout.heads},tokens,{self.layout.head_dim}]")

    def kv_block_shape(self, tokens: int) -> tuple[np.dtype, tuple[int, ...]]:
        """dtype and shape of kv_rows over `tokens` positions."""
        lay = self.layout
        return self.cache.dtype, (lay.buffers, lay.layers, lay.heads, tokens, lay.head_dim)

    def kv_rows(self, slot: int, start: int, stop: int) -> np.ndarray:
        """A copy of positions [start, stop) of a slot's cache."""
        return self.cache.slot_rows(slot, start, stop)

    def load_kv(self, slot: int, start: int, rows: np.ndarray) -> None:
        """Write rows (as kv_rows gives them) at positions start.. of a slot's cache."""
        self.cache.load_slot_rows(slot, start, rows)

    def prefill(self, slots: list[int], prompts: list[np.ndarray], every_position: bool = False,
                starts: list[int] | None = None) -> np.ndarray:
        """starts[i]: positions of prompt i already in its slot's cache (load_kv), not computed."""
        starts = prompt_starts(prompts, starts, self.capacity, every_position)
        if every_position:  # scoring: every position's logits, one prompt per call
            out = np.stack([self._run_prompts(slice(s, s + 1), [p], True)[0]
                            for s, p in zip(slots, prompts)])
        else:
            out = np.empty((len(slots), self.vocab_size), np.float32)
            new = [i for i, s in enumerate(starts) if s == 0]
            lengths = [len(prompts[i]) for i in new]
            for start, stop in _prefill_groups([slots[i] for i in new], lengths):
                group = new[start:stop]
                if len(group) == 1 and len(prompts[group[0]]) > PREFILL_ROWS:
                    out[group[0]] = self._run_chunked(slots[group[0]], prompts[group[0]])
                    continue
                rows = slice(slots[group[0]], slots[group[-1]] + 1)
                out[group] = self._run_prompts(rows, [prompts[i] for i in group])
            for i in (i for i, s in enumerate(starts) if s):
                out[i] = self._run_chunked(slots[i], prompts[i], starts[i])
        for s, p in zip(slots, prompts):
            self.slot_lengths.filled(s, len(p))
        return out

    def _run_chunked(self, slot: int, prompt: np.ndarray, start: int = 0) -> np.ndarray:
        """A long prompt (or what follows `start` cached positions of one) in calls of
        PREFILL_ROWS tokens, each attending to what the earlier ones cached: activation memory
        stays that of one chunk, whatever the prompt's length."""
        rows = slice(slot, slot + 1)
        for done in range(start, len(prompt), PREFILL_ROWS):
            logits = self._run_prompts(rows, [prompt[done:done + PREFILL_ROWS]], past=done)
        return logits[0]

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        self._ids[:, 0] = tokens
        self.slot_lengths.decode_positions(self.capacity, out=self._seqlens)
        self._token_positions[:, 0] = self._seqlens
        self._total[...] = self._seqlens.max() + 1
        if self._cache_copied_at_bind:
            self._decode = bind_call(self.decode_graph, self._decode_inputs, self._logits,
                                     self.cache, slice(0, self.batch_size), self.hidden_size)
        elif self._copied_at_bind:
            bind_inputs(self._decode.bindings, self.decode_graph.io, self._decode_inputs)
        self._decode.run()
        self.slot_lengths.advance()
        return self._logits[:, 0]

    def release(self, slot: int) -> None:
        self.slot_lengths.released(slot)

    @property
    def lengths(self) -> np.ndarray:
        return self.slot_lengths.lengths
