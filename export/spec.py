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
