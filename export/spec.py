"""The architecture of a dense decoder, as the graph writers need it.

A family module (export/families/<model_type>.py) turns a checkpoint's config.json into a
`DecoderSpec` and names each weight; the writers never look at config.json themselves.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class LayerWeights:
    """Checkpoint tensor names of one decoder layer; a bias is None where the model has none."""

    input_norm: str
    q: str
    k: str
    v: str
    o: str
    post_norm: str
    gate: str
    up: str
    down: str
    q_bias: str | None = None
    k_bias: str | None = None
    v_bias: str | None = None
    o_bias: str | None = None


@dataclass(frozen=True)
class DecoderSpec:
    model_type: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict
    max_position_embeddings: int
    tie_word_embeddings: bool
    embed: str
    final_norm: str
    lm_head: str
    layers: tuple[LayerWeights, ...] = field(repr=False)

    def manifest_fields(self) -> dict:
        """Every architecture field the runtime may need, without the weight names."""
        fields = asdict(self)
        for key in ("layers", "embed", "final_norm", "lm_head"):
            fields.pop(key)
        return fields


@dataclass(frozen=True)
class MlaLayerWeights:
    """Checkpoint names of one DeepSeek-V2/V3 layer. `q_a`/`q_a_norm` are None without q_lora;
    `experts` is empty for a dense layer (then gate/up/down are its MLP)."""

    input_norm: str
    q: str  # q_b_proj with q_lora, else q_proj
    kv_a: str
    kv_a_norm: str
    kv_b: str
    o: str
    post_norm: str
    q_a: str | None = None
    q_a_norm: str | None = None
    gate: str | None = None
    up: str | None = None
    down: str | None = None
    router: str | None = None
    router_bias: str | None = None
    experts: tuple[tuple[str, str, str], ...] = ()  # (gate, up, down) per routed expert
    shared: tuple[str, str, str] | None = None


@dataclass(frozen=True)
class MlaSpec:
    """DeepSeek-V2/V3: Multi-head Latent Attention and routed experts."""

    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    vocab_size: int
    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    softmax_scale: float
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict
    max_position_embeddings: int
    intermediate_size: int
    moe_intermediate_size: int
    n_routed_experts: int
    n_shared_experts: int
    num_experts_per_tok: int
    routing: str  # softmax_greedy | softmax_group_limited | sigmoid_noaux_tc
    n_group: int
    topk_group: int
    norm_topk_prob: bool
    routed_scaling_factor: float
    mtp_layers_left_out: int
    tie_word_embeddings: bool
    embed: str
    final_norm: str
    lm_head: str
    layers: tuple[MlaLayerWeights, ...] = field(repr=False)

    @property
    def latent_dim(self) -> int:
        return self.kv_lora_rank + self.qk_rope_head_dim

    def manifest_fields(self) -> dict:
        fields = asdict(self)
        for key in ("layers", "embed", "final_norm", "lm_head"):
            fields.pop(key)
        fields["moe_layers"] = [i for i, lw in enumerate(self.layers) if lw.experts]
        return fields
