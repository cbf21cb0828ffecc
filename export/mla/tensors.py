"""Reads a DeepSeek-V2/V3 checkpoint (MLA + MoE) once, quantized, into the weight file.

MLA is prepared for the absorbed form: kv_b_proj is split per head into W_UK (folded into the
query) and W_UV (applied to the attention output), so decode attends over the cached latent
directly. Interleaved rope (DeepSeek's pairs) is turned into the half-split layout by permuting
the rope rows of the q and kv_a projections; q and k get the same permutation, so their dot
products are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..checkpoint import Checkpoint
from ..quantize import Scheme, quantize_per_column
from ..rope import cos_sin_tables, inv_freq_and_scale
from ..tensors import GatedMlp, Linear, ModelTensors, Stored, TensorWriter
from ..weight_file import WeightFile
from .spec import MlaSpec


@dataclass(frozen=True)
class PerHead:
    """A per-head matrix (H, rows, cols) for a batched MatMul; int8 with (H, 1, cols) scales, or
    float."""

    weight: Stored
    scales: Stored | None = None


@dataclass(frozen=True)
class Moe:
    router: Stored  # (hidden, E) float32
    router_bias: Stored | None
    experts: tuple[GatedMlp, ...]
    shared: GatedMlp | None


@dataclass(frozen=True)
class MlaLayer:
    input_norm: Stored
    q_a: Linear | None
    q_a_norm: Stored | None
    q: Linear
    kv_a: Linear
    kv_a_norm: Stored
    w_uk: PerHead  # (H, nope, L)
    w_uv: PerHead  # (H, L, v)
    o: Linear
    post_norm: Stored
    mlp: GatedMlp | None  # dense layers
    moe: Moe | None


MlaTensors = ModelTensors[MlaLayer]


def _deinterleave(rows: int) -> np.ndarray:
    return np.concatenate([np.arange(0, rows, 2), np.arange(1, rows, 2)])


def _per_head(w: TensorWriter, matrices: np.ndarray) -> PerHead:
    """(H, rows, cols) per-head matrices: int8 per column of each head with any int scheme
    (a batched MatMul takes no packed format), else the scheme's float type."""
    if not w.scheme.bits:
        return PerHead(w.store(matrices.astype(w.scheme.float_dtype)))
    q, scales = quantize_per_column(matrices)
    return PerHead(w.store(q), w.store(scales))


def write_tensors(
    ckpt: Checkpoint, spec: MlaSpec, scheme: Scheme, out: WeightFile, context: int,
    native_layout: bool = True,
) -> MlaTensors:
    """native_layout: int8 weights in the native GEMM's layout, which the native MLA decoder
    maps (off for TensorRT, whose parser takes no int8 Transpose to undo it)."""
    w = TensorWriter(ckpt, scheme, out, blocked=native_layout)
    heads, dn, dr, dv, lat = (spec.num_heads, spec.qk_nope_head_dim, spec.qk_rope_head_dim,
                              spec.v_head_dim, spec.kv_lora_rank)
    interleaved = ckpt.config.get("rope_interleave", True)
    rope_perm = _deinterleave(dr) if interleaved else np.arange(dr)
    q_rows = np.concatenate(
        [h * (dn + dr) + np.concatenate([np.arange(dn), dn + rope_perm]) for h in range(heads)]
    )
    kv_rows = np.concatenate([np.arange(lat), lat + rope_perm])
    layers = []
    for lw in spec.layers:
        kv_b = w.read(lw.kv_b).reshape(heads, dn + dv, lat)
        moe = None
        if lw.experts:
            moe = Moe(
                router=w.store(np.ascontiguousarray(w.read(lw.router).T)),
                router_bias=w.store(w.read(lw.router_bias)) if lw.router_bias else None,
                experts=tuple(w.mlp(*e) for e in lw.experts),
                shared=w.mlp(*lw.shared) if lw.shared else None,
            )
        layers.append(MlaLayer(
            input_norm=w.store(w.read(lw.input_norm)),
            q_a=w.linear([lw.q_a]) if lw.q_a else None,
            q_a_norm=w.store(w.read(lw.q_a_norm)) if lw.q_a_norm else None,
            q=w.linear_from(w.read(lw.q)[q_rows]),
            kv_a=w.linear_from(w.read(lw.kv_a)[kv_rows]),
            kv_a_norm=w.store(w.read(lw.kv_a_norm)),
            w_uk=_per_head(w, np.ascontiguousarray(kv_b[:, :dn, :])),
            w_uv=_per_head(w, np.ascontiguousarray(kv_b[:, dn:, :].transpose(0, 2, 1))),
            o=w.linear([lw.o]),
            post_norm=w.store(w.read(lw.post_norm)),
            mlp=w.mlp(lw.gate, lw.up, lw.down) if lw.gate else None,
            moe=moe,
        ))
    inv_freq, amplitude = inv_freq_and_scale(dr, spec.rope_theta, spec.rope_scaling)
    cos, sin = cos_sin_tables(inv_freq, amplitude, context)
    return MlaTensors(
        embed=w.embedding(spec.embed),
        layers=tuple(layers),
        final_norm=w.store(w.read(spec.final_norm)),
        lm_head=w.linear([spec.lm_head]),
        cos=w.store(cos),
        sin=w.store(sin),
    )
