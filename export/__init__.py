"""The exporter: a local DeepSeek checkpoint in, an edgeds artifact folder out.

    from edgeds_export import export_checkpoint
    export_checkpoint("DeepSeek-R1-Distill-Qwen-1.5B", "r1-1.5b-int8", weights="int8")

Runs on an x86 host with the `export` extra (torch, transformers, onnx, openvino). The runtime
(`edgeds`) never imports this package.
"""

from __future__ import annotations


from .api import export_checkpoint
from .errors import ExportError

__all__ = ["export_checkpoint", "ExportError"]
