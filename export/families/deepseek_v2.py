"""model_type `deepseek_v2`: DeepSeek-V2 and V2-Lite (MLA, softmax routing)."""

from __future__ import annotations

from ..checkpoint import Checkpoint
from ..errors import ExportError
from ..mla.spec import MlaLayerWeights, MlaSpec, mla_spec

ROUTING = {"greedy": "softmax_greedy", "group_limited_greedy": "softmax_group_limited"}


def layer_weights(
    ckpt: Checkpoint, i: int, moe: bool, n_experts: int, q_lora: bool, shared: bool
) -> MlaLayerWeights:
    p = f"model.layers.{i}"
    a = f"{p}.self_attn"
    names = dict(
        input_norm=f"{p}.input_layernorm.weight",
        post_norm=f"{p}.post_attention_layernorm.weight",
        q=f"{a}.q_b_proj.weight" if q_lora else f"{a}.q_proj.weight",
        q_a=f"{a}.q_a_proj.weight" if q_lora else None,
        q_a_norm=f"{a}.q_a_layernorm.weight" if q_lora else None,
        kv_a=f"{a}.kv_a_proj_with_mqa.weight",
        kv_a_norm=f"{a}.kv_a_layernorm.weight",
        kv_b=f"{a}.kv_b_proj.weight",
        o=f"{a}.o_proj.weight",
    )
    m = f"{p}.mlp"
    if not moe:
        return MlaLayerWeights(**names, gate=f"{m}.gate_proj.weight", up=f"{m}.up_proj.weight",
                               down=f"{m}.down_proj.weight")
    bias = f"{m}.gate.e_score_correction_bias"
    return MlaLayerWeights(
        **names,
        router=f"{m}.gate.weight",
        router_bias=bias if ckpt.has(bias) else None,
        experts=tuple((f"{m}.experts.{j}.gate_proj.weight", f"{m}.experts.{j}.up_proj.weight",
                       f"{m}.experts.{j}.down_proj.weight") for j in range(n_experts)),
        shared=(f"{m}.shared_experts.gate_proj.weight", f"{m}.shared_experts.up_proj.weight",
                f"{m}.shared_experts.down_proj.weight") if shared else None,
    )


def decoder_spec(ckpt: Checkpoint) -> MlaSpec:
    method = ckpt.config.get("topk_method", "greedy")
    if method not in ROUTING:
        raise ExportError(
            f"deepseek_v2 topk_method '{method}' is not supported; supported: {', '.join(ROUTING)}"
        )
    # transformers' DeepSeek-V2 router never renormalizes the top-k weights.
    return mla_spec(ckpt, ROUTING[method], norm_topk_prob=False, layer_weights=layer_weights)
