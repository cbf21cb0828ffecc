"""Rotary position embedding tables, computed once at export time.

Every rope variant DeepSeek checkpoints use (default, linear, llama3, yarn) reduces to an
`inv_freq` vector and an amplitude; the graphs then only look up cos/sin rows by position, so
the runtime never needs to know which variant the model had.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import ExportError


def rope_parameters(config: dict) -> tuple[float, dict]:
    """(theta, scaling dict) from a config.json of transformers 4.x or 5.x layout."""
    params = config.get("rope_parameters")
    if isinstance(params, dict) and params:
        theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        theta = float(config.get("rope_theta", 10000.0))
        scaling = dict(config.get("rope_scaling") or {})
    kind = scaling.get("rope_type", scaling.get("type", "default")) or "default"
    scaling["rope_type"] = kind
    return theta, scaling


def inv_freq_and_scale(dim: int, theta: float, scaling: dict) -> tuple[np.ndarray, float]:
    """Inverse frequencies (float64, dim/2) and the cos/sin amplitude for one rope variant."""
    inv_freq = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    kind = scaling["rope_type"]
    if kind == "default":
        return inv_freq, 1.0
    if kind == "linear":
        return inv_freq / float(scaling["factor"]), 1.0
    if kind == "llama3":
        return _llama3(inv_freq, scaling), 1.0
    if kind == "yarn":
        return _yarn(dim, theta, scaling)
    raise ExportError(
        f"rope scaling '{kind}' is not supported; supported: default, linear, llama3, yarn"
    )


def cos_sin_tables(
    inv_freq: np.ndarray, scale: float, length: int
) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of shape (length, dim/2), float32, rows indexed by absolute position."""
    freqs = np.outer(np.arange(length, dtype=np.float64), inv_freq)
    return (np.cos(freqs) * scale).astype(np.float32), (np.sin(freqs) * scale).astype(np.float32)


def _llama3(inv_freq: np.ndarray, s: dict) -> np.ndarray:
    factor = float(s["factor"])
    low, high = float(s["low_freq_factor"]), float(s["high_freq_factor"])
    old_len = float(s["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_len / wavelen - low) / (high - low)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    out = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    medium = (wavelen <= old_len / low) & (wavelen >= old_len / high)
    return np.where(medium, blended, out)


def _yarn(dim: int, theta: float, s: dict) -> tuple[np.ndarray, float]:
    factor = float(s["factor"])
    old_len = float(s["original_max_position_embeddings"])
    beta_fast, beta_slow = float(s.get("beta_fast", 32)), float(s.get("beta_slow", 1))

    def mscale(scale: float, m: float) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    def correction_dim(rotations: float) -> float:
        return dim * math.log(old_len / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), dim - 1)
    pos = theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    extrapolation, interpolation = 1.0 / pos, 1.0 / (factor * pos)
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / max(high - low, 1e-3), 0, 1)
    extrapolation_weight = 1 - ramp
    inv_freq = interpolation * (1 - extrapolation_weight) + extrapolation * extrapolation_weight
    if "attention_factor" in s and s["attention_factor"] is not None:
        amplitude = float(s["attention_factor"])
    else:
        m, m_all = float(s.get("mscale", 0) or 0), float(s.get("mscale_all_dim", 0) or 0)
        amplitude = (
            mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor, 1.0)
        )
    return inv_freq, amplitude
