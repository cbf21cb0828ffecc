"""model_type `llama`: DeepSeek-R1-Distill-Llama-8B/70B, deepseek-coder, deepseek-llm."""

from __future__ import annotations

from ..checkpoint import Checkpoint
from ..rope import rope_parameters
from ..spec import DecoderSpec, LayerWeights

SUPPORTED_ACTIVATIONS = ("silu",)


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
    from . import check_unsupported

    c = ckpt.config
    check_unsupported(c, activations=SUPPORTED_ACTIVATIONS)
    heads = int(c["num_attention_heads"])
    head_dim = int(c.get("head_dim") or c["hidden_size"] // heads)
    theta, scaling = rope_parameters(c)
    tied = bool(c.get("tie_word_embeddings", False)) or not ckpt.has("lm_head.weight")
    return DecoderSpec(
        model_type=c["model_type"],
        hidden_size=int(c["hidden_size"]),
        intermediate_size=int(c["intermediate_size"]),
        num_layers=int(c["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(c.get("num_key_value_heads") or heads),
        head_dim=head_dim,
        vocab_size=int(c["vocab_size"]),
        rms_norm_eps=float(c.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=int(c.get("max_position_embeddings", 4096)),
        tie_word_embeddings=tied,
        embed="model.embed_tokens.weight",
        final_norm="model.norm.weight",
        lm_head="model.embed_tokens.weight" if tied else "lm_head.weight",
        layers=tuple(layer_weights(ckpt, i) for i in range(int(c["num_hidden_layers"]))),
    )
