"""The native backend for DeepSeek-V2/V3 int8 exports (MLA + MoE): edgeds' own decoder loops
(`edgeds/native/mla_moe.c`) instead of ONNX Runtime's graph.

It reads the artifact's weight file through its tensor index (`tensors.json`, MlaLayer records),
so weights and quantization are the ONNX graph's, bit for bit. The int8 linear layers and
experts are exported in the GEMM kernels' layout and read in place from the memory map (older
exports' row-major ones are packed at load), as are W_UK, W_UV, the float32 router and the
rope tables. The cache is MLA's latent, numpy memory
owned here: [layers, slots, capacity, kv_lora_rank + qk_rope_head_dim], float32 as the ONNX
graph's, or float16 (cache_dtype: half the bytes a decode step reads at depth, as ik_llama.cpp's
f16 cache; the latent is RMS-normed, its rope part small). Slots are refilled
while the others decode (continuous batching), as in the dense native backend, whose prefill and
decode steps this class shares."""

from __future__ import annotations

import math
import mmap
import os

import numpy as np

from .. import tensor_index
from ..artifact import Artifact
from ..errors import ArtifactError
from ..hardware import detect
from ..native import library
from . import native
from .native import NativeBackend, _ptr, check_threads
from .slots import grown, loaded_rows_stop

ROUTINGS = {"softmax_greedy": 0, "softmax_group_limited": 1, "sigmoid_noaux_tc": 2}
MAX_EXPERTS, MAX_GROUPS, MAX_LORA, MAX_V = 1024, 256, 4096, 256  # mla_moe.c's stack arrays


def physical_memory() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def unsupported(artifact: Artifact) -> str | None:
    """Why this MLA/MoE artifact cannot run on the native backend, or None."""
    graph, m, quant = artifact.graph("onnx"), artifact.model, artifact.manifest.quantization
    a, e = m.attention, m.experts
    if not graph.tensors:
        return "the export has no tensor index (re-export with this edgeds)"
    if quant.weights != "int8":
        return f"weights {quant.weights}: it runs --weights int8 exports"
    if graph.kv_cache.kind != "mla_latent":
        return "the export's cache is not MLA's latent"
    if e.routing not in ROUTINGS:
        return f"routing {e.routing!r}"
    if (e.n_routed_experts > MAX_EXPERTS or e.n_group > MAX_GROUPS or a.kv_lora_rank > MAX_LORA
            or a.v_head_dim > MAX_V or a.qk_nope_head_dim > MAX_V):
        return "more experts, groups, latent, key or value width than the native decoder holds"
    widths = [m.hidden_size, a.kv_lora_rank, a.qk_rope_head_dim, a.qk_nope_head_dim, a.v_head_dim,
              m.vocab_size, m.intermediate_size, e.moe_intermediate_size, a.q_lora_rank or 16]
    if any(w % 16 for w in widths):
        return "widths that are not multiples of 16 (the GEMM's blocks)"
    return None


DECODE_KERNELS = ("fma", "bf16", "tiles")  # em_set_decode_kernel's numbers
DECODE_KERNEL_WORDS = {"fma": "float32 FMAs", "bf16": "bf16 products on vdpbf16ps",
                       "tiles": "bf16 products on AMX tiles"}


def default_decode_kernel(cpu_flags) -> str:
    """vdpbf16ps where it was measured faster than FMAs: CPUs with AVX-512 BF16 but no AMX (the
    2-core EPYC, benchmarks/results/long-context.md). FMAs on AMX CPUs, where neither bf16 kernel
    has been timed yet (their arithmetic is checked there by tests/test_native_mla_tiles.py)."""
    return "bf16" if "avx512_bf16" in cpu_flags and "amx_bf16" not in cpu_flags else "fma"


class NativeMlaBackend(NativeBackend):
    grows_in_blocks = False  # its latent cache is one array of slots x capacity (start, grow)
    name = "native"
    device = "cpu"
    supports_refill = True

    def __init__(self, artifact: Artifact, threads: int, use_amx: bool = True,
                 map_weights: bool = True, cache_dtype: str = "float32",
                 absorbed_resumes: bool = False, keep_decompressed_bytes: int | None = None,
                 prompt_tiles: bool = True, decode_kernel: str = "auto",
                 layer_major: bool = True):
        """use_amx: take the AMX tiles where the CPU and kernel grant them (calls whose rows for
        a weight reach 16; elsewhere the request fails and the VNNI kernel runs).
        map_weights: the int8 linear layers and experts, which the export stores in the GEMM's
        own layout (export/tensors.py N16K4), are read where they lie in the artifact's memory
        map: a MoE model's bytes stay file pages, shared and evictable, and load reads none of
        them. False: copied into the process's memory (anonymous pages) at load. Exports whose
        weights are row-major (before n16k4) are packed at load either way.
        cache_dtype: the latent cache's, float16 or float32. absorbed_resumes: a prompt's few
        new rows after many cached ones attend absorbed (`absorbs`); off by default, as it makes
        a row's arithmetic depend on whether its prefix was a prefix cache hit, which depends on
        the batch: greedy texts at batch 1 and 64 then differ (tests/test_batch_invariance.py).
        keep_decompressed_bytes: memory a prefill may hold the decompressed keys and values of
        its prompts in while they are prefilled in several calls, so that each call decompresses
        its own rows only, not the whole prefix again (freed when the prefill returns; None: an
        eighth of the machine's memory, at most 8 GiB; 0: none). The same bits either way.
        layer_major: such a prefill runs all its calls through one layer before the next, so
        that a prompt keeps one layer's decompressed keys and values at a time (a 4,096-token
        prompt at V2-Lite's widths: 84 MB, not 84 MB for each layer kept), at the cost of the
        calls' hidden states between layers (hidden size x 4 bytes a row, out of the same
        budget: where they do not fit it, as below). False: each call through every layer,
        keeping as many leading layers as the budget holds. The same bits either way.
        prompt_tiles: a prompt's attention on AMX-BF16 tiles where the CPU grants them (bf16
        products of the queries and decompressed keys and values, float32 sums), else float32
        FMAs; a process takes one kernel for every prompt row (`prompt_tiles` after says which).
        decode_kernel: decode attention over the latent cache in float32 FMAs ("fma") or in bf16
        products of the absorbed queries and the cached latents, float32 sums, on vdpbf16ps
        ("bf16") or AMX-BF16 tiles ("tiles"), for every decode row; where the CPU lacks the one
        asked for, FMAs (`decode_kernel` after says which). "auto": default_decode_kernel."""
        check_threads(threads)
        if why := unsupported(artifact):
            raise ArtifactError(f"native backend: {why}")
        self.lib = library()
        graph, m = artifact.graph("onnx"), artifact.model
        a, e = m.attention, m.experts
        index = tensor_index.load(artifact, graph)
        layout = artifact.manifest.kv_layout("onnx")
        self.layers, self.vocab_size, self.latent_dim = layout.layers, m.vocab_size, layout.head_dim
        self.hidden_size = m.hidden_size
        shared = next(
            (ly["moe"]["shared"] for ly in index["layers"] if ly["moe"] and ly["moe"]["shared"]),
            None,
        )
        dims = [
            m.num_layers,
            m.hidden_size,
            m.num_heads,
            a.q_lora_rank or 0,
            a.kv_lora_rank,
            a.qk_nope_head_dim,
            a.qk_rope_head_dim,
            a.v_head_dim,
            m.intermediate_size,
            e.moe_intermediate_size,
            e.n_routed_experts,
            shared["gate"]["n"] if shared else 0,
            e.num_experts_per_tok,
            ROUTINGS[e.routing],
            e.n_group,
            e.topk_group,
            int(e.norm_topk_prob),
            m.vocab_size,
        ]
        self._dims = np.asarray(dims, np.int32)
        self._model = self.lib.em_new(
            _ptr(self._dims),
            m.rms_norm_eps,
            a.softmax_scale,
            e.routed_scaling_factor,
            threads,
            int(use_amx),
        )
        if not self._model:
            raise ArtifactError("native backend: the MLA decoder refused the model's dimensions")
        if cache_dtype not in ("float16", "float32"):
            raise ValueError(f"cache_dtype {cache_dtype!r}: float16 or float32")
        self.cache_dtype = np.dtype(cache_dtype)
        self.lib.em_set_cache_half(self._model, int(self.cache_dtype == np.float16))
        data_path = artifact.path(graph.data_file)
        with open(data_path, "rb") as f:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        base = np.frombuffer(data, np.uint8).ctypes.data  # the index's offsets are checked
        held: list[np.ndarray] = []  # what the library reads from Python's memory, kept alive

        def view(stored: dict | None, dtype=None) -> np.ndarray | None:
            if stored is None:
                return None
            arr = np.frombuffer(
                data, np.dtype(stored["dtype"]), math.prod(stored["shape"]), stored["offset"]
            )
            if dtype is not None and arr.dtype != dtype:
                held.append(arr := arr.astype(dtype))
            return arr

        def at(stored: dict | None, dtype: str = "float32") -> int | None:
            """The address of a tensor the library reads for the model's life: in the map where
            it is stored as `dtype`, else a converted copy."""
            if stored is None or stored["dtype"] == dtype:
                return None if stored is None else base + stored["offset"]
            return _ptr(view(stored, np.dtype(dtype)))

        def release(stored: dict, nbytes: int) -> None:
            # Packed: its file pages leave this process's memory, so loading peaks at the packed
            # weights plus one tensor, not twice the weights.
            start = stored["offset"] // mmap.PAGESIZE * mmap.PAGESIZE
            data.madvise(mmap.MADV_DONTNEED, start, stored["offset"] + nbytes - start)

        set_blocked = {"linear": self.lib.em_set_linear_blocked,
                       "expert": self.lib.em_set_expert_blocked}
        copy = int(not map_weights)

        def weights(kind: str, *where, lin: dict) -> None:
            """An int8 linear layer (kind "linear") or routed expert ("expert") at `where`:
            read in place where the export stored it in the GEMM's layout (n16k4; a call per
            matrix, so no numpy here: a V2-Lite has 5,000), else packed here from row-major
            [K, N] (exports before n16k4), or copied without map_weights."""
            w = lin["weight"]
            if lin["layout"] == "n16k4":  # tensor_index: int8 weight, float32 scales, int32 sums
                set_blocked[kind](self._model, *where, base + w["offset"],
                                  base + lin["scales"]["offset"],
                                  base + lin["col_sums"]["offset"], lin["k"], lin["n"], copy)
                if copy:
                    release(w, lin["k"] * lin["n"])
            else:
                weight, scales = view(w), view(lin["scales"], np.float32)
                getattr(self.lib, f"em_set_{kind}")(self._model, *where, _ptr(weight),
                                                    _ptr(scales), lin["k"], lin["n"])
                release(w, weight.nbytes)

        self.maps_weights = map_weights and index["lm_head"]["layout"] == "n16k4"
        for i, ly in enumerate(index["layers"]):
            for which, key in enumerate(("q_a", "q", "kv_a", "o")):
                if ly[key] is not None:
                    weights("linear", i, which, lin=ly[key])
            if ly["mlp"] is not None:
                for which, key in enumerate(("gate", "up", "down")):
                    weights("linear", i, 4 + which, lin=ly["mlp"][key])
            if (moe := ly["moe"]) is not None:
                self.lib.em_set_router(self._model, i, at(moe["router"]), at(moe["router_bias"]))
                for e, mlp in enumerate(moe["experts"]):
                    for which, key in enumerate(("gate", "up", "down")):
                        weights("expert", i, e, which, lin=mlp[key])
                if moe["shared"] is not None:
                    for which, key in enumerate(("gate", "up", "down")):
                        weights("linear", i, 7 + which, lin=moe["shared"][key])
            uk, uv = ly["w_uk"], ly["w_uv"]
            self.lib.em_set_absorb(self._model, i, at(uk["weight"], "int8"), at(uk["scales"]),
                                   at(uv["weight"], "int8"), at(uv["scales"]))
            norms = [
                view(ly[key], np.float32)
                for key in ("input_norm", "post_norm", "q_a_norm", "kv_a_norm")
            ]
            self.lib.em_set_norms(self._model, i, *map(_ptr, norms))
        weights("linear", -1, 0, lin=index["lm_head"])
        final_norm = view(index["final_norm"], np.float32)
        self.lib.em_set_norms(self._model, -1, _ptr(final_norm), None, None, None)
        self.lib.em_set_rope(self._model, at(index["cos"]), at(index["sin"]),
                             index["cos"]["shape"][0])
        # The library reads the router, W_UK/W_UV, rope tables and mapped weights from the map
        # (and `held`) for the model's life; packed and copied weights are its own.
        self._data, self._held = data, held
        data = None
        embed = index["embed"]
        table, scales = embed["table"], embed["scales"]
        self._table = np.memmap(
            data_path, np.dtype(table["dtype"]), "r", table["offset"], tuple(table["shape"])
        )
        self._row_scales = (
            None
            if scales is None
            else np.ascontiguousarray(
                np.memmap(
                    data_path,
                    np.dtype(scales["dtype"]),
                    "r",
                    scales["offset"],
                    tuple(scales["shape"]),
                ),
                np.float32,
            )
        )
        int8_table = self._table.dtype == np.int8
        if self._table.dtype == np.float16:  # read in place, a row at a time
            self.lib.em_set_embedding_f16(self._model, _ptr(self._table))
        else:
            if not int8_table:
                self._table = np.ascontiguousarray(self._table, np.float32)
            self.lib.em_set_embedding(
                self._model,
                _ptr(self._table) if int8_table else None,
                _ptr(self._row_scales),
                None if int8_table else _ptr(self._table),
            )
        # "int16 per row": each matmul input's rounding remainder as a second int8 plane
        planes = 2 if artifact.manifest.quantization.activations == "int16 per row" else 1
        self.activation_planes = planes
        self.lib.em_set_activations(self._model, planes)
        self.uses_amx = bool(self.lib.em_uses_amx(self._model))
        self.batch_size = self.capacity = self._prefill_call = 0
        self.absorbed_resumes = absorbed_resumes
        lora, dn, dv = a.kv_lora_rank, a.qk_nope_head_dim, a.v_head_dim
        self._absorb_rows = lora * (dn + dv) / (2 * lora - dn - dv) if 2 * lora > dn + dv else 1e30
        if keep_decompressed_bytes is None:
            keep_decompressed_bytes = min(8 << 30, physical_memory() // 8)
        self.keep_decompressed_bytes = keep_decompressed_bytes
        self.prompt_tiles = bool(self.lib.em_set_prompt_tiles(self._model, int(prompt_tiles)))
        if decode_kernel == "auto":
            decode_kernel = default_decode_kernel(detect().flags)
        if decode_kernel not in DECODE_KERNELS:
            raise ValueError(f"decode_kernel {decode_kernel!r}: auto, {', '.join(DECODE_KERNELS)}")
        took = self.lib.em_set_decode_kernel(self._model, DECODE_KERNELS.index(decode_kernel))
        self.decode_kernel = DECODE_KERNELS[took]
        self.kept_slots: list[tuple[int, int]] = []  # (slot, layers) the last prefill kept
        self.layer_major = layer_major
        self._layer_major_keep: list[tuple[int, int]] = []  # (slot, prompt length) this prefill

    def profile(self, reset: bool = False) -> np.ndarray:
        """Seconds spent in each phase of mla_moe.c's calls since the last reset: attention
        projections, attention, o_proj, routing, experts, dense MLP, LM head, the rest."""
        out = np.zeros(8, np.float64)
        self.lib.em_profile(self._model, _ptr(out), int(reset))
        return out

    def __del__(self):
        if getattr(self, "_model", None):
            self.lib.em_free(self._model)
            self._model = None

    def start(self, batch_size: int, capacity: int) -> None:
        if (self.batch_size, self.capacity) != (batch_size, capacity):
            self.latent = None  # free the old cache before the new one is allocated
            self.latent = np.zeros((self.layers, batch_size, capacity, self.latent_dim),
                                   self.cache_dtype)
        self._start_slots(batch_size, capacity)

    # A prefill call's rows attend over their slot's cached latent rows from position 0 (loaded
    # ones included), so a prompt resumes after a cached prefix like one that straddles calls.
    supports_prefix_cache = True
    kv_token_axis = 1  # of kv_rows' [layers, tokens, latent]

    @property
    def cache_layout(self) -> str:
        return f"native-mla:{self.cache_dtype.name}:latent[{self.layers},tokens,{self.latent_dim}]"

    def kv_block_shape(self, tokens: int) -> tuple[np.dtype, tuple[int, ...]]:
        return self.cache_dtype, (self.layers, tokens, self.latent_dim)

    def kv_rows(self, slot: int, start: int, stop: int) -> np.ndarray:
        return self.latent[:, slot, start:stop].copy()

    def load_kv(self, slot: int, start: int, rows: np.ndarray) -> None:
        stop = loaded_rows_stop(start, rows, self.kv_token_axis, self.capacity)
        self.latent[:, slot, start:stop] = rows

    def grow(self, capacity: int) -> None:
        if capacity > self.capacity:
            self.latent, self.capacity = grown(self.latent, capacity, token_axis=2), capacity

    def prefill(
        self,
        slots: list[int],
        prompts: list[np.ndarray],
        every_position: bool = False,
        starts: list[int] | None = None,
    ) -> np.ndarray:
        """Prompt rows attend over decompressed keys and values (per key and head nope + v
        multiply-adds, where absorbed attention costs 2 x kv_lora_rank + rope). With
        absorbed_resumes, a prompt's few rows after many cached ones (a prefix cache hit)
        attend absorbed as decode rows do: decompressing the whole cached prefix for them would
        cost more (`absorbs`). A row's path is its prompt's (new rows, cached rows), never
        where the calls are cut. starts[i]: positions of prompt i already in its
        slot's latent (load_kv), not computed."""
        starts = [0] * len(prompts) if starts is None else list(starts)
        if len(set(slots)) != len(slots):  # before the prompts part into two calls
            raise ValueError("a slot given twice in one prefill")
        absorbed = [self.absorbed_resumes and self.absorbs(len(p) - s, s)
                    for p, s in zip(prompts, starts)]
        if every_position or all(absorbed) or not any(absorbed):
            return self._prefill(0 if absorbed and all(absorbed) else 1, slots, prompts,
                                 every_position, starts)
        out = np.empty((len(prompts), self.vocab_size), np.float32)
        for kind in (1, 0):
            pick = [i for i, a in enumerate(absorbed) if a == (kind == 0)]
            out[pick] = self._prefill(kind, [slots[i] for i in pick], [prompts[i] for i in pick],
                                      False, [starts[i] for i in pick])
        return out

    def absorbs(self, rows: int, cached: int) -> bool:
        """Whether `rows` new rows after `cached` positions cost less absorbed: decompressing
        costs (cached + rows) x L (nope + v) multiply-adds per head, absorbed attention
        (2L + rope) - (nope + rope + v) more per query row and key than decompressed, so it
        wins while rows x (cached + rows / 2) < cached x L (nope + v) / (2L - nope - v): about
        170 rows after a long prefix at V2-Lite's widths, as measured (results/
        long-context.md: benchmarks/kernels/mla_prefill_crossover.py --prefix 2048)."""
        return rows * (cached + rows / 2) < cached * self._absorb_rows

    def _prefill(self, kind: int, slots, prompts, every_position, starts) -> np.ndarray:
        self._prefill_call = kind
        self.kept_slots, self._layer_major_keep = [], []
        try:
            if kind == 1:
                straddling = self._straddling(slots, prompts, starts)
                rows = sum(len(p) for p in prompts) - sum(starts)
                hidden_bytes = rows * self.hidden_size * 4  # what layer by layer holds besides
                if self.layer_major and hidden_bytes < self.keep_decompressed_bytes:
                    self._layer_major_keep = self._keep_one_layer(straddling, hidden_bytes)
                else:
                    self._keep_leading_layers(straddling)
            return super().prefill(slots, prompts, every_position, starts)
        finally:
            self._prefill_call = 0
            self._layer_major_keep = []
            self.lib.em_drop_decompressed(self._model)

    @staticmethod
    def _straddling(slots, prompts, starts) -> list[tuple[int, int]]:
        """(slot, prompt length) of the prompts whose rows fall in more than one of
        NativeBackend.prefill's calls."""
        starts = [0] * len(prompts) if starts is None else starts
        rows, at, found = native.PREFILL_ROWS, 0, []
        for slot, p, s in zip(slots, prompts, starts):
            first, at = at, at + len(p) - s
            if at > first and first // rows != (at - 1) // rows:
                found.append((slot, len(p)))
        return found

    def _keep_leading_layers(self, straddling) -> None:
        """Each straddling prompt keeps its decompressed keys and values from call to call,
        for as many of its leading layers as the budget still holds (the other layers, and a
        prompt with none kept, decompress the prefix per call)."""
        left = self.keep_decompressed_bytes
        for slot, length in straddling:
            per_layer = self.lib.em_kept_bytes(self._model, length, 1)
            layers = min(self.layers, left // per_layer)
            if layers and self.lib.em_keep_decompressed(self._model, slot, length, 0, layers) == 0:
                left -= layers * per_layer
                self.kept_slots.append((slot, layers))

    def _keep_one_layer(self, straddling, hidden_bytes: int) -> list[tuple[int, int]]:
        """The straddling prompts whose one layer the budget holds beside the calls' hidden
        states (all its layers are kept in turn, layer by layer); the others decompress the
        prefix per call."""
        left, kept = self.keep_decompressed_bytes - hidden_bytes, []
        for slot, length in straddling:
            per_layer = self.lib.em_kept_bytes(self._model, length, 1)
            if per_layer <= left:
                left -= per_layer
                kept.append((slot, length))
                self.kept_slots.append((slot, self.layers))
        return kept

    def _prefill_calls(self, ids, row_slot, positions, wanted, out) -> None:
        """Layer by layer where a prompt straddles calls (layer_major), else NativeBackend's
        calls through every layer."""
        if not self._layer_major_keep:
            return super()._prefill_calls(ids, row_slot, positions, wanted, out)
        rows = native.PREFILL_ROWS
        hidden = np.empty((len(ids), self.hidden_size), np.float32)
        no_rows = np.empty(0, np.int64)
        for layer in range(self.layers):
            for slot, length in self._layer_major_keep:  # where memory fails: per call
                self.lib.em_keep_decompressed(self._model, slot, length, layer, 1)
            # logits at the last layer's calls alone
            logits_of = wanted if layer == self.layers - 1 else no_rows
            for start in range(0, len(ids), rows):
                stop = min(start + rows, len(ids))
                self._prefill_rows(ids, row_slot, positions, logits_of, out, start, stop,
                                   layers=(layer, layer + 1), hidden=hidden[start:stop])

    def _forward(
        self,
        ids: np.ndarray,
        slots: np.ndarray,
        positions: np.ndarray,
        logit_rows: np.ndarray,
        logits: np.ndarray,
        prompt: bool = False,  # what NativeBackend.prefill passes; here _prefill_call says it
        layers: tuple[int, int] | None = None,
        hidden: np.ndarray | None = None,
    ) -> None:
        """layers [l0, l1) alone, the rows' hidden states carried in `hidden` (l0 > 0: read;
        l1 short of the last layer: written, no logits); None: every layer."""
        l0, l1 = layers or (0, self.layers)
        rc = self.lib.em_forward_layers(
            self._model,
            len(ids),
            _ptr(ids),
            _ptr(slots),
            _ptr(positions),
            len(logit_rows),
            _ptr(logit_rows),
            _ptr(self.latent),
            self.batch_size,
            self.capacity,
            self._prefill_call,
            _ptr(logits),
            l0,
            l1,
            _ptr(hidden),
        )
        if rc == -1:
            raise ValueError("a position outside the cache capacity or the model's context")
        if rc == -2:
            raise ValueError(f"a token id outside the vocabulary (0..{self.vocab_size - 1})")
        if rc == -3:
            raise ValueError("a logit row outside the call")
        if rc != 0:
            raise ValueError(f"layers {l0}..{l1} of {self.layers}, or no hidden states for them")
