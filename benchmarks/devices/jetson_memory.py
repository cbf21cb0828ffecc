"""Which model fits which Jetson module, and with how much context: computed, not measured.

From the model configs in ../shared/reference/configs (R1-Distill-Qwen-14B's is not there: its
published config's shapes are written below), the bytes each export keeps in memory and the
cache bytes per token, against each module's unified memory less a fixed reserve (the OS, the
CUDA context and TensorRT's workspace). Prints the markdown table docs/jetson.md carries:

    python -m benchmarks.devices.jetson_memory
"""

from __future__ import annotations

import json
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[2].parent / "shared/reference/configs"
GIB = 1 << 30
MODULES = {"Orin Nano 8GB": 8, "Orin NX 16GB": 16, "AGX Orin 32GB": 32, "AGX Orin 64GB": 64}
RESERVE_GIB = (
    3.0  # OS and desktop-less JetPack (~1.5), CUDA context (~0.5), trt_max_workspace_size (1)
)
MODELS = {
    "R1-Distill-Qwen-1.5B": "deepseek-r1-distill-qwen-1.5b.json",
    "R1-Distill-Qwen-7B": "deepseek-r1-distill-qwen-7b.json",
    "R1-Distill-Llama-8B": "deepseek-r1-distill-llama-8b.json",
    # Qwen2.5-14B's shapes (its config.json on the Hub); not in the reference
    "R1-Distill-Qwen-14B": {
        "hidden_size": 5120,
        "num_hidden_layers": 48,
        "num_attention_heads": 40,
        "num_key_value_heads": 8,
        "intermediate_size": 13824,
        "vocab_size": 152064,
        "max_position_embeddings": 131072,
        "tie_word_embeddings": False,
    },
    "V2-Lite": "deepseek-v2-lite.json",
}


def _config(source) -> dict:
    return source if isinstance(source, dict) else json.loads((CONFIGS / source).read_text())


def linear_and_embedding_params(c: dict) -> tuple[int, int]:
    """(parameters of the linear layers, LM head included; of the embedding table)."""
    h, n, v = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"]
    heads = c["num_attention_heads"]
    embed = v * h
    head = 0 if c.get("tie_word_embeddings") else v * h
    if c.get("kv_lora_rank"):
        dn, dr, dv, lat = (
            c["qk_nope_head_dim"],
            c["qk_rope_head_dim"],
            c["v_head_dim"],
            c["kv_lora_rank"],
        )
        q = (
            h * heads * (dn + dr)
            if not c.get("q_lora_rank")
            else h * c["q_lora_rank"] + c["q_lora_rank"] * heads * (dn + dr)
        )
        attn = q + h * (lat + dr) + lat * heads * (dn + dv) + heads * dv * h
        dense = c.get("first_k_dense_replace", 0)
        moe = (c["n_routed_experts"] + c["n_shared_experts"]) * 3 * h * c[
            "moe_intermediate_size"
        ] + h * c["n_routed_experts"]
        return n * attn + dense * 3 * h * c["intermediate_size"] + (n - dense) * moe + head, embed
    d = h // heads
    kv = c.get("num_key_value_heads", heads)
    attn = h * heads * d * 2 + h * kv * d * 2
    return n * (attn + 3 * h * c["intermediate_size"]) + head, embed


def cache_values_per_token(c: dict) -> int:
    if c.get("kv_lora_rank"):
        return c["num_hidden_layers"] * (c["kv_lora_rank"] + c["qk_rope_head_dim"])
    d = c["hidden_size"] // c["num_attention_heads"]
    return 2 * c["num_hidden_layers"] * c.get("num_key_value_heads", c["num_attention_heads"]) * d


def exports(c: dict) -> dict[str, tuple[float, int]]:
    """Per export: (weight bytes in memory, cache bytes per token)."""
    linear, embed = linear_and_embedding_params(c)
    values = cache_values_per_token(c)
    half_cache = 4 if c.get("kv_lora_rank") else 2  # MLA latents stay float32 (README)
    return {
        # --target tensorrt: int8 + a float32 scale per channel; the embedding counted as float16,
        # since TensorRT may fold its dequantized table into a constant; float32 cache.
        "int8 (--target tensorrt)": (linear * 1.0 + embed * 2.0, values * 4),
        # --weights int4 --kv-cache float16 on the CUDA provider: 4 bits + a float32 scale per 32,
        # the int8 embedding.
        "int4 (CUDA provider)": (linear * (0.5 + 4 / 32) + embed * 1.0, values * half_cache),
    }


def context_that_fits(memory_gib: float, weights: float, per_token: int, max_context: int) -> str:
    left = (memory_gib - RESERVE_GIB) * GIB - weights
    if left <= 0:
        return "does not fit"
    tokens = min(int(left // per_token), max_context)
    return f"{tokens // 1024}k" if tokens >= 1024 else str(tokens)


def table() -> str:
    lines = [
        "| model | export | weights GiB | cache KiB/token | " + " | ".join(MODULES) + " |",
        "|---|---|---|---|" + "---|" * len(MODULES),
    ]
    for name, source in MODELS.items():
        c = _config(source)
        for export, (weights, per_token) in exports(c).items():
            cells = [
                context_that_fits(m, weights, per_token, c["max_position_embeddings"])
                for m in MODULES.values()
            ]
            lines.append(
                f"| {name} | {export} | {weights / GIB:.1f} | {per_token / 1024:.0f} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
