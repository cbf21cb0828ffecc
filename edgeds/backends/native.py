"""The native backend: a dense int8 export's decoder run by edgeds' own loops
(`edgeds/native/decoder.c`) instead of ONNX Runtime.

It reads the same artifact as the ONNX Runtime backend: the weight file of the ONNX graph, found
through the export's tensor index (`tensors.json`), so the weights and their quantization are
bit-identical and no graph is parsed. The int8 weights are packed once at load into the layout
of the GEMM kernels (AMX tiles where the kernel grants them, else AVX-512 VNNI); the KV cache is
numpy memory owned here, in blocks of 64 positions taken as each sequence grows (kv_blocks.py
has the layout): a batch's memory follows the tokens it holds, not slots x capacity. Every slot
holds its own sequence at its own position, so slots are refilled while the others decode
(continuous batching).

Where it pays (benchmarks/results/xeon-amx-16t.md, session 10): batch-64 decode steps and
prefill, where ONNX Runtime's per-node dispatch and one-head-at-a-time attention cost more than
the matmuls."""

from __future__ import annotations

import mmap

import numpy as np

from .. import tensor_index
from ..artifact import Artifact
from ..errors import ArtifactError, UsageError
from ..manifest import GroupedAttention
from ..native import library
from .kv_blocks import BLOCK_TOKENS, BlockPool, BlockTables, PinnedBlock
from .slots import SlotLengths, loaded_rows_stop, prompt_starts

PREFILL_ROWS = 512  # rows per call: what the int8 GEMM needs to reach its speed, and no more memory
MAX_GROUP = 16  # query heads per KV head that decoder.c's attention keeps in registers
MAX_HEAD_DIM = 256  # decoder.c's MAX_HEAD_DIM
MAX_THREADS = 4096  # decoder.c's MAX_THREADS


def unsupported(artifact: Artifact) -> str | None:
    """Why this artifact cannot run on the native backend, or None."""
    if "onnx" not in artifact.formats:
        return "the artifact has no ONNX export (whose weight file it reads)"
    if is_mla(artifact):
        from .native_mla import unsupported as mla_unsupported

        return mla_unsupported(artifact)
    graph, m, quant = artifact.graph("onnx"), artifact.model, artifact.manifest.quantization
    a: GroupedAttention = m.attention
    if not graph.tensors:
        return "the export has no tensor index (re-export with this edgeds)"
    if quant.weights != "int8":
        return f"weights {quant.weights}: it runs --weights int8 exports"
    if graph.kv_cache.dtype not in ("float32", "float16"):
        return f"its {graph.kv_cache.dtype} KV cache (it keeps float32 or float16)"
    if m.num_heads * a.head_dim != m.hidden_size:
        return f"{m.num_heads} heads of {a.head_dim} do not span the hidden size {m.hidden_size}"
    group = m.num_heads // a.num_kv_heads  # a whole number: manifest.py checks it
    if group > MAX_GROUP or a.head_dim % 16 or a.head_dim > MAX_HEAD_DIM:
        return f"{m.num_heads} heads over {a.num_kv_heads} KV heads of {a.head_dim}"
    qkv = (m.num_heads + 2 * a.num_kv_heads) * a.head_dim
    if any(d % 64 for d in (m.hidden_size, m.intermediate_size, m.vocab_size, qkv)):
        return "widths that are not multiples of 64 (the GEMM's blocks)"
    return None


def is_mla(artifact: Artifact) -> bool:
    """DeepSeek-V2/V3 (MLA + MoE): native_mla.py's decoder, not this one."""
    return artifact.model.attention.kind == "mla"


def check_threads(threads) -> None:
    """Before anything is read or allocated: the native loops size per-thread buffers by it."""
    if not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= MAX_THREADS:
        raise UsageError(f"native backend: {threads!r} threads (it runs 1 to {MAX_THREADS})")


def open_native(artifact: Artifact, threads: int, use_amx: bool = True):
    """The native backend for this artifact's architecture."""
    if is_mla(artifact):
        from .native_mla import NativeMlaBackend

        return NativeMlaBackend(artifact, threads, use_amx)
    return NativeBackend(artifact, threads, use_amx)


def _logits_buffer(rows: int, vocab: int) -> np.ndarray:
    """Room for `rows` rows of logits, rounded up to the AMX kernel's 32-row block (it writes
    them)."""
    return np.empty((-(-max(rows, 1) // 32) * 32, vocab), np.float32)


def _block_spans(start: int, stop: int):
    """(block column, first, end) of each cache block positions [start, stop) fall in."""
    for j in range(start // BLOCK_TOKENS, -(-stop // BLOCK_TOKENS)):
        yield j, max(start, j * BLOCK_TOKENS), min(stop, (j + 1) * BLOCK_TOKENS)


def _ptr(array: np.ndarray | None):
    return None if array is None else array.ctypes.data


class NativeBackend:
    name = "native"
    device = "cpu"
    supports_refill = True
    supports_prefix_cache = True
    kv_token_axis = 3  # of kv_rows' [k|v, layers, kv_heads, tokens, head_dim]

    def __init__(self, artifact: Artifact, threads: int, use_amx: bool = True):
        """use_amx: take the AMX tiles where the CPU and kernel grant them (elsewhere the request
        fails and the VNNI kernel runs)."""
        if why := unsupported(artifact):
            raise ArtifactError(f"native backend: {why}")
        self.lib = library()
        graph, model = artifact.graph("onnx"), artifact.model
        index = tensor_index.load(artifact, graph)
        self.layout = artifact.manifest.kv_layout("onnx")
        self.layers, self.kv_heads = self.layout.layers, self.layout.heads
        self.head_dim = self.layout.head_dim
        self.vocab_size = model.vocab_size
        self.cache_dtype = np.dtype(self.layout.dtype)
        check_threads(threads)
        data_path = artifact.path(graph.data_file)
        self._model = self.lib.ed_new(self.layers, model.hidden_size, model.num_heads,
                                      self.kv_heads, self.head_dim, model.intermediate_size,
                                      self.vocab_size, model.rms_norm_eps, threads, int(use_amx))
        if not self._model:
            raise ArtifactError("native backend: the decoder refused the model's dimensions "
                                "or rms_norm_eps")
        with open(data_path, "rb") as f:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

        def view(stored: dict | None, dtype=None, shape: tuple | None = None) -> np.ndarray | None:
            """The stored tensor, refused unless it lies inside the file with the dtype and shape
            (where given) the model's widths say: the library reads exactly that many bytes."""
            if stored is None:
                return None
            try:
                dt, stored_shape = np.dtype(stored["dtype"]), tuple(int(d) for d in stored["shape"])
                if shape is not None and stored_shape != shape:
                    raise ValueError(f"shape {list(stored_shape)}, not {list(shape)}")
                arr = np.frombuffer(data, dt, int(np.prod(stored_shape)), int(stored["offset"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise ArtifactError(f"native backend: {graph.tensors}: a tensor the weight file "
                                    f"does not hold as described ({exc})") from None
            arr = arr.reshape(stored_shape)
            return np.ascontiguousarray(arr, dtype=dtype) if dtype is not None else arr

        def check(rc: int, what: str) -> None:
            if rc != 0:
                raise ArtifactError(
                    f"native backend: the decoder refused {what} from {graph.tensors}")

        # Arrays are bound to names until the library has copied them: a converted copy passed
        # inline would be freed before the call reads it.
        def set_linear(layer: int, which: int, lin: dict) -> None:
            shape = (int(lin["k"]), int(lin["n"]))
            weight = view(lin["weight"], shape=shape)  # int8 [K, N], packed by the library
            if weight.dtype != np.int8:
                raise ArtifactError(
                    f"native backend: {graph.tensors}: {weight.dtype} weights, not int8")
            scales = view(lin["scales"], np.float32, (shape[1],))
            bias = view(lin["bias"], np.float32, (shape[1],))
            check(self.lib.ed_set_linear(self._model, layer, which, _ptr(weight), _ptr(scales),
                                         _ptr(bias), *shape),
                  f"a {shape[0]}x{shape[1]} linear layer")
            # Its file pages leave this process's memory now: loading a model peaks at the packed
            # weights plus one layer, not twice the weights.
            start = lin["weight"]["offset"] // mmap.PAGESIZE * mmap.PAGESIZE
            data.madvise(mmap.MADV_DONTNEED, start, lin["weight"]["offset"] + weight.nbytes - start)

        if len(index["layers"]) != self.layers:
            raise ArtifactError(f"native backend: {graph.tensors} lists {len(index['layers'])} "
                                f"layers, the manifest {self.layers}")
        hidden = (model.hidden_size,)
        for i, layer in enumerate(index["layers"]):
            mlp = layer["mlp"]
            linears = (layer["qkv"], layer["o"], mlp["gate"], mlp["up"], mlp["down"])
            for which, lin in enumerate(linears):
                set_linear(i, which, lin)
            norms = (view(layer["input_norm"], np.float32, hidden),
                     view(layer["post_norm"], np.float32, hidden))
            check(self.lib.ed_set_norms(self._model, i, _ptr(norms[0]), _ptr(norms[1])), "a norm")
        set_linear(-1, 0, index["lm_head"])
        final_norm = view(index["final_norm"], np.float32, hidden)
        check(self.lib.ed_set_norms(self._model, -1, _ptr(final_norm), None), "the final norm")
        positions = int(index["cos"]["shape"][0])
        cos = view(index["cos"], np.float32, (positions, self.head_dim // 2))
        sin = view(index["sin"], np.float32, (positions, self.head_dim // 2))
        check(self.lib.ed_set_rope(self._model, _ptr(cos), _ptr(sin), positions),
              "the rotary tables")
        del data  # the packed copies are the library's; only the embedding table stays mapped
        embed = index["embed"]
        table, scales = embed["table"], embed["scales"]
        if tuple(table["shape"]) != (self.vocab_size, model.hidden_size) or (
                scales is not None and int(np.prod(scales["shape"])) != self.vocab_size):
            raise ArtifactError(f"native backend: {graph.tensors}: an embedding table not of the "
                                f"manifest's {self.vocab_size} x {model.hidden_size}")
        try:
            self._table = np.memmap(data_path, np.dtype(table["dtype"]), "r", table["offset"],
                                    tuple(table["shape"]))
            self._row_scales = None if scales is None else np.ascontiguousarray(np.memmap(
                data_path, np.dtype(scales["dtype"]), "r", scales["offset"],
                tuple(scales["shape"])), np.float32)
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"native backend: {graph.tensors}: the embedding table is not "
                                f"inside {graph.data_file} ({exc})") from None
        int8_table = self._table.dtype == np.int8
        if int8_table != (self._row_scales is not None):
            raise ArtifactError(f"native backend: {graph.tensors}: an int8 embedding table comes "
                                "with row scales")
        if self._table.dtype == np.float16:  # read in place, a row at a time
            rc = self.lib.ed_set_embedding_f16(self._model, _ptr(self._table))
        else:
            if not int8_table:
                self._table = np.ascontiguousarray(self._table, np.float32)
            rc = self.lib.ed_set_embedding(self._model, _ptr(self._table) if int8_table else None,
                                           _ptr(self._row_scales),
                                           None if int8_table else _ptr(self._table))
        check(rc, "the embedding table")
        # "int16 per row": each matmul input's rounding remainder as a second int8 plane
        quant = artifact.manifest.quantization
        self.activation_planes = 2 if quant.activations == "int16 per row" else 1
        check(self.lib.ed_set_activations(self._model, self.activation_planes), "the activations")
        self.uses_amx = bool(self.lib.ed_uses_amx(self._model))
        self.batch_size = self.capacity = 0
        self.pool = BlockPool(self.layers, self.kv_heads, self.head_dim, self.cache_dtype)
        self.blocks: BlockTables | None = None

    def __del__(self):
        if getattr(self, "_model", None):
            self.lib.ed_free(self._model)
            self._model = None

    # Memory follows the tokens held (the loop admits by tokens); a subclass with a cache of its
    # own (native_mla.py) says False, and gets neither the blocks nor prefill_chunk.
    grows_in_blocks = True

    @property
    def chunked_prefill(self) -> bool:
        return self.grows_in_blocks  # prefill_chunk fills blocks

    @property
    def shared_block_tokens(self) -> int | None:
        """A prefix cache of blocks this size keeps this backend's own blocks (`pin`), and the
        slots that load them share them: a decode step then reads a shared prefix once from
        memory for the whole batch, not once per sequence."""
        return BLOCK_TOKENS if self.grows_in_blocks else None

    def pin(self, slot: int, j: int) -> PinnedBlock:
        """Block j of a slot (positions [j * 64, (j + 1) * 64), all computed), kept past the
        slot's release until the holder drops it."""
        if not 0 <= j < self.blocks.held[slot]:
            raise ValueError(f"block {j} of a slot that holds {self.blocks.held[slot]}")
        return PinnedBlock(self.pool, int(self.blocks.table[slot, j]))

    def start(self, batch_size: int, capacity: int) -> None:
        if self.blocks is not None:
            self.blocks.release_all()
        self.blocks = BlockTables(self.pool, batch_size, capacity)
        self._start_slots(batch_size, capacity)

    def _start_slots(self, batch_size: int, capacity: int) -> None:
        """The slots' bookkeeping and the decode step's buffers, for either native cache."""
        if self.batch_size != batch_size:
            self._logits = _logits_buffer(batch_size, self.vocab_size)
        self.batch_size, self.capacity = batch_size, capacity
        self.slot_lengths = SlotLengths(batch_size)
        self._slot_ids = np.arange(batch_size, dtype=np.int32)
        self._positions = np.zeros(batch_size, np.int32)

    def grow(self, capacity: int) -> None:
        if capacity > self.capacity:
            self.blocks.widen(capacity)  # the table alone: no cached position moves
            self.capacity = capacity

    def _forward(self, ids: np.ndarray, slots: np.ndarray, positions: np.ndarray,
                 logit_rows: np.ndarray, logits: np.ndarray, prompt: bool = False) -> None:
        """prompt: the rows are a prompt's (their attention in blocks, flash_prefill.h), else
        decode steps; a row's arithmetic is its call's kind, never its batch's."""
        b, pool = self.blocks, self.pool
        rc = self.lib.ed_forward(self._model, len(ids), _ptr(ids), _ptr(slots), _ptr(positions),
                                 len(logit_rows), _ptr(logit_rows), _ptr(b.table), b.max_blocks,
                                 _ptr(pool.key_addresses), _ptr(pool.value_addresses),
                                 max(pool.size, 1),
                                 int(self.cache_dtype == np.float16), self.batch_size, int(prompt),
                                 _ptr(logits))
        if rc == -1:
            raise ValueError("a position outside the cache capacity or the model's context")
        if rc == -2:
            raise ValueError(f"a token id outside the vocabulary (0..{self.vocab_size - 1})")
        if rc == -3:
            raise ValueError("a logit row outside the call")
        if rc == -5:
            raise MemoryError("native backend: no memory for the decoder's scratch buffers")
        if rc != 0:
            raise ValueError(
                "native backend: a model not completely loaded, or counts out of range")

    @property
    def cache_layout(self) -> str:
        """What a row of kv_rows holds, for the prefix cache's keys."""
        return (f"native-dense:{np.dtype(self.cache_dtype).name}:k,v[{self.layers},{self.kv_heads},"
                f"tokens,{self.head_dim}]")

    def kv_block_shape(self, tokens: int) -> tuple[np.dtype, tuple[int, ...]]:
        """dtype and shape of kv_rows over `tokens` positions."""
        return np.dtype(self.cache_dtype), (2, self.layers, self.kv_heads, tokens, self.head_dim)

    def kv_rows(self, slot: int, start: int, stop: int) -> np.ndarray:
        """A copy of positions [start, stop) of a slot's cache (gathered from its blocks)."""
        if not 0 <= start <= stop <= self.blocks.held[slot] * BLOCK_TOKENS:
            raise ValueError(f"positions [{start}, {stop}) outside the slot's cache")
        out = np.empty(self.kv_block_shape(stop - start)[1], self.cache_dtype)
        for j, lo, hi in _block_spans(start, stop):
            block, at = int(self.blocks.table[slot, j]), j * BLOCK_TOKENS
            out[0, :, :, lo - start:hi - start] = self.pool.keys(block)[:, :, lo - at:hi - at]
            out[1, :, :, lo - start:hi - start] = self.pool.values(block)[:, :, lo - at:hi - at]
        return out

    def load_kv(self, slot: int, start: int, rows: np.ndarray | PinnedBlock) -> None:
        """Write rows (as kv_rows gives them) at positions start.. of a slot's cache, taking its
        blocks for them (start 0: the slot starts from empty blocks, as a prefill from 0 does);
        a PinnedBlock (`pin`) is shared at its block's positions, not copied."""
        if start == 0:
            self.blocks.release(slot)
        if isinstance(rows, PinnedBlock):
            if start % BLOCK_TOKENS or start + BLOCK_TOKENS > self.capacity:
                raise ValueError(f"a shared block at position {start}")
            self.blocks.share(slot, start // BLOCK_TOKENS, rows.id)
            return
        stop = loaded_rows_stop(start, rows, self.kv_token_axis, self.capacity)
        self.blocks.own_from(slot, start)
        self.blocks.reserve(slot, stop)
        for j, lo, hi in _block_spans(start, stop):
            block, at = int(self.blocks.table[slot, j]), j * BLOCK_TOKENS
            self.pool.keys(block)[:, :, lo - at:hi - at] = rows[0, :, :, lo - start:hi - start]
            self.pool.values(block)[:, :, lo - at:hi - at] = rows[1, :, :, lo - start:hi - start]

    def prefill(self, slots: list[int], prompts: list[np.ndarray], every_position: bool = False,
                starts: list[int] | None = None) -> np.ndarray:
        """starts[i]: positions of prompt i already in its slot's cache (load_kv), not computed."""
        if any(len(p) == 0 for p in prompts):
            raise ValueError("an empty prompt")
        if len(set(slots)) != len(slots):
            raise ValueError("a slot given twice in one prefill")
        starts = prompt_starts(prompts, starts, self.capacity, every_position)
        if self.grows_in_blocks:
            for slot, p, s in zip(slots, prompts, starts):
                if s == 0:
                    self.blocks.release(slot)  # a slot prefilled again starts from empty blocks
                self.blocks.own_from(slot, s)
                self.blocks.reserve(slot, len(p))
        pairs = list(zip(prompts, starts))
        ids = np.concatenate([np.asarray(p[s:], np.int64) for p, s in pairs])
        row_slot = np.repeat(np.asarray(slots, np.int32), [len(p) - s for p, s in pairs])
        positions = np.concatenate([np.arange(s, len(p), dtype=np.int32) for p, s in pairs])
        ends = np.cumsum([len(p) - s for p, s in pairs]) - 1
        wanted = np.arange(len(ids)) if every_position else ends
        out = np.empty((len(wanted), self.vocab_size), np.float32)
        self._prefill_calls(ids, row_slot, positions, wanted, out)
        for s, p in zip(slots, prompts):
            self.slot_lengths.filled(s, len(p))
        if not every_position:
            return out
        longest = max(len(p) for p in prompts)
        full = np.zeros((len(prompts), longest, self.vocab_size), np.float32)
        for i, (p, end) in enumerate(zip(prompts, ends)):
            full[i, :len(p)] = out[end - len(p) + 1:end + 1]
        return full

    def _prefill_calls(self, ids: np.ndarray, row_slot: np.ndarray, positions: np.ndarray,
                       wanted: np.ndarray, out: np.ndarray) -> None:
        """The prefill's rows in calls of PREFILL_ROWS; a prompt may straddle two, its later rows
        attending to what the earlier call cached. out[i]: the logits of row wanted[i]."""
        for start in range(0, len(ids), PREFILL_ROWS):
            self._prefill_rows(ids, row_slot, positions, wanted, out, start,
                               min(start + PREFILL_ROWS, len(ids)))

    def _prefill_rows(self, ids, row_slot, positions, wanted, out, start: int, stop: int,
                      **forward) -> None:
        """Rows [start, stop) of a prefill in one call (`forward`: _forward's other arguments),
        the logits of its rows among `wanted` into `out`."""
        pick = np.flatnonzero((wanted >= start) & (wanted < stop))
        rows = (wanted[pick] - start).astype(np.int32)
        logits = _logits_buffer(len(rows), self.vocab_size)
        self._forward(ids[start:stop], row_slot[start:stop], positions[start:stop], rows, logits,
                      prompt=True, **forward)
        out[pick] = logits[:len(rows)]

    def prefill_chunk(self, slot: int, ids: np.ndarray, start: int, last: bool) -> np.ndarray:
        """Positions [start, start + len(ids)) of a prompt into `slot` (start 0: a new one); the
        last row's logits. The slot stays out of decode steps until its `last` chunk. The rows'
        attention is the same as a whole prefill's, bit for bit."""
        if start + len(ids) > self.capacity or len(ids) == 0:
            raise ValueError("a prompt chunk outside the cache capacity, or empty")
        if start == 0:
            self.release(slot)
        self.blocks.own_from(slot, start)
        self.blocks.reserve(slot, start + len(ids))
        ids = np.ascontiguousarray(ids, np.int64)
        positions = np.arange(start, start + len(ids), dtype=np.int32)
        logits = _logits_buffer(1, self.vocab_size)
        for at in range(0, len(ids), PREFILL_ROWS):
            stop = min(at + PREFILL_ROWS, len(ids))
            rows = np.array([stop - at - 1], np.int32)
            self._forward(ids[at:stop], np.full(stop - at, slot, np.int32), positions[at:stop],
                          rows, logits, prompt=True)
        if last:
            self.slot_lengths.filled(slot, start + len(ids))
        return logits[0].copy()

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        if len(tokens) != self.batch_size:
            raise ValueError(f"{len(tokens)} tokens for {self.batch_size} slots")
        positions = self.slot_lengths.decode_positions(self.capacity, out=self._positions)
        if self.grows_in_blocks:
            for s in np.flatnonzero(~self.slot_lengths.idle & (positions % BLOCK_TOKENS == 0)):
                self.blocks.reserve(int(s), int(positions[s]) + 1)  # a new block's first position
            positions[self.slot_lengths.idle] = -1  # idle rows: nothing cached, nothing attended
        self._forward(np.ascontiguousarray(tokens, np.int64), self._slot_ids, positions,
                      self._slot_ids, self._logits)
        self.slot_lengths.advance()
        return self._logits[:self.batch_size]

    def release(self, slot: int) -> None:
        self.slot_lengths.released(slot)
        if self.grows_in_blocks:
            self.blocks.release(slot)

    @property
    def lengths(self) -> np.ndarray:
        return self.slot_lengths.lengths
