"""model_type `llama`: DeepSeek-R1-Distill-Llama-8B/70B, deepseek-coder, deepseek-llm."""

from __future__ import annotations

from ..checkpoint import Checkpoint
from ..dense.spec import DecoderSpec, LayerWeights, dense_spec


def layer_weights(ckpt: Checkpoint, i: int) -> LayerWeights:
    p = f"model.layers.{i}"

    def bias(proj: str) -> str | None:
        name = f"{p}.self_attn.{proj}.bias"
        return name if ckpt.has(name) else None

    return LayerWeights(
        input_norm=f"{p}.input_layernorm.weight",
        q=f"{p}.self_attn.q_proj.weight",
        k=f"{p}.self_attn.k_proj.weight",
        v=f"{p}.self_attn.v_proj.weight",
        o=f"{p}.self_attn.o_proj.weight",
        post_norm=f"{p}.post_attention_layernorm.weight",
        gate=f"{p}.mlp.gate_proj.weight",
        up=f"{p}.mlp.up_proj.weight",
        down=f"{p}.mlp.down_proj.weight",
        q_bias=bias("q_proj"),
        k_bias=bias("k_proj"),
        v_bias=bias("v_proj"),
        o_bias=bias("o_proj"),
    )


def decoder_spec(ckpt: Checkpoint) -> DecoderSpec:
    return dense_spec(ckpt, layer_weights)
