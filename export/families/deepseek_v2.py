"""model_type `deepseek_v2`: DeepSeek-V2 and V2-Lite (MLA, softmax routing)."""

from __future__ import annotations

import math

from ..checkpoint import Checkpoint
from ..errors import ExportError
from ..rope import rope_parameters
from ..spec import MlaLayerWeights, MlaSpec

ROUTING = {"greedy": "softmax_greedy", "group_limited_greedy": "softmax_group_limited"}


def layer_weights(ckpt: Checkpoint, i: int, moe: bool, n_experts: int, q_lora: bool, shared: bool) -> MlaLayerWeights:
    p = f"model.layers.{i}"
    a = f"{p}.self_attn"
    names = dict(
        input_norm=f"{p}.input_layernorm.weight", post_norm=f"{p}.post_attention_layernorm.weight",
        q=f"{a}.q_b_proj.weight" if q_lora else f"{a}.q_proj.weight",
        q_a=f"{a}.q_a_proj.weight" if q_lora else None, q_a_norm=f"{a}.q_a_layernorm.weight" if q_lora else None,
        kv_a=f"{a}.kv_a_proj_with_mqa.weight", kv_a_norm=f"{a}.kv_a_layernorm.weight",
        kv_b=f"{a}.kv_b_proj.weight", o=f"{a}.o_proj.weight",
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


def softmax_scale(c: dict, scaling: dict) -> float:
    scale = (c["qk_nope_head_dim"] + c["qk_rope_head_dim"]) ** -0.5
    m_all = float(scaling.get("mscale_all_dim") or 0)
    if scaling["rope_type"] != "default" and m_all and float(scaling["factor"]) > 1:
        mscale = 0.1 * m_all * math.log(float(scaling["factor"])) + 1.0
        scale *= mscale * mscale
    return scale


def mla_spec(ckpt: Checkpoint, routing: str, norm_topk_prob: bool) -> MlaSpec:
    c = ckpt.config
    if c.get("hidden_act", "silu") != "silu":
        raise ExportError(f"hidden_act '{c.get('hidden_act')}' is not supported; supported: silu")
    if any(n.endswith("weight_scale_inv") for n in ckpt.names()[:2000]):
        raise ExportError("FP8 checkpoints (weight_scale_inv) are not supported yet; convert to bf16 first")
    theta, scaling = rope_parameters(c)
    layers_n = int(c["num_hidden_layers"])
    first_dense = int(c.get("first_k_dense_replace", 0))
    freq = int(c.get("moe_layer_freq", 1))
    n_experts = int(c.get("n_routed_experts") or 0)
    q_lora = c.get("q_lora_rank") is not None
    tied = bool(c.get("tie_word_embeddings", False)) or not ckpt.has("lm_head.weight")
    shared = int(c.get("n_shared_experts") or 0)
    layers = tuple(
        layer_weights(ckpt, i, bool(n_experts) and i >= first_dense and i % freq == 0, n_experts, q_lora, bool(shared))
        for i in range(layers_n)
    )
    return MlaSpec(
        model_type=c["model_type"], hidden_size=int(c["hidden_size"]), num_layers=layers_n,
        num_heads=int(c["num_attention_heads"]), vocab_size=int(c["vocab_size"]),
        q_lora_rank=c.get("q_lora_rank"), kv_lora_rank=int(c["kv_lora_rank"]),
        qk_nope_head_dim=int(c["qk_nope_head_dim"]), qk_rope_head_dim=int(c["qk_rope_head_dim"]),
        v_head_dim=int(c["v_head_dim"]), softmax_scale=softmax_scale(c, scaling),
        rms_norm_eps=float(c.get("rms_norm_eps", 1e-6)), rope_theta=theta, rope_scaling=scaling,
        max_position_embeddings=int(c.get("max_position_embeddings", 4096)),
        intermediate_size=int(c["intermediate_size"]), moe_intermediate_size=int(c.get("moe_intermediate_size") or 0),
        n_routed_experts=n_experts, n_shared_experts=shared,
        num_experts_per_tok=int(c.get("num_experts_per_tok") or 0), routing=routing,
        n_group=int(c.get("n_group") or 1), topk_group=int(c.get("topk_group") or 1),
        norm_topk_prob=norm_topk_prob, routed_scaling_factor=float(c.get("routed_scaling_factor", 1.0)),
        mtp_layers_left_out=int(c.get("num_nextn_predict_layers") or 0), tie_word_embeddings=tied,
        embed="model.embed_tokens.weight", final_norm="model.norm.weight",
        lm_head="model.embed_tokens.weight" if tied else "lm_head.weight", layers=layers,
    )


def decoder_spec(ckpt: Checkpoint) -> MlaSpec:
    method = ckpt.config.get("topk_method", "greedy")
    if method not in ROUTING:
        raise ExportError(f"deepseek_v2 topk_method '{method}' is not supported; supported: {', '.join(ROUTING)}")
    # transformers' DeepSeek-V2 router never renormalizes the top-k weights.
    return mla_spec(ckpt, ROUTING[method], norm_topk_prob=False)
