"""On paper: what the full DeepSeek-V3 / R1 (671B) needs in edgeds at int8 and int4, and what
`edgeds doctor` says about it on a machine too small for it.

    python -m benchmarks.design.moe_671b --memory-gib 128 512 1024

From the published config (../shared/reference/configs/deepseek-v3.json; R1 has the same shape)
and the exporter's own rules, nothing downloaded or exported: the tensor shapes are
random_checkpoint.py's, the manifest's model section is the exporter's spec of that config
(`decoder_spec`, reading names only), and bytes follow export/quantize.py (int8: per output
channel, a float32 scale each; int4: blocks of 32 along the input, a float32 scale each; the
embedding int8 per row; W_UK/W_UV int8 per head and column under either scheme; router and
norms float32). The cache is the native/ONNX latent: (kv_lora_rank + qk_rope_head_dim) float32
per token per layer. A config-only artifact (the manifest alone, its files' sizes those
computed here) is written and `doctor` run on it with the machine's memory replaced by each
--memory-gib. Writes benchmarks/results/moe-671b-estimate.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from benchmarks import RESULTS, SHARED_REFERENCE
from benchmarks.random_checkpoint import mla_shapes

CONFIG = SHARED_REFERENCE / "configs" / "deepseek-v3.json"
RUNTIME_MIB = 300  # scratch, libraries, tokenizer: the budget issue 22 allows over weights + KV
CONTEXTS = (4096, 32768, 131072)


def part_of(name: str) -> str:
    if name in ("model.embed_tokens.weight", "lm_head.weight"):
        return "embedding" if "embed" in name else "lm_head"
    if ".self_attn." in name:
        return "attention"
    if ".experts." in name:
        return "routed experts"
    if ".shared_experts." in name:
        return "shared experts"
    if ".mlp.gate." in name:
        return "router"
    if ".mlp." in name:
        return "dense MLP"
    return "norms"


def tensor_bytes(name: str, shape: tuple[int, ...], c: dict, weights: str) -> int:
    """Bytes of one checkpoint tensor in an edgeds artifact (export/quantize.py's rules)."""
    n = 1
    for d in shape:
        n *= d
    if len(shape) == 1 or ".mlp.gate." in name:  # norms, router, its bias: float32
        return 4 * n
    if name == "model.embed_tokens.weight":  # int8 per row with a float32 scale per row
        return n + 4 * shape[0]
    if name.endswith("kv_b_proj.weight"):  # W_UK + W_UV int8 per head, a scale per column
        heads = c["num_attention_heads"]
        return n + 4 * heads * (c["kv_lora_rank"] + c["v_head_dim"])
    rows, k = shape
    if weights == "int8":
        return n + 4 * rows
    return n // 2 + 4 * rows * (k // 32)  # int4: two values a byte, a scale per 32


def estimate(c: dict) -> dict:
    shapes = mla_shapes(c)
    layers, e, topk = c["num_hidden_layers"], c["n_routed_experts"], c["num_experts_per_tok"]
    moe_layers = layers - c.get("first_k_dense_replace", 0)
    out = {"params": sum(_count(s) for s in shapes.values()), "parts": {}}
    for weights in ("int8", "int4"):
        parts: dict[str, int] = {}
        for name, shape in shapes.items():
            key = part_of(name)
            parts[key] = parts.get(key, 0) + tensor_bytes(name, shape, c, weights)
        total = sum(parts.values())
        # a decode step reads every non-expert weight but the embedding (one row), and of the
        # routed experts the top-k of each MoE layer
        active = (total - parts["embedding"] - parts["routed experts"]
                  + parts["routed experts"] * topk // e)
        out["parts"][weights] = parts
        out[weights] = {"total": total, "active_per_token": active}
    per_token = layers * (c["kv_lora_rank"] + c["qk_rope_head_dim"]) * 4
    out["kv_per_token"] = per_token
    out["moe_layers"] = moe_layers
    return out


def _count(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


class ConfigOnly:
    """What the exporter's spec reads of a checkpoint: its config and which tensors it has."""

    def __init__(self, config: dict):
        self.config, self._names = config, set(mla_shapes(config))
        self.root = CONFIG.parent

    def has(self, name: str) -> bool:
        return name in self._names

    def names(self) -> list[str]:
        return sorted(self._names)


def fake_artifact(c: dict, out: Path, weights: str, context: int, sizes: dict) -> Path:
    """A manifest-only artifact of the full model: the exporter's spec of the config, the
    weight file's size as computed (no file behind it: doctor reads sizes from the manifest)."""
    from edgeds_export.families import family_for
    from edgeds_export.quantize import SCHEMES

    from edgeds.manifest import seal

    spec = family_for(c).decoder_spec(ConfigOnly(c))
    layers, latent = spec.num_layers, spec.kv_lora_rank + spec.qk_rope_head_dim
    files = {"model.onnx": 40 << 20, "model.onnx.data": sizes[weights]["total"],
             "tensors.json": 8 << 20, "tokenizer.json": 7 << 20}
    manifest = {
        "format": "edgeds-artifact", "format_version": 2,
        "model": {**spec.manifest_fields(), "context_length": context},
        "quantization": SCHEMES[weights].manifest(),
        "graphs": {"onnx": {
            "file": "model.onnx", "data_file": "model.onnx.data", "opset": 21,
            "inputs": ["input_ids", "position_ids", "seqlens_k", "total_sequence_length",
                       "logits_positions", *(f"past_latent.{i}" for i in range(layers))],
            "outputs": ["logits", *(f"present_latent.{i}" for i in range(layers)),
                        *(f"present_latent_alias.{i}" for i in range(layers))],
            "kv_cache": {"kind": "mla_latent", "dtype": "float32",
                         "layout": "batch, 1, capacity, kv_lora_rank + qk_rope_head_dim",
                         "values_per_token_per_layer": latent,
                         "bytes_per_token": layers * latent * 4},
            "ops": {"attention": "absorbed MLA (config only)",
                    "moe": "routed experts (config only)",
                    "linear": "int8 or int4 (config only)"},
            "tensors": "tensors.json",
        }},
        "tokenizer": {"file": "tokenizer.json", "add_bos_token": True},
        "generation": {},
        "source": {"path": str(CONFIG), "files": {}},
        "exporter": {"note": "config only: benchmarks/design/moe_671b.py, nothing exported"},
        "files": {name: {"size": size, "sha256": "0" * 64} for name, size in files.items()},
    }
    out.mkdir(parents=True, exist_ok=True)
    from edgeds.artifact import MANIFEST

    (out / MANIFEST).write_text(json.dumps(seal(manifest), indent=1))
    return out


def doctor_on(artifact: Path, memory_gib: float) -> str:
    """`edgeds doctor ARTIFACT` as on this machine with `memory_gib` of memory."""
    from dataclasses import replace
    from unittest import mock

    from edgeds import doctor, hardware

    real = hardware.detect()
    fake = replace(real, memory_bytes=int(memory_gib * 2**30))
    with mock.patch.object(doctor, "detect", lambda: fake):
        return doctor.format_report(doctor.diagnose(str(artifact)))


def gib(n: float) -> str:
    return f"{n / 2**30:,.1f}"


def to_markdown(c: dict, est: dict, doctor_runs: list[tuple[str, float, str]], note: str) -> str:
    lines = [f"# DeepSeek-V3 / R1 (671B) in edgeds, on paper ({note})", "",
             (f"{est['params'] / 1e9:,.1f}B parameters in the checkpoint (the MTP layer left out, "
             f"as the exporter does); {c['num_hidden_layers']} layers, {est['moe_layers']} of them "
             f"MoE ({c['n_routed_experts']} experts, top {c['num_experts_per_tok']}, 1 shared)."),
             "", "## Weights (GiB)", "", "| part | int8 | int4 |", "|---|---|---|"]
    for part in est["parts"]["int8"]:
        lines.append(f"| {part} | {gib(est['parts']['int8'][part])} | "
                     f"{gib(est['parts']['int4'][part])} |")
    lines += [(f"| **total (the weight file)** | **{gib(est['int8']['total'])}** | "
              f"**{gib(est['int4']['total'])}** |"),
              (f"| read per decode step (batch 1) | {gib(est['int8']['active_per_token'])} | "
              f"{gib(est['int4']['active_per_token'])} |"), ""]
    kv = est["kv_per_token"]
    per_head = c["num_attention_heads"] * (c["qk_nope_head_dim"] + c["qk_rope_head_dim"]
                                           + c["v_head_dim"])
    lines += ["## Latent KV cache (float32, per sequence)", "",
              (f"{kv:,} bytes per token ({c['num_hidden_layers']} layers x "
              f"({c['kv_lora_rank']} + {c['qk_rope_head_dim']}) x 4 B); a per-head cache "
              f"would hold {c['num_attention_heads']} x ({c['qk_nope_head_dim']} + "
              f"{c['qk_rope_head_dim']} + {c['v_head_dim']}) values per layer, "
              f"{per_head / (c['kv_lora_rank'] + c['qk_rope_head_dim']):.0f}x more."),
              "", ("| context | KV per sequence (GiB) | peak RSS int8, 1 sequence (GiB) | "
              "peak RSS int4, 1 sequence (GiB) |"), "|---|---|---|---|"]
    for ctx in CONTEXTS:
        extra = kv * ctx + RUNTIME_MIB * 2**20
        lines.append(f"| {ctx:,} | {gib(kv * ctx)} | {gib(est['int8']['total'] + extra)} | "
                     f"{gib(est['int4']['total'] + extra)} |")
    lines += ["", (f"Peak RSS = the weight file + the KV cache + {RUNTIME_MIB} MiB (issue 22's "
              "allowance). The native backend holds its weights in anonymous memory (packed at "
              "load, file pages released as it goes): nothing of a model this size may be swapped "
              "or shared between processes; the ONNX Runtime backend holds its prepacked copies "
              "likewise."), "", "## What `edgeds doctor` says on machines too small for it", ""]
    lines += [("`doctor.diagnose` on the config-only artifact (context 32,768 exported), this "
              "machine's CPU with its memory replaced; the lines about the model (the rest "
              "describes the CPU). `edgeds.load` raises the same refusal as one line "
              "(ConfigError, exit 2) before any file is read."), ""]
    keep = ("choice:", "context:", "memory:", "  largest", "  edgeds load")
    for weights, mem, text in doctor_runs:
        shown = [line for line in text.splitlines() if line.startswith(keep)]
        lines += [f"{weights}, a machine of {mem:g} GiB:", "", "```", *shown, "```", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", type=Path, default=CONFIG)
    ap.add_argument("--memory-gib", type=float, nargs="+", default=[128, 512, 768])
    ap.add_argument("--context", type=int, default=32768)
    ap.add_argument("--out", default="moe-671b-estimate")
    args = ap.parse_args()
    c = json.loads(args.config.read_text())
    est = estimate(c)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for weights in ("int8", "int4"):
            art = fake_artifact(c, Path(tmp) / weights, weights, args.context, est)
            for mem in args.memory_gib:
                runs.append((weights, mem, doctor_on(art, mem)))
    note = f"`python -m benchmarks.design.moe_671b {' '.join(sys.argv[1:])}`"
    text = to_markdown(c, est, runs, note)
    (RESULTS / f"{args.out}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
