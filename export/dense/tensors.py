"""Reads a dense decoder's checkpoint (llama, qwen2) once, quantized, into the weight file.

q|k|v become one matmul (one kernel launch instead of three); gate and up stay two, so that no
graph has to split a fused output (a copy of the MLP's widest activation).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..checkpoint import Checkpoint
from ..quantize import Scheme
from ..rope import cos_sin_tables, inv_freq_and_scale
from ..tensors import GatedMlp, Linear, ModelTensors, Stored, TensorWriter
from ..weight_file import WeightFile
from .spec import DecoderSpec


@dataclass(frozen=True)
class Layer:
    input_norm: Stored
    qkv: Linear
    o: Linear
    post_norm: Stored
    mlp: GatedMlp


def write_tensors(
    ckpt: Checkpoint, spec: DecoderSpec, scheme: Scheme, out: WeightFile, context: int,
    native_layout: bool = False,
) -> ModelTensors[Layer]:
    """native_layout: not taken yet (the dense native decoder packs row-major weights at
    load); the parameter is the MLA writer's."""
    w = TensorWriter(ckpt, scheme, out)
    layers = []
    for lw in spec.layers:
        layers.append(
            Layer(
                input_norm=w.store(w.read(lw.input_norm)),
                qkv=w.linear([lw.q, lw.k, lw.v], [lw.q_bias, lw.k_bias, lw.v_bias]),
                o=w.linear([lw.o], [lw.o_bias]),
                post_norm=w.store(w.read(lw.post_norm)),
                mlp=w.mlp(lw.gate, lw.up, lw.down),
            )
        )
    inv_freq, amplitude = inv_freq_and_scale(spec.head_dim, spec.rope_theta, spec.rope_scaling)
    cos, sin = cos_sin_tables(inv_freq, amplitude, context)
    return ModelTensors(
        embed=w.embedding(spec.embed),
        layers=tuple(layers),
        final_norm=w.store(w.read(spec.final_norm)),
        lm_head=w.linear([spec.lm_head]),
        cos=w.store(cos),
        sin=w.store(sin),
    )
