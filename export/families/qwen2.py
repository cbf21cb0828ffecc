"""model_type `qwen2`: DeepSeek-R1-Distill-Qwen-1.5B/7B/14B/32B.

Same decoder as llama, with biases on q/k/v (found in the checkpoint by the llama reader).
Sliding-window attention is refused rather than silently ignored.
"""

from __future__ import annotations

from ..checkpoint import Checkpoint
from ..dense.spec import DecoderSpec
from ..errors import ExportError
from . import llama


def decoder_spec(ckpt: Checkpoint) -> DecoderSpec:
    if ckpt.config.get("use_sliding_window"):
        raise ExportError("qwen2 with use_sliding_window=true is not supported")
    spec = llama.decoder_spec(ckpt)
    if spec.layers and spec.layers[0].q_bias is None:
        raise ExportError("qwen2 checkpoint lacks q/k/v biases; is the model_type right?")
    return spec
