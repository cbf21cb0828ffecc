"""What exporting DeepSeek-V3/R1 from its published FP8 checkpoint costs, per layer, at the real
671B widths: measured on a random FP8 cut (layer 0 dense, layer 1 MoE, a few routed experts, a
short vocabulary) and extrapolated to 61 layers, 256 experts and the 129,280-token vocabulary.

    python -m benchmarks.export.fp8_cost                    # experts 16 and 32, vocab 8192, int8
    python -m benchmarks.export.fp8_cost --experts 16 --weights int4

Each part (embedding + LM head alone, then each layer) runs through the exporter's own
`write_tensors` in a child process of its own: its time, its peak traced allocation
(tracemalloc: numpy's buffers) and its peak RSS (ru_maxrss of that child). A layer's cost is
its run less the run without layers. A MoE layer is fitted as fixed + experts x per-expert from
the two expert counts (one count: scaled by its parameters). The graphs (ONNX/OpenVINO) are not
part of this: it measures reading, dequantizing and quantizing the weights.
Results go to results/export_cost.md (its FP8 section) and results/export_cost_fp8.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import RESULTS, SHARED_REFERENCE
from benchmarks.random_checkpoint import tensor_shapes

V3 = SHARED_REFERENCE / "configs/deepseek-v3.json"
QUANT = {
    "activation_scheme": "dynamic",
    "fmt": "e4m3",
    "quant_method": "fp8",
    "weight_block_size": [128, 128],
}
FP8_WEIGHT = re.compile(r"^model\.layers\.\d+\..*_proj(_with_mqa)?\.weight$")
SHARD_BYTES = 2 << 30
KEYS = ("seconds", "cpu_seconds", "traced_peak", "rss_peak", "written")
SECTION = "## FP8 source (DeepSeek-V3/R1 as published)"


def cut_config(experts: int, vocab: int) -> dict:
    c = json.loads(V3.read_text())
    c.update(
        num_hidden_layers=2,
        first_k_dense_replace=1,
        n_routed_experts=experts,
        vocab_size=vocab,
        quantization_config=QUANT,
        n_group=min(c["n_group"], experts // 2),
    )
    c["topk_group"] = min(c["topk_group"], c["n_group"])
    return c


def write_fp8_cut(out: Path, experts: int, vocab: int, seed: int = 0) -> Path:
    """A random checkpoint stored as DeepSeek's FP8 ones are (e4m3 projections with 128x128
    float32 scale_inv blocks, the rest bf16), shard by shard."""
    import torch
    from safetensors.torch import save_file

    config = cut_config(experts, vocab)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    shard, size, weight_map, n = {}, 0, {}, 0

    def flush():
        nonlocal shard, size, n
        n += 1
        name = f"model-{n:05d}.safetensors"
        save_file(shard, str(out / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        shard, size = {}, 0

    for name, shape in tensor_shapes(config).items():
        if len(shape) == 1:
            shard[name] = torch.ones(shape, dtype=torch.bfloat16)
        elif FP8_WEIGHT.match(name):
            w = torch.randn(shape, generator=gen) * 0.02
            rows, cols = math.ceil(shape[0] / 128), math.ceil(shape[1] / 128)
            pad = torch.zeros(rows * 128, cols * 128)
            pad[: shape[0], : shape[1]] = w
            blocks = pad.view(rows, 128, cols, 128)
            scale = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12) / 448.0
            q = (blocks / scale[:, None, :, None]).to(torch.float8_e4m3fn)
            q = q.view(rows * 128, cols * 128)
            shard[name] = q[: shape[0], : shape[1]].contiguous()
            shard[name + "_scale_inv"] = scale.float()
        else:
            shard[name] = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
        size += math.prod(shape)
        if size >= SHARD_BYTES:
            flush()
    if shard:
        flush()
    (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (out / "config.json").write_text(json.dumps(config, indent=1))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(SHARED_REFERENCE / "deepseek-v3-tokenizer" / f, out / f)
    return out


def run_part(src: Path, layers: str, weights: str) -> dict:
    """In this (child) process: write the embedding, LM head and `layers` ("", "0", "1")."""
    import dataclasses
    import tracemalloc

    from edgeds_export import mla
    from edgeds_export.checkpoint import Checkpoint
    from edgeds_export.families import family_for
    from edgeds_export.quantize import SCHEMES
    from edgeds_export.weight_file import WeightFile

    ckpt = Checkpoint(src)
    spec = family_for(ckpt.config).decoder_spec(ckpt)
    keep = tuple(spec.layers[int(i)] for i in layers.split(",") if i)
    spec = dataclasses.replace(spec, layers=keep, num_layers=len(keep))
    with tempfile.TemporaryDirectory(dir=src.parent) as tmp:
        out = WeightFile(Path(tmp) / "model.onnx.data")
        tracemalloc.start()
        t0, cpu0 = time.perf_counter(), time.process_time()
        mla.write_tensors(ckpt, spec, SCHEMES[weights], out, 4096)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        traced = tracemalloc.get_traced_memory()[1]
        out.close()
        written = out.path.stat().st_size
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "traced_peak": traced,
        "rss_peak": _vm_hwm(),
        "written": written,
    }


def _vm_hwm() -> int:
    """This process's peak RSS (VmHWM). Not ru_maxrss: a child's counts its parent's RSS at the
    fork (Linux keeps the high-water mark across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(src: Path, layers: str, weights: str) -> dict:
    cmd = [sys.executable, "-m", __spec__.name, "--part", str(src), layers, weights]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def params(c: dict, layer: int) -> int:
    prefix = f"model.layers.{layer}."
    return sum(math.prod(s) for n, s in tensor_shapes(c).items() if n.startswith(prefix))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--experts", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--weights", default="int8")
    ap.add_argument("--work", default="/tmp/edgeds-fp8-cost")
    ap.add_argument("--keep", action="store_true", help="keep the random checkpoints")
    args = ap.parse_args()
    work = Path(args.work)
    rows = []
    for e in args.experts:
        src = work / f"v3-fp8-cut-e{e}-v{args.vocab}"
        if not (src / "config.json").exists():
            write_fp8_cut(src, e, args.vocab)
        base = measure(src, "", args.weights)
        for layer, kind in ((0, "dense"), (1, "moe")):
            part = measure(src, str(layer), args.weights)
            rows.append(
                {
                    "experts": e,
                    "layer": layer,
                    "kind": kind,
                    "params": params(cut_config(e, args.vocab), layer),
                    "seconds": part["seconds"] - base["seconds"],
                    "cpu_seconds": part["cpu_seconds"] - base["cpu_seconds"],
                    "traced_peak": part["traced_peak"],
                    "rss_peak": part["rss_peak"],
                    "written": part["written"] - base["written"],
                }
            )
            print(rows[-1], flush=True)
        rows.append(
            {
                "experts": e,
                "layer": None,
                "kind": "embedding+head",
                "params": 2 * args.vocab * 7168,
                **{k: base[k] for k in KEYS},
            }
        )
        if not args.keep:
            shutil.rmtree(src)
    report = extrapolate(rows, args.vocab)
    RESULTS.mkdir(exist_ok=True)
    record = {"rows": rows, "extrapolated": report, "args": vars(args)}
    (RESULTS / "export_cost_fp8.json").write_text(json.dumps(record, indent=1) + "\n")
    write_section(rows, report, args)


def extrapolate(rows: list[dict], vocab: int) -> dict:
    """Wall and CPU seconds of the full model from the cut's parts, and the peaks."""
    c = json.loads(V3.read_text())
    dense_n = c["first_k_dense_replace"]
    moe_n = c["num_hidden_layers"] - dense_n
    report = {"dense_layers": dense_n, "moe_layers": moe_n}
    moe = sorted((r for r in rows if r["kind"] == "moe"), key=lambda r: r["experts"])
    for key in ("seconds", "cpu_seconds"):
        dense = min(r[key] for r in rows if r["kind"] == "dense")
        head = min(r[key] for r in rows if r["kind"] == "embedding+head")
        if len(moe) >= 2 and moe[-1]["experts"] > moe[0]["experts"]:
            spread = moe[-1]["experts"] - moe[0]["experts"]
            per_expert = (moe[-1][key] - moe[0][key]) / spread
            moe_s = moe[0][key] + per_expert * (c["n_routed_experts"] - moe[0]["experts"])
        else:  # one expert count: scaled by the layer's parameters
            full = params(cut_config(c["n_routed_experts"], vocab), 1)
            moe_s = moe[0][key] * full / moe[0]["params"]
        head_s = head * c["vocab_size"] / vocab
        report[key] = {
            "dense_layer": dense,
            "moe_layer": moe_s,
            "embedding_head": head_s,
            "total": dense_n * dense + moe_n * moe_s + head_s,
        }
    layers = [r for r in rows if r["kind"] != "embedding+head"]
    head_peak = min(r["traced_peak"] for r in rows if r["kind"] == "embedding+head")
    report["layer_traced_peak"] = max(r["traced_peak"] for r in layers)
    report["embedding_head_traced_peak"] = head_peak * c["vocab_size"] / vocab
    return report


def write_section(rows: list[dict], x: dict, args) -> None:
    gib = 2**30
    experts = " ".join(map(str, args.experts))
    command = f"python -m benchmarks.export.fp8_cost --experts {experts} --vocab {args.vocab}"
    lines = [
        SECTION,
        "",
        (
            f"`{command} --weights {args.weights}` on {platform.machine()}, {os.cpu_count()} CPUs, "
            "**shared with other engineers' test runs while measured: wall times are indicative, "
            "not a benchmark** (CPU time is the steadier figure; rerun on an idle machine for real "
            "numbers). Random FP8 weights at the real widths (hidden 7168, 128 heads, q_lora 1536, "
            "kv_lora 512, dense MLP 18432, experts 2048), 128x128 scale blocks; weights only "
            "(reading, dequantizing, quantizing, writing), no graph. A layer's row is its run "
            "less the run of the embedding and LM head alone; its peaks are the whole run's."
        ),
        "",
        (
            "| part | routed experts | parameters | wall (s) | CPU (s) | peak traced (GiB) "
            "| peak RSS of the run (GiB) | written (GiB) |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = r["kind"] if r["layer"] is None else f"layer {r['layer']} ({r['kind']})"
        lines.append(
            f"| {name} | {r['experts']} | {r['params'] / 1e9:.3f}B | {r['seconds']:.1f} | "
            f"{r['cpu_seconds']:.1f} | {r['traced_peak'] / gib:.2f} | {r['rss_peak'] / gib:.2f} | "
            f"{r['written'] / gib:.2f} |"
        )
    layers = f"{x['dense_layers']} dense, {x['moe_layers']} MoE with 256 experts"
    lines += [
        "",
        (
            f"Extrapolated to DeepSeek-V3/R1 (61 layers: {layers}; vocabulary 129,280; the MTP "
            "layer is not exported):"
        ),
        "",
        *(
            (
                f"- {what}: dense layer {t['dense_layer']:.0f} s, MoE layer {t['moe_layer']:.0f} "
                f"s, embedding + LM head {t['embedding_head']:.0f} s: "
                f"**{t['total'] / 3600:.1f} h** for the weights."
            )
            for what, t in (("wall", x["seconds"]), ("CPU", x["cpu_seconds"]))
        ),
        (
            f"- peak traced memory of a layer {x['layer_traced_peak'] / gib:.2f} GiB whatever its "
            "expert count (one tensor at a time); the embedding and LM head at the full "
            f"vocabulary, about {x['embedding_head_traced_peak'] / gib:.1f} GiB (scaled from the "
            "cut's)."
        ),
        "",
    ]
    path = RESULTS / "export_cost.md"
    text = path.read_text() if path.exists() else ""
    if SECTION in text:
        start = text.index(SECTION)
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + text[end + 1 :] if end != -1 else text[:start]
    path.write_text(text.rstrip("\n") + "\n\n" + "\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--part":
        print(json.dumps(run_part(Path(sys.argv[2]), sys.argv[3], sys.argv[4])))
    else:
        main()
