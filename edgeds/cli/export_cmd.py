from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from ..errors import UsageError
from ..manifest import read as read_manifest

NAME = "export"


def command(
    src: Annotated[
        str, typer.Argument(help="Local checkpoint folder (Hugging Face layout, safetensors).")
    ],
    output: Annotated[str, typer.Option("--output", "-o", help="Artifact folder to write.")],
    format: Annotated[
        str,
        typer.Option(
            "--format",
            help="Comma-separated: onnx, openvino (default: both; onnx with --target tensorrt).",
            show_default=False,
        ),
    ] = "",
    weights: Annotated[
        str,
        typer.Option(
            help="int8 (int8 weights and activations) | int8-wo (weight-only, closest to float) | "
                 "int4 | fp16 | fp32."
        ),
    ] = "int8",
    context: Annotated[
        str,
        typer.Option(
            help="Longest sequence the artifact supports: tokens up to the model's "
            "max_position_embeddings, or 'max' for all of it (default: min(model, 8192)).",
            show_default=False,
        ),
    ] = "",
    overwrite: Annotated[
        bool,
        typer.Option(
            help="Replace an existing edgeds artifact (only that: never the checkpoint, a file or "
                 "a folder holding anything else); the old one stays until the new one is complete."
        ),
    ] = False,
    verify: Annotated[
        bool,
        typer.Option(
            help="Check logits and greedy tokens against transformers; fail the export if they "
                 "differ."
        ),
    ] = False,
    kv_cache: Annotated[
        str,
        typer.Option(
            help="float32 | float16 | int8 (ONNX, dense models). int8: a quarter of the cache "
                 "memory, faster attention at large batches; float16: half, and attention on GPU "
                 "providers (Jetson)."
        ),
    ] = "float32",
    load_parts: Annotated[
        int | None,
        typer.Option(
            help="Also write the ONNX graph in this many parts, which the CPU runtime loads on "
                 "parallel threads (1: whole graph only; default 4)."
        ),
    ] = None,
    small_batch_graph: Annotated[
        bool,
        typer.Option(
            help="Also write the int8 weights repacked for ONNX Runtime's one-row kernel, in a "
                 "second graph the CPU runtime decodes a few sequences with: batch-1 decode "
                 "1.2-1.6x faster, for about 1.8x the disk and, where a profile uses it, the "
                 "memory (int8 weights)."
        ),
    ] = False,
    target: Annotated[
        str,
        typer.Option(
            help="onnxruntime | tensorrt. tensorrt: the ONNX graph from ops TensorRT 10.3+ parses "
                 "(Jetson), with optimization profiles in the manifest; check it with edgeds "
                 "doctor ARTIFACT --tensorrt."
        ),
    ] = "onnxruntime",
    max_batch: Annotated[
        int | None,
        typer.Option(
            help="Largest batch the TensorRT profiles cover (--target tensorrt; default 16)."
        ),
    ] = None,
    embedding: Annotated[
        str,
        typer.Option(
            help="int8 (per row; the default of int weights) | float16 | float32: the embedding "
                 "table, a lookup, so float costs memory, not speed.",
            show_default=False,
        ),
    ] = "",
    activations: Annotated[
        str,
        typer.Option(
            help="int8 | int16 (--weights int8): what the native decoders round matmul inputs "
                 "to; int16 (two int8 planes) meets int8's quality targets on both families, at "
                 "twice the integer work (ONNX Runtime and OpenVINO graphs keep their own). float "
                 "(--weights int8-wo or int4): ONNX Runtime's MatMulNBits keeps activations float "
                 "(accuracy level 0).",
            show_default=False,
        ),
    ] = "",
):
    """Export a DeepSeek checkpoint to an edgeds artifact (ONNX and/or OpenVINO IR).

    Examples:
      edgeds export ./DeepSeek-R1-Distill-Qwen-1.5B -o r1-1.5b-int8
      edgeds export ./deepseek-coder-1.3b-instruct -o coder-int4 --weights int4 --verify
      edgeds export ./DeepSeek-R1-Distill-Qwen-1.5B -o r1-1.5b-trt --target tensorrt --context 4096
    """
    try:
        from edgeds_export import export_checkpoint
    except ImportError as exc:
        # edgeds is installed from its source folder (it is not on PyPI), and so is the extra
        raise UsageError(f"the exporter's dependencies are missing ({exc}); from the edgeds "
                         "source folder: pip install '.[export]'") from exc
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    format = format or ("onnx" if target == "tensorrt" else "onnx,openvino")
    formats = tuple(f.strip() for f in format.split(",") if f.strip())
    export_checkpoint(
        src,
        output,
        formats,
        weights,
        context or None,
        overwrite,
        verify,
        kv_cache,
        load_parts,
        small_batch_graph,
        target,
        max_batch,
        embedding or None,
        activations or None,
    )
    # What was written, as the runtime reads it (edgeds.json parsed and checked)
    written = read_manifest(Path(output))
    size = sum(f.size for f in written.files.values())
    typer.echo(f"wrote {output}: {', '.join(written.formats)}, {weights}, {size / 2**20:.1f} MiB")
    if written.verification is not None:
        typer.echo(f"verified: {written.verification['summary']}")
