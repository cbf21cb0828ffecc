"""The architecture of a dense decoder (llama, qwen2), as the graph writers need it, read from
a checkpoint's config.json.

A family module (export/families/<model_type>.py) names each weight and passes its config
checks; the writers never look at config.json themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import ClassVar

from ..checkpoint import Checkpoint
from ..errors import ExportError
from ..rope import rope_parameters

SUPPORTED_ACTIVATIONS = ("silu",)


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
    kind: ClassVar[str] = "dense"  # the attention kind: its writers are export/dense/

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


def dense_spec(
    ckpt: Checkpoint, layer_weights: Callable[[Checkpoint, int], LayerWeights]
) -> DecoderSpec:
    """The spec of a Hugging Face llama-style config.json; `layer_weights` names layer i's
    tensors."""
    c = ckpt.config
    act = c.get("hidden_act", "silu")
    if act not in SUPPORTED_ACTIVATIONS:
        raise ExportError(
            f"hidden_act '{act}' is not supported; supported: {SUPPORTED_ACTIVATIONS}"
        )
    if c.get("mlp_bias"):
        raise ExportError("mlp_bias=true is not supported")
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
