"""model_type `deepseek_v3`: DeepSeek-V3 and R1 (MLA with q_lora; sigmoid routing with the
correction bias, group-limited, `noaux_tc`). The multi-token-prediction layers are left out."""

from __future__ import annotations

from ..checkpoint import Checkpoint
from ..errors import ExportError
from ..mla.spec import MlaSpec, mla_spec
from .deepseek_v2 import layer_weights


def decoder_spec(ckpt: Checkpoint) -> MlaSpec:
    method = ckpt.config.get("topk_method", "noaux_tc")
    if method != "noaux_tc":
        raise ExportError(
            f"deepseek_v3 topk_method '{method}' is not supported; supported: noaux_tc"
        )
    norm_topk_prob = bool(ckpt.config.get("norm_topk_prob", True))
    return mla_spec(ckpt, "sigmoid_noaux_tc", norm_topk_prob, layer_weights)
