"""The architecture of a DeepSeek-V2/V3 decoder (MLA + MoE), as the graph writers need it, read
from a checkpoint's config.json (the family modules name the weights and pick the routing).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import ClassVar

from edgeds.manifest import KvLayout

from ..checkpoint import Checkpoint
from ..errors import ExportError
from ..rope import rope_parameters


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

    kind: ClassVar[str] = "mla"  # the attention kind: its writers are export/mla/

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

def latent_cache_sizes(spec: MlaSpec) -> dict:
    """The latent cache's sizes for the manifest's readers, from the runtime's own KvLayout (one
    buffer of the latent per layer, float32): written down, never worked out a second time."""
    layout = KvLayout(spec.num_layers, 1, 1, spec.latent_dim, "float32")
    return {"values_per_token_per_layer": layout.values_per_token // layout.layers,
            "bytes_per_token": layout.bytes_per_token}


# layer_weights(ckpt, layer, moe, n_routed_experts, q_lora, shared_experts): layer i's tensor names
LayerNames = Callable[[Checkpoint, int, bool, int, bool, bool], MlaLayerWeights]


def softmax_scale(c: dict, scaling: dict) -> float:
    scale = (c["qk_nope_head_dim"] + c["qk_rope_head_dim"]) ** -0.5
    m_all = float(scaling.get("mscale_all_dim") or 0)
    if scaling["rope_type"] != "default" and m_all and float(scaling["factor"]) > 1:
        mscale = 0.1 * m_all * math.log(float(scaling["factor"])) + 1.0
        scale *= mscale * mscale
    return scale


def mla_spec(
    ckpt: Checkpoint, routing: str, norm_topk_prob: bool, layer_weights: LayerNames
) -> MlaSpec:
    """The spec of a DeepSeek-V2/V3 config.json; `layer_weights` names each layer's tensors."""
    c = ckpt.config
    if c.get("hidden_act", "silu") != "silu":
        raise ExportError(f"hidden_act '{c.get('hidden_act')}' is not supported; supported: silu")
    theta, scaling = rope_parameters(c)
    layers_n = int(c["num_hidden_layers"])
    first_dense = int(c.get("first_k_dense_replace", 0))
    freq = int(c.get("moe_layer_freq", 1))
    n_experts = int(c.get("n_routed_experts") or 0)
    q_lora = c.get("q_lora_rank") is not None
    tied = bool(c.get("tie_word_embeddings", False)) or not ckpt.has("lm_head.weight")
    shared = int(c.get("n_shared_experts") or 0)
    layers = tuple(
        layer_weights(
            ckpt,
            i,
            bool(n_experts) and i >= first_dense and i % freq == 0,
            n_experts,
            q_lora,
            bool(shared),
        )
        for i in range(layers_n)
    )
    return MlaSpec(
        model_type=c["model_type"],
        hidden_size=int(c["hidden_size"]),
        num_layers=layers_n,
        num_heads=int(c["num_attention_heads"]),
        vocab_size=int(c["vocab_size"]),
        q_lora_rank=c.get("q_lora_rank"),
        kv_lora_rank=int(c["kv_lora_rank"]),
        qk_nope_head_dim=int(c["qk_nope_head_dim"]),
        qk_rope_head_dim=int(c["qk_rope_head_dim"]),
        v_head_dim=int(c["v_head_dim"]),
        softmax_scale=softmax_scale(c, scaling),
        rms_norm_eps=float(c.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=int(c.get("max_position_embeddings", 4096)),
        intermediate_size=int(c["intermediate_size"]),
        moe_intermediate_size=int(c.get("moe_intermediate_size") or 0),
        n_routed_experts=n_experts,
        n_shared_experts=shared,
        num_experts_per_tok=int(c.get("num_experts_per_tok") or 0),
        routing=routing,
        n_group=int(c.get("n_group") or 1),
        topk_group=int(c.get("topk_group") or 1),
        norm_topk_prob=norm_topk_prob,
        routed_scaling_factor=float(c.get("routed_scaling_factor", 1.0)),
        mtp_layers_left_out=int(c.get("num_nextn_predict_layers") or 0),
        tie_word_embeddings=tied,
        embed="model.embed_tokens.weight",
        final_norm="model.norm.weight",
        lm_head="model.embed_tokens.weight" if tied else "lm_head.weight",
        layers=layers,
    )
