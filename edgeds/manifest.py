"""The manifest's one meaning: `edgeds.json` parsed once into frozen, range-checked records.

A manifest is untrusted input (it can be edited by hand, or truncated), and its numbers size
buffers that native code writes into. So every field is read here and nowhere else: its type
and range checked, its consistency with the other fields and with the graph's inputs checked,
every file name checked to lie inside the artifact folder. Anything else is one line of
`ArtifactError` naming the file and the field. What is derived from several fields (the KV
cache's shape and bytes per token) is computed here, once.

Format versions: 1 (no seal) is still read. 2 adds `manifest_sha256`, the hash of the rest of
the manifest, so a hand edit is told apart from a damaged export; tests that edit a manifest
on purpose re-seal it with `seal()`.

To add a field: give its record a field, read it in that record's `_parse` (`r.opt(...)` for
one that older manifests lack), and write it in the exporter.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

from .errors import ArtifactError

MANIFEST = "edgeds.json"
FORMAT = "edgeds-artifact"
FORMAT_VERSION = 2  # what the exporter writes
READABLE_VERSIONS = (1, 2)
SEAL = "manifest_sha256"

# Bounds beyond any real model, low enough that no product of them overflows what native code
# and numpy index with (a 2**20-wide layer of 2**24 tokens is still < 2**63 bytes).
MAX_WIDTH = 1 << 20
MAX_LAYERS = 4096
MAX_HEADS = 4096
MAX_VOCAB = 1 << 24
MAX_CONTEXT = 1 << 24
MAX_EXPERTS = 1 << 16

WEIGHT_SCHEMES = ("int8", "int8-wo", "int4", "fp16", "fp32")
ACTIVATIONS = ("int8 per row", "int16 per row")  # Quantization.activations
CACHE_DTYPES = {"float32": 4, "float16": 2, "int8": 1}
ROUTINGS = ("softmax_greedy", "softmax_group_limited", "sigmoid_noaux_tc")
FORMATS = ("onnx", "openvino")
# Cache kinds each attention kind's graphs declare, by format. `per_head` is a benchmark
# baseline's MLA graph with K and V per head (benchmarks/design/mla_baselines.py).
CACHE_KINDS = {
    ("dense", "onnx"): ("shared_buffer",),
    ("dense", "openvino"): ("stateful",),
    ("mla", "onnx"): ("mla_latent", "per_head"),
    ("mla", "openvino"): ("stateful_mla_latent",),
}
_MISSING = object()


class _Fields:
    """One JSON object of the manifest, read field by field; `done()` refuses what was not read.
    Errors name the file and the dotted path of the field."""

    def __init__(self, data: Any, where: str, file: str = MANIFEST):
        self.where, self.file, self.read = where, file, set()
        if not isinstance(data, dict):
            self.fail(f"is {_kind(data)}, not an object")
        self.data = data

    def fail(self, message: str, key: str | None = None):
        where = f"{self.where}.{key}" if key and self.where else key or self.where or "the manifest"
        raise ArtifactError(f"{self.file}: {where} {message}")

    def get(self, key: str, default: Any = _MISSING) -> Any:
        self.read.add(key)
        if key in self.data:
            return self.data[key]
        if default is _MISSING:
            self.fail("is missing", key)
        return default

    def int(self, key: str, lo: int = 1, hi: int = MAX_WIDTH, default: Any = _MISSING) -> int:
        value = self.get(key, default)
        if type(value) is not int:
            self.fail(f"is {_kind(value)}, not an integer", key)
        if not lo <= value <= hi:
            self.fail(f"is {value}, outside {lo}..{hi}", key)
        return value

    def opt_int(self, key: str, lo: int = 1, hi: int = MAX_WIDTH) -> int | None:
        return None if self.get(key, None) is None else self.int(key, lo, hi)

    def float(
        self, key: str, lo: float, hi: float, default: Any = _MISSING, open_lo: bool = False
    ) -> float:
        value = self.get(key, default)
        if type(value) not in (int, float) or not math.isfinite(value):
            self.fail(f"is {_kind(value)}, not a finite number", key)
        if not (lo < value if open_lo else lo <= value) or value > hi:
            self.fail(f"is {value}, outside {'(' if open_lo else '['}{lo}, {hi}]", key)
        return float(value)

    def bool(self, key: str, default: Any = _MISSING) -> bool:
        value = self.get(key, default)
        if type(value) is not bool:
            self.fail(f"is {_kind(value)}, not true or false", key)
        return value

    def str(self, key: str, choices: tuple[str, ...] | None = None, default: Any = _MISSING) -> str:
        value = self.get(key, default)
        if type(value) is not str:
            self.fail(f"is {_kind(value)}, not a string", key)
        if choices is not None and value not in choices:
            self.fail(f"is {_short(value)}, not one of {', '.join(choices)}", key)
        return value

    def opt_str(self, key: str) -> str | None:
        return None if self.get(key, None) is None else self.str(key)

    def file_name(self, key: str, default: Any = _MISSING) -> str:
        name = self.str(key, default=default)
        if (why := unsafe_name(name)) is not None:
            self.fail(f"{_short(name)}: {why}", key)
        return name

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.get(key)
        if not isinstance(value, list) or not all(type(v) is str for v in value):
            self.fail("is not a list of strings", key)
        return tuple(value)

    def notes(self, keys: tuple[str, ...]) -> Mapping[str, str]:
        """Prose for people (what an op is, how a buffer is laid out): read, never acted on."""
        return MappingProxyType({k: self.str(k) for k in keys if k in self.data})

    def section(self, key: str, default: Any = _MISSING) -> _Fields:
        return _Fields(
            self.get(key, default), f"{self.where}.{key}" if self.where else key, self.file
        )

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.read)
        if unknown:
            self.fail(
                f"has unknown field(s) {', '.join(map(_short, unknown))} (from a newer edgeds?)"
            )


def _kind(value: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
    }.get(type(value), _short(value))


def _short(value: Any) -> str:
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def unsafe_name(name: str) -> str | None:
    """Why a file name from the manifest could reach outside the artifact folder, or None. Names
    are relative POSIX paths without `.` or `..` parts (symbolic links: `inside()`)."""
    if not name or "\x00" in name or "\\" in name:
        return "not a plain file name"
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("~"):
        return "an absolute path (artifact files are named relative to its folder)"
    if any(part in (".", "..") for part in name.split("/")) or str(path) != name:
        return "not a normalized path inside the artifact folder"
    if name == MANIFEST:
        return "the manifest itself"
    return None


def inside(root: Path, name: str) -> Path:
    """root/name, refused if a symbolic link on the way leads out of the artifact folder."""
    path = root / name
    try:
        resolved, top = path.resolve(), root.resolve()
    except (OSError, RuntimeError) as exc:  # a link loop
        raise ArtifactError(f"artifact file '{name}' cannot be resolved ({exc})") from None
    if top not in resolved.parents:
        raise ArtifactError(
            f"artifact file '{name}' leads outside the artifact folder (a symbolic link); "
            "refusing to read it"
        )
    return path


@dataclass(frozen=True)
class GroupedAttention:
    """Per-head K and V (GroupQueryAttention): `num_kv_heads` KV heads of `head_dim`."""

    kind = "dense"
    num_kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class LatentAttention:
    """DeepSeek's Multi-head Latent Attention: one cached latent per token per layer."""

    kind = "mla"
    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    softmax_scale: float

    @property
    def latent_dim(self) -> int:
        return self.kv_lora_rank + self.qk_rope_head_dim


@dataclass(frozen=True)
class Experts:
    """Routed experts (DeepSeek-V2/V3); `layers` are the MoE layers (the rest are dense)."""

    moe_intermediate_size: int
    n_routed_experts: int
    n_shared_experts: int
    num_experts_per_tok: int
    routing: str
    n_group: int
    topk_group: int
    norm_topk_prob: bool
    routed_scaling_factor: float
    layers: tuple[int, ...]


@dataclass(frozen=True)
class Model:
    model_type: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: Mapping[str, Any]
    max_position_embeddings: int
    tie_word_embeddings: bool
    context_length: int
    attention: GroupedAttention | LatentAttention
    experts: Experts | None  # MLA models (all their fields; `layers` may be empty)
    mtp_layers_left_out: int = 0

    @property
    def has_experts(self) -> bool:
        return self.experts is not None and bool(self.experts.layers)

    def check_rope_rows(self, rows: int, where: str) -> None:
        """A graph's rotary tables must cover every position of the context: past their rows
        ONNX Runtime fails in the middle of a job and OpenVINO's Gather silently reads a wrong
        row. Only an edited manifest (context_length raised and re-sealed) gets here."""
        if rows < self.context_length:
            raise ArtifactError(
                f"{where}: its rotary tables cover {rows} positions, but the manifest's "
                f"context_length is {self.context_length} (re-export with --context "
                f"{self.context_length} for that context)"
            )

    @staticmethod
    def _parse(r: _Fields) -> Model:
        common = dict(
            model_type=r.str("model_type"),
            hidden_size=r.int("hidden_size"),
            intermediate_size=r.int("intermediate_size"),
            num_layers=r.int("num_layers", hi=MAX_LAYERS),
            num_heads=r.int("num_heads", hi=MAX_HEADS),
            vocab_size=r.int("vocab_size", hi=MAX_VOCAB),
            rms_norm_eps=r.float("rms_norm_eps", 0, 1, open_lo=True),
            rope_theta=r.float("rope_theta", 0, 1e12, open_lo=True),
            rope_scaling=_rope_scaling(r.section("rope_scaling")),
            max_position_embeddings=r.int("max_position_embeddings", hi=MAX_CONTEXT),
            tie_word_embeddings=r.bool("tie_word_embeddings"),
            context_length=r.int("context_length", hi=MAX_CONTEXT),
        )
        if common["context_length"] > common["max_position_embeddings"]:
            r.fail(
                f"is {common['context_length']}, beyond max_position_embeddings "
                f"{common['max_position_embeddings']} (the rotary tables cover no more)",
                "context_length",
            )
        if "kv_lora_rank" not in r.data:
            attention = GroupedAttention(r.int("num_kv_heads", hi=MAX_HEADS), r.int("head_dim"))
            if common["num_heads"] % attention.num_kv_heads:
                r.fail(
                    f"is {attention.num_kv_heads}, which does not divide num_heads "
                    f"{common['num_heads']}",
                    "num_kv_heads",
                )
            if attention.head_dim % 2:
                r.fail(
                    f"is {attention.head_dim}: rotary embeddings need an even head_dim", "head_dim"
                )
            experts, mtp = None, 0
        else:
            attention = LatentAttention(
                q_lora_rank=r.opt_int("q_lora_rank"),
                kv_lora_rank=r.int("kv_lora_rank"),
                qk_nope_head_dim=r.int("qk_nope_head_dim"),
                qk_rope_head_dim=r.int("qk_rope_head_dim"),
                v_head_dim=r.int("v_head_dim"),
                softmax_scale=r.float("softmax_scale", 0, 1e6, open_lo=True),
            )
            if attention.qk_rope_head_dim % 2:
                r.fail(
                    f"is {attention.qk_rope_head_dim}: rotary embeddings need it even",
                    "qk_rope_head_dim",
                )
            experts, mtp = (
                _experts(r, common["num_layers"]),
                r.int("mtp_layers_left_out", 0, MAX_LAYERS),
            )
        return Model(**common, attention=attention, experts=experts, mtp_layers_left_out=mtp)


def _rope_scaling(r: _Fields) -> Mapping[str, Any]:
    """Kept as written (the rotary tables are baked into the export); only its type is checked."""
    r.str("rope_type")
    for key, value in r.data.items():
        if not isinstance(value, (str, int, float, bool, type(None), list)):
            r.fail(f"is {_kind(value)}", key)
    return MappingProxyType(dict(r.data))


def _experts(r: _Fields, num_layers: int) -> Experts:
    n = r.int("n_routed_experts", 0, MAX_EXPERTS)
    layers = r.get("moe_layers")
    if (
        not isinstance(layers, list)
        or not all(type(i) is int for i in layers)
        or layers != sorted(set(layers))
        or any(not 0 <= i < num_layers for i in layers)
    ):
        r.fail(
            f"is not an increasing list of layer numbers below num_layers {num_layers}",
            "moe_layers",
        )
    if layers and not n:
        r.fail("lists MoE layers, but n_routed_experts is 0", "moe_layers")
    lo = 1 if layers else 0
    e = Experts(
        moe_intermediate_size=r.int("moe_intermediate_size", lo),
        n_routed_experts=n,
        n_shared_experts=r.int("n_shared_experts", 0, MAX_EXPERTS),
        num_experts_per_tok=r.int("num_experts_per_tok", lo, max(n, lo)),
        routing=r.str("routing", ROUTINGS),
        n_group=r.int("n_group", 1, max(n, 1)),
        topk_group=r.int("topk_group", 1, MAX_EXPERTS),
        norm_topk_prob=r.bool("norm_topk_prob"),
        routed_scaling_factor=r.float("routed_scaling_factor", 0, 1e6, open_lo=True),
        layers=tuple(layers),
    )
    if n % e.n_group:
        r.fail(f"is {e.n_group}, which does not divide n_routed_experts {n}", "n_group")
    if e.topk_group > e.n_group:
        r.fail(f"is {e.topk_group}, more than n_group {e.n_group}", "topk_group")
    if layers and e.num_experts_per_tok > n // e.n_group * e.topk_group:
        r.fail(
            f"is {e.num_experts_per_tok}, more than the {e.topk_group} groups of "
            f"{n // e.n_group} experts it picks from",
            "num_experts_per_tok",
        )
    return e


@dataclass(frozen=True)
class Quantization:
    weights: str
    symmetric: bool
    granularity: str | None
    block_size: int | None
    scale_dtype: str
    embedding: str  # "int8 per-row", or the float dtype of the table
    lm_head: str
    # What an int8 x int8 matmul's input is rounded to at run time. "int8 per row": ONNX
    # Runtime's MatMulIntegerToFloat and the native decoders (the int8 scheme's own).
    # "int16 per row": the native MLA+MoE decoder keeps what int8 rounding left as a second
    # int8 plane (about 15 bits a value; twice the integer work, the same weight bytes); ONNX
    # Runtime's graph still rounds to int8 per row. "float" (int8-wo, int4): MatMulNBits at
    # accuracy level 0, activations never rounded. None: the scheme's own.
    activations: str | None = None

    @property
    def dynamic_int8(self) -> bool:
        """int8 weights per output channel times activations quantized per row at run time
        (MatMulIntegerToFloat): only ONNX Runtime's CPU provider runs it."""
        return self.weights == "int8"

    @property
    def embedding_dtype(self) -> str:
        return "int8" if self.embedding == "int8 per-row" else self.embedding

    def embedding_bytes(self, vocab: int, hidden: int) -> int:
        """The table's bytes, and its row scales (float32) for an int8 table."""
        table = vocab * hidden * CACHE_DTYPES[self.embedding_dtype]
        return table + 4 * vocab if self.embedding_dtype == "int8" else table

    @staticmethod
    def _parse(r: _Fields) -> Quantization:
        return Quantization(
            weights=r.str("weights", WEIGHT_SCHEMES),
            symmetric=r.bool("symmetric"),
            granularity=r.opt_str("granularity"),
            block_size=r.opt_int("block_size", hi=1 << 16),
            scale_dtype=r.str("scale_dtype", ("float32",)),
            embedding=r.str("embedding", ("int8 per-row", "float32", "float16")),
            lm_head=r.str("lm_head"),
            activations=Quantization._activations(r),
        )

    @staticmethod
    def _activations(r: _Fields) -> str | None:
        weights = r.get("weights")
        if weights in ("int8-wo", "int4"):
            return None if r.get("activations", None) is None else r.str("activations", ("float",))
        if weights != "int8":
            if r.get("activations", None) is not None:
                r.fail(f"is set for weights {weights}: only int8 weights round activations",
                       "activations")
            return None
        return r.str("activations", ACTIVATIONS, default="int8 per row")


@dataclass(frozen=True)
class KvCache:
    """What a graph's cache is; `KvLayout` (Manifest.kv_layout) says its shape."""

    kind: str
    dtype: str
    heads: int | None = None  # per_head only: the cache's own head count and width
    head_dim: int | None = None
    notes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @staticmethod
    def _parse(r: _Fields, kinds: tuple[str, ...]) -> KvCache:
        kind = r.str("kind", kinds)
        heads = head_dim = None
        if kind == "per_head":
            heads, head_dim = r.int("heads", hi=MAX_HEADS), r.int("head_dim")
        r.get("values_per_token_per_layer", None)  # checked against the layout by Manifest
        r.get("bytes_per_token", None)
        dtype = r.str("dtype", tuple(CACHE_DTYPES), default="float32")
        if dtype == "int8" and kind != "shared_buffer":
            r.fail(f"is int8, which only a dense ONNX graph's cache ({kind} here) can be", "dtype")
        notes = r.notes(
            (
                "layout",
                "past",
                "present",
                "lengths",
                "variables",
                "attention",
                "scales",
                "fresh_prompt",
            )
        )
        return KvCache(kind, dtype, heads, head_dim, notes)


@dataclass(frozen=True)
class KvLayout:
    """The KV cache of one graph, the one place its shape is worked out: per layer `buffers`
    arrays (K and V, or MLA's latent serving as both) of [batch, heads, capacity, head_dim]."""

    layers: int
    buffers: int
    heads: int
    head_dim: int
    dtype: str

    def shape(self, batch: int, capacity: int) -> tuple[int, int, int, int]:
        return (batch, self.heads, capacity, self.head_dim)

    @property
    def values_per_token(self) -> int:
        return self.layers * self.buffers * self.heads * self.head_dim

    @property
    def bytes_per_token(self) -> int:
        return self.values_per_token * CACHE_DTYPES[self.dtype]


@dataclass(frozen=True)
class GraphPart:
    file: str
    first_layer: int


@dataclass(frozen=True)
class SmallBatchGraph:
    file: str
    data_file: str
    parts: tuple[GraphPart, ...]
    notes: Mapping[str, str]

    @staticmethod
    def _parse(r: _Fields, num_layers: int) -> SmallBatchGraph:
        return SmallBatchGraph(
            r.file_name("file"),
            r.file_name("data_file"),
            _parts(r, num_layers),
            r.notes(("linear", "use", "parts_note")),
        )


def _parts(r: _Fields, num_layers: int) -> tuple[GraphPart, ...]:
    raw = r.get("parts", [])
    if not isinstance(raw, list):
        r.fail(f"is {_kind(raw)}, not a list", "parts")
    parts = []
    for i, entry in enumerate(raw):
        p = _Fields(entry, f"{r.where}.parts[{i}]", r.file)
        parts.append(GraphPart(p.file_name("file"), p.int("first_layer", 0, num_layers - 1)))
        p.done()
    firsts = [p.first_layer for p in parts]
    if parts and (firsts[0] != 0 or firsts != sorted(set(firsts))):
        r.fail(f"start at layers {firsts}: they must start at 0 and increase", "parts")
    return tuple(parts)


@dataclass(frozen=True)
class TensorrtProfiles:
    """A `--target tensorrt` graph's optimization profiles (export/tensorrt_profiles.py): per
    profile (prefill, decode), per level (min, opt, max), each dynamic input's shape."""

    max_batch: int
    context: int
    parser_versions: tuple[str, ...]
    profiles: Mapping[str, Mapping[str, Mapping[str, tuple[int, ...]]]]
    notes: Mapping[str, str]

    @staticmethod
    def _parse(r: _Fields, inputs: tuple[str, ...]) -> TensorrtProfiles:
        r.str("target", ("tensorrt",))
        r.get("axes")  # the same ranges by axis name, for people
        raw = r.section("profiles")
        profiles = {}
        for name in list(raw.data):
            levels = raw.section(name)
            shapes = {}
            for level in ("min", "opt", "max"):
                per_input = levels.section(level)
                shapes[level] = MappingProxyType({
                    tensor: _dims(per_input, tensor) for tensor in list(per_input.data)})
                if unknown := set(shapes[level]) - set(inputs):
                    names = ", ".join(sorted(unknown))
                    per_input.fail(f"names inputs the graph does not have: {names}")
                per_input.done()
            for tensor in shapes["min"]:
                low, opt, high = (shapes[lv].get(tensor) for lv in ("min", "opt", "max"))
                ranked = opt is not None and high is not None and len(low) == len(opt) == len(high)
                if not ranked or not all(a <= b <= c for a, b, c in zip(low, opt, high)):
                    levels.fail(f"{tensor}: min <= opt <= max does not hold")
            levels.done()
            profiles[name] = MappingProxyType(shapes)
        raw.done()
        entry = TensorrtProfiles(r.int("max_batch"), r.int("context"), r.strings("parser_versions"),
                                 MappingProxyType(profiles), r.notes(("note",)))
        r.done()
        return entry


def _dims(r: _Fields, key: str) -> tuple[int, ...]:
    value = r.get(key)
    if not isinstance(value, list) or not all(type(v) is int and 0 < v <= MAX_WIDTH for v in value):
        r.fail("is not a list of positive dimensions", key)
    return tuple(value)


@dataclass(frozen=True)
class Graph:
    format: str
    file: str
    data_file: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    kv_cache: KvCache
    ops: Mapping[str, str]  # what each op is, for people
    opset: int | None = None
    tensors: str | None = None  # the tensor index the native backends read (tensor_index.py)
    parts: tuple[GraphPart, ...] = ()
    small_batch: SmallBatchGraph | None = None
    notes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    tensorrt: TensorrtProfiles | None = None  # a --target tensorrt graph's profiles

    @property
    def files(self) -> tuple[str, ...]:
        """The graph's own files (its parts and small-batch graph's too), not the tensor index."""
        small = self.small_batch
        names = [self.file, *(p.file for p in self.parts), self.data_file]
        if small:
            names += [small.file, *(p.file for p in small.parts), small.data_file]
        return tuple(dict.fromkeys(names))

    @staticmethod
    def _parse(r: _Fields, fmt: str, model: Model) -> Graph:
        kv = KvCache._parse(r.section("kv_cache"), CACHE_KINDS[model.attention.kind, fmt])
        ops = r.section("ops")
        graph = Graph(
            format=fmt,
            file=r.file_name("file"),
            data_file=r.file_name("data_file"),
            inputs=r.strings("inputs"),
            outputs=r.strings("outputs"),
            kv_cache=kv,
            ops=ops.notes(tuple(k for k in ops.data if isinstance(ops.data[k], str))),
            opset=r.opt_int("opset", hi=1000),
            tensors=r.file_name("tensors") if r.get("tensors", None) is not None else None,
            parts=_parts(r, model.num_layers),
            small_batch=(
                SmallBatchGraph._parse(r.section("small_batch"), model.num_layers)
                if r.get("small_batch", None) is not None
                else None
            ),
            notes=r.notes(("parts_note",)),
            tensorrt=(
                TensorrtProfiles._parse(r.section("tensorrt"), r.strings("inputs"))
                if r.get("tensorrt", None) is not None
                else None
            ),
        )
        # Older MLA exports wrote the model's mtp_layers_left_out into each graph too.
        r.int("mtp_layers_left_out", 0, MAX_LAYERS, default=0)
        ops.done()
        _check_cache_names(r, graph, model.num_layers)
        return graph


# The cache inputs and outputs a graph of each kind binds, layer by layer.
_CACHE_NAMES = {
    "shared_buffer": (("past_key.{i}", "past_value.{i}"), ("present_key.{i}", "present_value.{i}")),
    "mla_latent": (("past_latent.{i}",), ("present_latent.{i}", "present_latent_alias.{i}")),
}


def _check_cache_names(r: _Fields, graph: Graph, layers: int) -> None:
    """A graph binds exactly one cache input per layer and buffer: a changed num_layers (or a
    graph from another export) would bind buffers the graph does not have, or miss some."""
    if "logits" not in graph.outputs:
        r.fail("do not include logits", "outputs")
    names = _CACHE_NAMES.get(graph.kv_cache.kind)
    if names is None:
        return  # stateful graphs keep the cache inside; per_head baselines list none
    for key, listed, patterns in (
        ("inputs", graph.inputs, names[0]),
        ("outputs", graph.outputs, names[1]),
    ):
        prefixes = tuple(p.split("{")[0] for p in patterns)
        have = {n for n in listed if n.startswith(prefixes)}
        want = {p.format(i=i) for p in patterns for i in range(layers)}
        if have != want:
            r.fail(
                f"hold {len(have)} cache tensors, not the {len(want)} of num_layers {layers}",
                key,
            )


@dataclass(frozen=True)
class TokenizerFiles:
    file: str
    chat_template: str | None
    bos_token: str | None
    eos_token: str | None
    add_bos_token: bool
    # The same tokenizer as arrays (compact_tokenizer.py), where the exporter could write it:
    # read without the JSON parse that `file` costs `tokenizers` at every load.
    compact: str | None = None

    @staticmethod
    def _parse(r: _Fields) -> TokenizerFiles:
        return TokenizerFiles(
            r.file_name("file"),
            r.file_name("chat_template") if r.get("chat_template", None) is not None else None,
            r.opt_str("bos_token"),
            r.opt_str("eos_token"),
            r.bool("add_bos_token", default=False),
            r.file_name("compact") if r.get("compact", None) is not None else None,
        )


@dataclass(frozen=True)
class Generation:
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    temperature: float
    top_p: float
    top_k: int

    @staticmethod
    def _parse(r: _Fields, vocab: int) -> Generation:
        eos = r.get("eos_token_ids", [])
        if not isinstance(eos, list) or not all(type(t) is int and 0 <= t < vocab for t in eos):
            r.fail(f"is not a list of token ids below vocab_size {vocab}", "eos_token_ids")
        return Generation(
            r.opt_int("bos_token_id", 0, vocab - 1),
            tuple(eos),
            r.float("temperature", 0, 1e3, default=0.0),
            r.float("top_p", 0, 1, default=1.0, open_lo=True),
            r.int("top_k", 0, MAX_VOCAB, default=0),
        )


@dataclass(frozen=True)
class FileEntry:
    """A file's size and sha256; a large one's also per piece of `piece_bytes` (the last piece
    shorter), so that it can be verified on every core at once (artifact.verify_files)."""

    size: int
    sha256: str
    piece_bytes: int = 0
    pieces: tuple[str, ...] = ()


def _is_sha256(digest) -> bool:
    return (type(digest) is str and len(digest) == 64
            and all(c in "0123456789abcdef" for c in digest))


def _files(r: _Fields) -> Mapping[str, FileEntry]:
    out = {}
    for name in list(r.data):
        if (why := unsafe_name(name)) is not None:
            r.fail(f"{why}", _short(name))
        f = r.section(name)
        digest, size = f.str("sha256"), f.int("size", 0, 1 << 50)
        if not _is_sha256(digest):
            f.fail("is not a sha256 hex digest", "sha256")
        piece_bytes, pieces = 0, ()
        if "pieces" in f.data:
            p = f.section("pieces")
            piece_bytes = p.int("bytes", 1 << 12, 1 << 40)
            pieces = p.get("sha256")
            if (not isinstance(pieces, list) or not all(map(_is_sha256, pieces))
                    or len(pieces) != -(-size // piece_bytes)):
                p.fail(f"is not a list of {-(-size // piece_bytes)} sha256 hex digests", "sha256")
            p.done()
        out[name] = FileEntry(size, digest, piece_bytes, tuple(pieces))
        f.done()
    return MappingProxyType(out)


def _mapping_of_strings(r: _Fields) -> Mapping[str, str | None]:
    for key, value in r.data.items():
        r.read.add(key)
        if value is not None and type(value) is not str:
            r.fail(f"is {_kind(value)}, not a string", key)
    return MappingProxyType(dict(r.data))


@dataclass(frozen=True)
class Fp8Source:
    """The checkpoint was DeepSeek's FP8 (e4m3 with a scale per block), dequantized at export
    and quantized as `quantization` says; for people and tools, nothing reads it to run."""

    format: str
    weight_block_size: tuple[int, int]
    scale_fmt: str | None
    dequantized: str

    @staticmethod
    def _parse(r: _Fields) -> Fp8Source:
        block = r.get("weight_block_size")
        if not isinstance(block, list) or len(block) != 2 or not all(
            type(b) is int and 1 <= b <= MAX_WIDTH for b in block
        ):
            r.fail("is not two block sizes [rows, cols]", "weight_block_size")
        return Fp8Source(r.str("format"), (block[0], block[1]), r.opt_str("scale_fmt"),
                         r.str("dequantized"))


@dataclass(frozen=True)
class Source:
    """The checkpoint exported: its path then, and its files' sha256 (for people and tools);
    `fp8` where it was an FP8 checkpoint."""

    path: str
    files: Mapping[str, str | None]
    fp8: Fp8Source | None = None


@dataclass(frozen=True)
class Manifest:
    format_version: int
    model: Model
    quantization: Quantization
    graphs: Mapping[str, Graph]
    tokenizer: TokenizerFiles
    generation: Generation
    source: Source
    exporter: Mapping[str, str | None]
    verification: Mapping[str, Any] | None  # the export's own check (verify.py): a report
    files: Mapping[str, FileEntry]

    @property
    def formats(self) -> list[str]:
        return list(self.graphs)

    def graph(self, fmt: str) -> Graph:
        if fmt not in self.graphs:
            raise ArtifactError(f"artifact has no {fmt} graph (it has: {', '.join(self.formats)})")
        return self.graphs[fmt]

    def kv_layout(self, fmt: str) -> KvLayout:
        kv, m = self.graph(fmt).kv_cache, self.model
        if kv.kind == "per_head":
            return KvLayout(m.num_layers, 2, kv.heads, kv.head_dim, kv.dtype)
        if isinstance(m.attention, LatentAttention):
            return KvLayout(m.num_layers, 1, 1, m.attention.latent_dim, kv.dtype)
        return KvLayout(m.num_layers, 2, m.attention.num_kv_heads, m.attention.head_dim, kv.dtype)

    def file_size(self, name: str) -> int:
        return self.files[name].size if name in self.files else 0


def parse(data: Any, file: str = MANIFEST) -> Manifest:
    """A manifest's JSON value -> Manifest; ArtifactError (one line) for anything out of place."""
    r = _Fields(data, "", file)
    if r.get("format", None) != FORMAT:
        raise ArtifactError(
            f"{file} is not an edgeds manifest (format={_short(r.data.get('format'))})"
        )
    version = r.get("format_version", None)
    if version not in READABLE_VERSIONS:
        raise ArtifactError(
            f"artifact format version {_short(version)} is not supported by this edgeds "
            f"(it reads {', '.join(map(str, READABLE_VERSIONS))}); re-export it with this "
            "edgeds, or upgrade edgeds"
        )
    if version >= 2:
        try:
            digest = _digest(data)
        except ValueError:  # NaN or Infinity, which JSON has no words for
            raise ArtifactError(f"{file} holds NaN or Infinity; re-export the artifact") from None
        if r.get(SEAL, None) != digest:
            raise ArtifactError(
                f"{file} was edited after export (its {SEAL} does not match its contents); "
                "re-export the artifact"
            )
    elif SEAL in r.data:
        r.fail("is a version 2 field in a version 1 manifest", SEAL)
    model = Model._parse(m := r.section("model"))
    m.done()
    quantization = Quantization._parse(q := r.section("quantization"))
    q.done()
    g = r.section("graphs")
    unknown = [k for k in g.data if k not in FORMATS]
    if unknown or not g.data:
        g.fail(
            f"must name one or more of {', '.join(FORMATS)} (has {', '.join(map(_short, g.data))})"
        )
    graphs = {}
    for fmt in list(g.data):
        graphs[fmt] = Graph._parse(entry := g.section(fmt), fmt, model)
        entry.done()
    tokenizer = TokenizerFiles._parse(t := r.section("tokenizer"))
    t.done()
    generation = Generation._parse(gen := r.section("generation", {}), model.vocab_size)
    gen.done()
    s = r.section("source")
    fp8 = None
    if s.get("fp8", None) is not None:
        fp8 = Fp8Source._parse(f := s.section("fp8"))
        f.done()
    source = Source(s.str("path"), _mapping_of_strings(s.section("files")), fp8)
    s.done()
    exporter = _mapping_of_strings(r.section("exporter", {}))
    verification = r.get("verification", None)
    if verification is not None:
        v = r.section("verification")
        v.str("summary")
        v.read.update(v.data)
        verification = MappingProxyType(dict(verification))
    files = _files(r.section("files"))
    r.done()
    manifest = Manifest(
        version,
        model,
        quantization,
        MappingProxyType(graphs),
        tokenizer,
        generation,
        source,
        exporter,
        verification,
        files,
    )
    _check_consistency(manifest, data["graphs"], file)
    return manifest


def _check_consistency(manifest: Manifest, raw_graphs: dict, file: str) -> None:
    """What one section says about another: the cache size the exporter wrote down, and every
    file named is one the manifest hashes (so the integrity check covers all that is read)."""
    for fmt, graph in manifest.graphs.items():
        layout, raw = manifest.kv_layout(fmt), raw_graphs[fmt]["kv_cache"]
        for key, derived in (
            ("bytes_per_token", layout.bytes_per_token),
            ("values_per_token_per_layer", layout.values_per_token // layout.layers),
        ):
            if key in raw and raw[key] != derived:
                raise ArtifactError(
                    f"{file}: graphs.{fmt}.kv_cache.{key} is {_short(raw[key])}, but the "
                    f"model's shape gives {derived}"
                )
        for name in (*graph.files, graph.tensors):
            if name and name not in manifest.files:
                raise ArtifactError(
                    f"{file}: graphs.{fmt} names '{name}', which its files list lacks"
                )
    tok = manifest.tokenizer
    for name in (tok.file, tok.chat_template, tok.compact):
        if name and name not in manifest.files:
            raise ArtifactError(f"{file}: tokenizer names '{name}', which its files list lacks")


def _digest(data: dict) -> str:
    body = {k: v for k, v in data.items() if k != SEAL}
    return hashlib.sha256(
        json.dumps(
            body, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode("utf-8")
    ).hexdigest()


def seal(data: dict) -> dict:
    """The manifest as version 2 with its seal: what the exporter writes, and what a test that
    edits a manifest on purpose writes back (`json.dumps(seal(m))`)."""
    rest = {k: v for k, v in data.items() if k not in ("format", "format_version", SEAL)}
    body = {"format": data.get("format", FORMAT), "format_version": FORMAT_VERSION, **rest}
    return {**body, SEAL: _digest(body)}


def read(root: Path) -> Manifest:
    """Read and parse root/edgeds.json."""
    path = root / MANIFEST
    if path.is_symlink() or not path.is_file():
        raise ArtifactError(f"'{root}' has no {MANIFEST}; is it an edgeds artifact?")
    return parse(read_json(path, MANIFEST))


def listed_files(root: Path) -> set[str] | None:
    """The files root/edgeds.json lists, if it is an edgeds manifest at all (of any version,
    valid or not: what `export --overwrite` may replace); None for anything else."""
    try:
        data = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
        return set(data["files"]) if data.get("format") == FORMAT else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def read_json(path: Path, name: str) -> Any:
    """An artifact's JSON file; any fault in it is one line naming the file."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise ArtifactError(
            f"{name} is not valid JSON: {str(exc).splitlines()[0][:200]}"
        ) from None
