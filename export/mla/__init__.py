"""DeepSeek-V2/V3: Multi-head Latent Attention (a latent KV cache) and routed experts; the same
names as dense/ (see there).
"""

from __future__ import annotations

from .onnx_writer import build_graph as onnx_graph
from .onnx_writer import write_onnx
from .tensors import write_tensors

# float16 was tried: 2.5-3.3x slower decode at 8k context on a 2-core EPYC, and CUDA's
# attention refuses the latent's 576-wide heads (benchmarks/results/cuda-h200.md).
KV_CACHES = ("float32",)


def write_openvino(spec, tensors, folder, weights) -> dict:
    from .openvino_writer import write_openvino  # OpenVINO is imported only when asked for

    return write_openvino(spec, tensors, folder, weights)


__all__ = ["KV_CACHES", "onnx_graph", "write_onnx", "write_openvino", "write_tensors"]
