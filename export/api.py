"""export_checkpoint(): the whole export, top to bottom."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from . import dense, mla
from .artifact_writer import (
    check_free_space,
    copy_tokenizer,
    generation_defaults,
    library_versions,
    staging_folder,
    write_manifest,
)
from .checkpoint import Checkpoint
from .errors import ExportError
from .families import family_for
from .graph import onnx_ops
from .graph.onnx_ops import TARGETS
from .graph.parts import write_parts
from .quantize import SCHEMES
from .tensors import write_tensor_index
from .weight_file import WeightFile

log = logging.getLogger("edgeds.export")
FORMATS = ("onnx", "openvino")
# The writers of each attention kind (a spec's `kind`), which all take the same calls.
KINDS = {"dense": dense, "mla": mla}
KV_CACHES = tuple(dict.fromkeys(cache for kind in KINDS.values() for cache in kind.KV_CACHES))
DEFAULT_CONTEXT = 8192
# ONNX graph parts the CPU runtime loads on parallel threads (export/graph/parts.py): load time
# divides by min(parts, cores) and a decode step pays ~nothing for the hand-overs.
DEFAULT_LOAD_PARTS = 4
# The largest batch a TensorRT export's optimization profiles cover (tensorrt_profiles.py).
DEFAULT_MAX_BATCH = 16


def export_checkpoint(
    src: str | Path,
    out: str | Path,
    formats: tuple[str, ...] = FORMATS,
    weights: str = "int8",
    context: int | str | None = None,
    overwrite: bool = False,
    verify: bool = False,
    kv_cache: str = "float32",
    load_parts: int | None = None,
    small_batch_graph: bool = False,
    target: str = "onnxruntime",
    max_batch: int | None = None,
    embedding: str | None = None,
    activations: str | None = None,
) -> dict:
    """Export `src` to the artifact folder `out`; returns the manifest written.

    `context`: positions the artifact supports (its rotary tables' length): a number up to the
    model's max_position_embeddings, "max" for all of it, None for min(that, DEFAULT_CONTEXT).
    `kv_cache`: the ONNX graph's cache type; "int8" quarters the cache's memory and the bytes a
    decode step's attention reads, "float16" halves them and puts attention where GPU providers
    run it (dense models; the OpenVINO plugin chooses its own).
    `load_parts`: also write the ONNX graph as that many consecutive parts (1: none; default
    DEFAULT_LOAD_PARTS).
    `small_batch_graph`: also write the int8 weights repacked for MatMulNBits, in a second graph
    that the CPU runtime decodes a few sequences with (export/small_batch_graph.py).
    `target`: "tensorrt" writes the ONNX graph from ops TensorRT's ONNX parser takes (10.3 and
    newer; graph/attention.py), and the manifest gets optimization profiles for batches up to
    `max_batch` and the context (tensorrt_profiles.py).
    `embedding`: the table as "int8" per row (the int schemes' default), "float16" or "float32":
    a lookup, so a float table costs memory and disk, not decode speed.
    `activations`: with int8 weights, "int16" has the native decoders (dense and MLA+MoE) round
    matmul inputs to about 15 bits (two int8 planes) instead of 8; with int8-wo or int4, "float"
    writes MatMulNBits at accuracy level 0 (float activations; Quantization.activations)."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"unknown format(s) {unknown}; choose from {', '.join(FORMATS)}")
    if weights not in SCHEMES:
        raise ExportError(f"unknown weights '{weights}'; choose from {', '.join(SCHEMES)}")
    if target not in TARGETS:
        raise ExportError(f"unknown target '{target}'; choose from {', '.join(TARGETS)}")
    max_batch = DEFAULT_MAX_BATCH if max_batch is None else max_batch
    if max_batch < 1:
        raise ExportError(f"--max-batch must be at least 1 (got {max_batch})")
    if target == "tensorrt":
        _check_tensorrt_options(formats, weights, kv_cache, load_parts, small_batch_graph)
        load_parts = 1  # parts are a CPU load-time device; TensorRT builds one engine per graph
    load_parts = DEFAULT_LOAD_PARTS if load_parts is None else load_parts
    if load_parts < 1:
        raise ExportError(f"--load-parts must be at least 1 (got {load_parts})")
    if kv_cache not in KV_CACHES:
        raise ExportError(f"unknown kv cache '{kv_cache}'; choose from {', '.join(KV_CACHES)}")
    if kv_cache != "float32" and "onnx" not in formats:
        raise ExportError(
            f"--kv-cache {kv_cache} is a property of the ONNX graph; add onnx to --format "
            "(the OpenVINO plugin picks its own cache precision)"
        )
    if small_batch_graph and (weights != "int8" or kv_cache == "int8" or "onnx" not in formats):
        raise ExportError(
            "--small-batch-graph repacks int8 weights for ONNX Runtime: it needs --weights int8, "
            "the onnx format and a float32 or float16 KV cache"
        )
    started = time.perf_counter()
    ckpt = Checkpoint(src)
    spec = family_for(ckpt.config).decoder_spec(ckpt)
    scheme = SCHEMES[weights].with_options(embedding, activations)
    context = _context(context, spec.max_position_embeddings)
    kind = KINDS[spec.kind]
    if kv_cache not in kind.KV_CACHES:
        raise ExportError(f"--kv-cache {kv_cache} is not available for {spec.model_type} "
                          f"({spec.kind.upper()} attention): it takes {', '.join(kind.KV_CACHES)}")
    out = Path(out).expanduser()

    with staging_folder(out, ckpt.root, overwrite) as tmp:
        check_free_space(tmp, _estimated_bytes(ckpt, scheme, len(formats) + small_batch_graph))
        log.info("reading %s (%s, %d layers), quantizing to %s", ckpt.root, spec.model_type,
                 spec.num_layers, scheme.name)
        weight_file = WeightFile(tmp / "model.onnx.data")
        tensors = kind.write_tensors(ckpt, spec, scheme, weight_file, context,
                                     native_layout=target != "tensorrt")
        weight_file.close()
        graphs = {}
        if "onnx" in formats:
            level = 0 if scheme.activations == "float" else onnx_ops.ACCURACY_LEVEL
            with onnx_ops.accuracy_level(level):
                graphs["onnx"] = kind.write_onnx(spec, tensors, tmp, weight_file.path.name,
                                                 kv_cache, ckpt.root / "tokenizer.json",
                                                 target=target)
            if target == "tensorrt":
                from .tensorrt_profiles import tensorrt_entry

                graphs["onnx"]["tensorrt"] = tensorrt_entry(
                    graphs["onnx"]["inputs"], spec, context, max_batch
                )
            graphs["onnx"]["tensors"] = write_tensor_index(tensors, tmp)
            if small_batch_graph:  # beside the main graph, whose weight file it reads
                from .small_batch_graph import write_small_batch_graph

                graphs["onnx"]["small_batch"] = write_small_batch_graph(
                    kind.onnx_graph, spec, tensors, tmp, weight_file, kv_cache
                )
            for entry in (graphs["onnx"], graphs["onnx"].get("small_batch")):
                if entry and (
                    parts := write_parts(tmp, entry["file"], load_parts, spec.hidden_size)
                ):
                    entry["parts"] = parts
                    entry["parts_note"] = (
                        "the graph cut at layer boundaries, to be run in this order; each "
                        "part's outputs that the next part reads are the residual stream, "
                        "[batch, sequence, hidden_size] float32"
                    )
        if "openvino" in formats:
            graphs["openvino"] = kind.write_openvino(spec, tensors, tmp, weight_file)
        del tensors
        weight_file = None  # release the memory map before the file may be removed
        if "onnx" not in formats:
            (tmp / "model.onnx.data").unlink()
        manifest = {
            "model": {**spec.manifest_fields(), "context_length": context},
            "quantization": scheme.manifest(),
            "graphs": graphs,
            "tokenizer": copy_tokenizer(ckpt, tmp),
            "generation": generation_defaults(ckpt),
            "source": {"path": str(ckpt.root.resolve()), "files": ckpt.file_hashes(),
                       **({"fp8": ckpt.fp8.manifest()} if ckpt.fp8 else {})},
            "exporter": library_versions(),
        }
        written = write_manifest(tmp, manifest)
        if verify:
            from .verify import verify_artifact

            report = verify_artifact(ckpt.root, tmp, weights, kv_cache)
            manifest["verification"] = report
            written = write_manifest(tmp, manifest)
    log.info("exported %s in %.1f s", out, time.perf_counter() - started)
    return written


def _check_tensorrt_options(formats, weights: str, kv_cache: str, load_parts: int | None,
                            small_batch_graph: bool) -> None:
    if "onnx" not in formats:
        raise ExportError("--target tensorrt shapes the ONNX graph; add onnx to --format")
    if weights not in ("int8", "fp16", "fp32"):
        raise ExportError(
            f"--target tensorrt takes --weights int8 (per channel, dequantized into float "
            f"matmuls), fp16 or fp32, not {weights}: MatMulNBits is an ONNX Runtime op"
        )
    if kv_cache != "float32":
        raise ExportError(f"--target tensorrt keeps a float32 cache (got --kv-cache {kv_cache}); "
                          "the TensorRT provider's trt_fp16_enable runs attention in float16")
    if small_batch_graph or (load_parts or 1) > 1:
        raise ExportError("--small-batch-graph and --load-parts are ONNX Runtime CPU options; "
                          "drop them for --target tensorrt")


def _estimated_bytes(ckpt: Checkpoint, scheme, n_formats: int) -> int:
    """Counted in parameters, not source bytes: an FP8 source has 1 byte a parameter, bf16 2."""
    bytes_per_param = {8: 1, 4: 0.5}.get(scheme.bits, 4)  # fp16 is sized as fp32, generously
    return int(ckpt.parameter_count() * bytes_per_param * n_formats * 1.05)


def _context(requested: int | str | None, model_limit: int) -> int:
    """The context to export for: "max" is the model's whole `max_position_embeddings` (the
    rotary tables carry its rope scaling to every position); none given, DEFAULT_CONTEXT."""
    if requested in (None, 0, ""):
        return min(model_limit, DEFAULT_CONTEXT)
    if requested == "max":
        return model_limit
    try:
        tokens = int(requested)
    except (TypeError, ValueError):
        raise ExportError(f"--context {requested!r}: give a number of tokens or 'max'") from None
    if not 2 <= tokens <= model_limit:
        raise ExportError(f"--context {tokens}: the model's max_position_embeddings is "
                          f"{model_limit} "
                          f"(give 2 to {model_limit}, or 'max')")
    return tokens
