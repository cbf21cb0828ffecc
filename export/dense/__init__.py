"""Dense decoders (llama, qwen2): a per-head K/V cache and GroupQueryAttention.

An attention kind's package gives export/api.py the same few names (mla/ too): KV_CACHES, the
ONNX cache types it can write; write_tensors; onnx_graph and write_onnx; write_openvino.
"""

from __future__ import annotations

from .onnx_writer import build_graph as onnx_graph
from .onnx_writer import write_onnx
from .tensors import write_tensors

KV_CACHES = ("float32", "float16", "int8")


def write_openvino(spec, tensors, folder, weights) -> dict:
    from .openvino_writer import write_openvino  # OpenVINO is imported only when asked for

    return write_openvino(spec, tensors, folder, weights)


__all__ = ["KV_CACHES", "onnx_graph", "write_onnx", "write_openvino", "write_tensors"]
