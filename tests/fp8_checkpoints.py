"""Tiny checkpoints stored as DeepSeek publishes V3/R1: the decoder layers' projections in
float8_e4m3fn with one float32 `weight_scale_inv` (amax / 448) per block, everything else bf16,
`quantization_config` in config.json; plus the same weights dequantized, in bf16 or float32."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

E4M3_MAX = 448.0
# What DeepSeek stores in FP8: every projection of a decoder layer (attention, dense MLP, routed
# and shared experts); the router, norms, embedding and LM head stay bf16.
FP8_WEIGHT = re.compile(r"^model\.layers\.\d+\..*_proj(_with_mqa)?\.weight$")
QUANT = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8"}


def fp8_blocks(
    w: torch.Tensor, block: tuple[int, int], pow2: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(float8_e4m3fn (N, K), float32 scale_inv (ceil(N/br), ceil(K/bc))); partial last blocks
    are scaled by their own amax. `pow2`: scales rounded up to powers of two (V3.1's ue8m0)."""
    (n, k), (br, bc) = w.shape, block
    nb, kb = math.ceil(n / br), math.ceil(k / bc)
    padded = torch.zeros(nb * br, kb * bc)
    padded[:n, :k] = w.float()
    amax = padded.view(nb, br, kb, bc).abs().amax(dim=(1, 3)).clamp(min=1e-12)
    scale = amax / E4M3_MAX
    if pow2:
        scale = torch.exp2(torch.ceil(torch.log2(scale)))
    scaled = padded.view(nb, br, kb, bc) / scale[:, None, :, None]
    q = scaled.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).view(nb * br, kb * bc)[:n, :k]
    return q.contiguous(), scale.float()


def dequantize(q: torch.Tensor, scale: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    n, k = q.shape
    s = scale.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)[:n, :k]
    return q.float() * s


def _copy_side_files(src: Path, dst: Path) -> dict:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.suffix != ".safetensors" and f.name != "model.safetensors.index.json":
            shutil.copy(f, dst / f.name)
    return json.loads((src / "config.json").read_text())


def with_mtp_layer(tensors: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """Adds a multi-token-prediction layer as V3 stores it (layer index `layers`, one past the
    decoder: a copy of the last layer plus its eh_proj/enorm/hnorm/shared_head)."""
    last = f"model.layers.{layers - 1}."
    extra = {
        name.replace(last, f"model.layers.{layers}."): t.clone()
        for name, t in tensors.items()
        if name.startswith(last)
    }
    hidden = tensors["model.norm.weight"].shape[0]
    p = f"model.layers.{layers}."
    extra[p + "eh_proj.weight"] = torch.randn(hidden, 2 * hidden) * 0.05
    extra[p + "enorm.weight"] = torch.ones(hidden)
    extra[p + "hnorm.weight"] = torch.ones(hidden)
    extra[p + "shared_head.norm.weight"] = torch.ones(hidden)
    extra[p + "shared_head.head.weight"] = tensors["lm_head.weight"].clone()
    return {**tensors, **extra}


def write_fp8(
    src: Path, dst: Path, block: tuple[int, int] = (128, 128), pow2: bool = False, mtp: bool = True
) -> Path:
    """`src` (a float checkpoint) stored as DeepSeek's FP8 checkpoints are."""
    config = _copy_side_files(src, dst)
    tensors = load_file(src / "model.safetensors")
    if mtp:
        torch.manual_seed(5)
        tensors = with_mtp_layer(tensors, config["num_hidden_layers"])
        config["num_nextn_predict_layers"] = 1
    out = {}
    for name, t in tensors.items():
        if FP8_WEIGHT.match(name):
            out[name], out[name + "_scale_inv"] = fp8_blocks(t, block, pow2)
        else:
            out[name] = t.to(torch.bfloat16)
    quant = {**QUANT, "weight_block_size": list(block), **({"scale_fmt": "ue8m0"} if pow2 else {})}
    config.update(quantization_config=quant, torch_dtype="bfloat16")
    (dst / "config.json").write_text(json.dumps(config, indent=1))
    save_file(out, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def write_dequantized(fp8_src: Path, dst: Path, dtype: torch.dtype) -> Path:
    """The FP8 checkpoint's weights dequantized in `dtype` (bf16: what DeepSeek's fp8_cast_bf16
    writes)."""
    config = _copy_side_files(fp8_src, dst)
    block = tuple(config.pop("quantization_config")["weight_block_size"])
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    tensors = load_file(fp8_src / "model.safetensors")
    out = {}
    for name, t in tensors.items():
        if name.endswith("_scale_inv"):
            continue
        scale = tensors.get(name + "_scale_inv")
        out[name] = (dequantize(t, scale, block) if scale is not None else t.float()).to(dtype)
    (dst / "config.json").write_text(json.dumps(config, indent=1))
    save_file(out, dst / "model.safetensors", metadata={"format": "pt"})
    return dst
