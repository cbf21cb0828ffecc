"""Write a random-weight checkpoint (bf16 safetensors, sharded, HF layout) from a published config.

Tensors are generated and saved shard by shard, so even the 7B shape needs only one shard in
memory. Used to measure export at real sizes without downloading anything.

    python -m benchmarks.random_checkpoint \
        ../shared/reference/configs/deepseek-r1-distill-qwen-7b.json /tmp/r1-7b
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from benchmarks import SHARED_REFERENCE

SHARD_BYTES = 4 << 30


def mla_shapes(c: dict) -> dict[str, tuple[int, ...]]:
    """DeepSeek-V2/V3 tensor names and shapes (routed experts stored one by one, as published)."""
    h, heads = c["hidden_size"], c["num_attention_heads"]
    dn, dr = c["qk_nope_head_dim"], c["qk_rope_head_dim"]
    dv, lat = c["v_head_dim"], c["kv_lora_rank"]
    q_lora, e, inter = c.get("q_lora_rank"), c["n_routed_experts"], c["moe_intermediate_size"]
    shapes = {"model.embed_tokens.weight": (c["vocab_size"], h)}
    for i in range(c["num_hidden_layers"]):
        p, a, m = f"model.layers.{i}", f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
        shapes |= {f"{p}.input_layernorm.weight": (h,),
                   f"{p}.post_attention_layernorm.weight": (h,)}
        if q_lora:
            shapes |= {f"{a}.q_a_proj.weight": (q_lora, h), f"{a}.q_a_layernorm.weight": (q_lora,),
                       f"{a}.q_b_proj.weight": (heads * (dn + dr), q_lora)}
        else:
            shapes[f"{a}.q_proj.weight"] = (heads * (dn + dr), h)
        shapes |= {f"{a}.kv_a_proj_with_mqa.weight": (lat + dr, h),
                   f"{a}.kv_a_layernorm.weight": (lat,),
                   f"{a}.kv_b_proj.weight": (heads * (dn + dv), lat),
                   f"{a}.o_proj.weight": (h, heads * dv)}
        if i < c.get("first_k_dense_replace", 0):
            shapes |= {f"{m}.gate_proj.weight": (c["intermediate_size"], h),
                       f"{m}.up_proj.weight": (c["intermediate_size"], h),
                       f"{m}.down_proj.weight": (h, c["intermediate_size"])}
            continue
        shapes[f"{m}.gate.weight"] = (e, h)
        if c["model_type"] == "deepseek_v3":
            shapes[f"{m}.gate.e_score_correction_bias"] = (e,)
        for j in range(e):
            shapes |= {f"{m}.experts.{j}.gate_proj.weight": (inter, h),
                       f"{m}.experts.{j}.up_proj.weight": (inter, h),
                       f"{m}.experts.{j}.down_proj.weight": (h, inter)}
        shared = inter * c.get("n_shared_experts", 0)
        if shared:
            shapes |= {f"{m}.shared_experts.gate_proj.weight": (shared, h),
                       f"{m}.shared_experts.up_proj.weight": (shared, h),
                       f"{m}.shared_experts.down_proj.weight": (h, shared)}
    shapes["model.norm.weight"] = (h,)
    if not c.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (c["vocab_size"], h)
    return shapes


def tensor_shapes(c: dict) -> dict[str, tuple[int, ...]]:
    if c["model_type"] in ("deepseek_v2", "deepseek_v3"):
        return mla_shapes(c)
    h, inter, heads = c["hidden_size"], c["intermediate_size"], c["num_attention_heads"]
    kv = c.get("num_key_value_heads", heads)
    d = c.get("head_dim") or h // heads
    bias = c["model_type"] == "qwen2" or c.get("attention_bias", False)
    shapes = {"model.embed_tokens.weight": (c["vocab_size"], h)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}"
        shapes |= {
            f"{p}.input_layernorm.weight": (h,), f"{p}.post_attention_layernorm.weight": (h,),
            f"{p}.self_attn.q_proj.weight": (heads * d, h),
            f"{p}.self_attn.k_proj.weight": (kv * d, h),
            f"{p}.self_attn.v_proj.weight": (kv * d, h),
            f"{p}.self_attn.o_proj.weight": (h, heads * d),
            f"{p}.mlp.gate_proj.weight": (inter, h), f"{p}.mlp.up_proj.weight": (inter, h),
            f"{p}.mlp.down_proj.weight": (h, inter),
        }
        if bias:
            shapes |= {f"{p}.self_attn.q_proj.bias": (heads * d,),
                       f"{p}.self_attn.k_proj.bias": (kv * d,),
                       f"{p}.self_attn.v_proj.bias": (kv * d,)}
    shapes["model.norm.weight"] = (h,)
    if not c.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (c["vocab_size"], h)
    return shapes


def random_tensor(name: str, shape: tuple[int, ...], gen):
    import torch

    if len(shape) == 1 and "correction_bias" not in name:
        fill = torch.ones if "norm" in name else torch.zeros
        return fill(shape, dtype=torch.bfloat16)
    return (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)


def write_checkpoint(config_path: Path, out: Path, tokenizer_dir: Path | None = None, seed: int = 0,
                     layers: int | None = None, threads: int = 1) -> Path:
    """layers: keep only this many decoder layers (the real widths, a cut depth). threads > 1:
    tensors drawn at once, each from a generator of its own (seeded seed, its index), since one
    generator draws ~100M values/s and DeepSeek-V2-Lite has 16B: other weights than threads=1's
    (the same for any threads > 1), still the same every run."""
    import torch
    from safetensors.torch import save_file

    config = json.loads(config_path.read_text())
    if layers:
        config["num_hidden_layers"] = layers
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    gen = torch.Generator().manual_seed(seed)
    shard, shard_bytes, weight_map, shards = {}, 0, {}, []

    def flush():
        nonlocal shard, shard_bytes
        name = f"model-{len(shards) + 1:05d}.safetensors"
        save_file(shard, str(out / name), metadata={"format": "pt"})
        shards.append(name)
        weight_map.update({k: name for k in shard})
        shard, shard_bytes = {}, 0

    shapes = list(tensor_shapes(config).items())
    if threads > 1:
        from concurrent.futures import ThreadPoolExecutor

        def draw(item):
            i, (name, shape) = item
            return random_tensor(name, shape, torch.Generator().manual_seed(seed * 1_000_003 + i))

        pool = ThreadPoolExecutor(threads)  # torch drops the GIL while it draws
        # In order, a shard's worth at a time ahead at most: memory stays near one shard.
        tensors = (t for chunk in _chunks(list(enumerate(shapes)), 4 * threads)
                   for t in pool.map(draw, chunk))
    else:
        tensors = (random_tensor(name, shape, gen) for name, shape in shapes)
    for (name, _), t in zip(shapes, tensors):
        shard[name] = t
        shard_bytes += t.numel() * 2
        if shard_bytes >= SHARD_BYTES:
            flush()
    if shard:
        flush()
    if threads > 1:
        pool.shutdown()
    index = {"metadata": {"total_size": sum((out / s).stat().st_size for s in shards)},
             "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": config.get("bos_token_id"), "eos_token_id": config.get("eos_token_id")}))
    if tokenizer_dir:
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copyfile(tokenizer_dir / f, out / f)
    return out


def _chunks(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i:i + n]


if __name__ == "__main__":
    tok = Path(sys.argv[3]) if len(sys.argv) > 3 else SHARED_REFERENCE / "deepseek-v3-tokenizer"
    write_checkpoint(Path(sys.argv[1]), Path(sys.argv[2]), tok)
