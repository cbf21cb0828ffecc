"""TensorRT optimization profiles of a `--target tensorrt` export, for the manifest.

TensorRT builds an engine for ranges of input shapes (min / opt / max per dynamic axis); a
shape outside every profile makes the provider rebuild at run time (minutes on a Jetson). The
graph has two kinds of call, so two profiles: prefill (a batch of prompts of up to the context)
and decode (one token per sequence). The past length is the cache buffer's capacity axis,
which the runtime sizes up to the artifact's context.

The runtime turns these into the provider's `trt_profile_*_shapes` options
(edgeds/tensorrt.py); the exporter only states the ranges.
"""

from __future__ import annotations

# Prompt rows TensorRT tunes prefill kernels for: a typical chat prompt, not the longest one.
OPT_PREFILL_SEQUENCE = 256


def _ranges(context: int, max_batch: int) -> dict[str, dict[str, dict[str, int]]]:
    """Per profile, per symbolic axis: min / opt / max."""
    past = {"min": 1, "opt": min(context, 1024), "max": context}
    return {
        "prefill": {
            "batch": {"min": 1, "opt": 1, "max": max_batch},
            "sequence": {"min": 1, "opt": min(context, OPT_PREFILL_SEQUENCE), "max": context},
            "positions": {"min": 1, "opt": 1, "max": context},
            "past": past,
        },
        "decode": {
            "batch": {"min": 1, "opt": max_batch, "max": max_batch},
            "sequence": {"min": 1, "opt": 1, "max": 1},
            "positions": {"min": 1, "opt": 1, "max": 1},
            "past": past,
        },
    }


def _input_axes(name: str, spec) -> list:
    """An input's shape: ints are fixed, strings name an axis of `_ranges`."""
    if name in ("input_ids", "position_ids"):
        return ["batch", "sequence"]
    if name == "logits_positions":
        return ["batch", "positions"]
    if name == "seqlens_k":
        return ["batch"]
    if name.startswith(("past_key.", "past_value.")):
        return ["batch", spec.num_kv_heads, "past", spec.head_dim]
    if name.startswith("past_latent."):
        return ["batch", 1, "past", spec.latent_dim]
    return []  # total_sequence_length: a scalar


def tensorrt_entry(inputs: list[str], spec, context: int, max_batch: int) -> dict:
    """The manifest's `graphs.onnx.tensorrt`: the profiles as axis ranges and, per profile,
    the min/opt/max shape of every input that has a dynamic axis."""
    ranges = _ranges(context, max_batch)
    shapes = {}
    for profile, axes in ranges.items():
        shapes[profile] = {
            level: {
                name: [axes[a][level] if isinstance(a, str) else a for a in _input_axes(name, spec)]
                for name in inputs
                if _input_axes(name, spec)
            }
            for level in ("min", "opt", "max")
        }
    return {
        "target": "tensorrt",
        "parser_versions": ["10.3", "10.x-newest"],
        "max_batch": max_batch,
        "context": context,
        "axes": ranges,
        "profiles": shapes,
        "note": "profiles for TensorRT's ONNX Runtime provider (trt_profile_min/opt/max_shapes); "
        "the first run builds engines, later runs load them from the engine cache",
    }
