"""MLA and MoE decode costs, on DeepSeek-V2-Lite's real widths (random weights, cut depth).

    python -m benchmarks.design.mla_moe

1. Sparse experts against every expert computed: decode tokens/s at batch 1 of the same
   INT8 model (64 routed experts, top-6), the only difference being the expert dispatch.
2. Decode step time against context length for the latent cache.
3. Decode tokens/s per layer of the depth-cut V2-Lite, ONNX Runtime and OpenVINO.
Writes benchmarks/results/mla_moe.md and .json.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import numpy as np

from benchmarks import RESULTS, SHARED_REFERENCE
from benchmarks.random_checkpoint import write_checkpoint

CONFIG = SHARED_REFERENCE / "configs/deepseek-v2-lite.json"
TOKENIZER = SHARED_REFERENCE / "deepseek-v3-tokenizer"
LAYERS = 6  # one dense layer and five MoE layers, at full width (V2-Lite has 26 MoE of 27)


def decode_rate(backend, context: int, steps: int = 16, prompt: int = 32) -> float:
    """Seconds per decode step at batch 1 once `context` tokens are cached."""
    rng = np.random.default_rng(0)
    backend.start(1, context + steps + 8)
    backend.prefill([0], [rng.integers(0, 1000, min(prompt, context)).astype(np.int64)])
    if context > prompt:  # fill the cache cheaply: one long prefill instead of many steps
        backend.start(1, context + steps + 8)
        backend.prefill([0], [rng.integers(0, 1000, context).astype(np.int64)])
    tok = np.array([5], np.int64)
    backend.decode(tok)
    t0 = time.perf_counter()
    for _ in range(steps):
        backend.decode(tok)
    return (time.perf_counter() - t0) / steps


def export_variant(src: Path, out: Path, graph: type | None = None, formats=("onnx",)) -> Path:
    """`graph`: one of mla_baselines' graphs instead of the exporter's own."""
    from edgeds_export import export_checkpoint

    from benchmarks.design.mla_baselines import exported_with

    if (out / "edgeds.json").exists():
        return out
    with exported_with(graph) if graph else contextlib.nullcontext():
        export_checkpoint(src, out, formats=formats, weights="int8", context=8192 + 64,
                          overwrite=True)
    return out


def main() -> None:
    from edgeds.artifact import load_artifact
    from edgeds.backends.onnxruntime import OnnxRuntimeBackend
    from edgeds.backends.openvino import OpenVinoBackend

    work = Path("/tmp/edgeds-mla-bench")
    src = work / f"v2-lite-{LAYERS}-layers"
    if not (src / "model.safetensors.index.json").exists():
        write_checkpoint(CONFIG, src, TOKENIZER, layers=LAYERS)
    from benchmarks.design.mla_baselines import AllExperts, PerHeadCache

    sparse = export_variant(src, work / "sparse", formats=("onnx", "openvino"))
    dense = export_variant(src, work / "dense", AllExperts)
    per_head = export_variant(src, work / "per-head", PerHeadCache)
    res: dict = {"model": f"DeepSeek-V2-Lite widths, {LAYERS} layers (1 dense + {LAYERS - 1} MoE: "
                          "64 experts, top-6), INT8"}
    ort_sparse = OnnxRuntimeBackend(load_artifact(sparse), ["CPUExecutionProvider"])
    ort_dense = OnnxRuntimeBackend(load_artifact(dense), ["CPUExecutionProvider"])
    s, d = decode_rate(ort_sparse, 64), decode_rate(ort_dense, 64)
    res["moe"] = {"sparse_step_ms": s * 1e3, "all_experts_step_ms": d * 1e3, "speedup": d / s}
    ort_per_head = OnnxRuntimeBackend(load_artifact(per_head), ["CPUExecutionProvider"])
    res["context"] = [{"context": c, "step_ms": decode_rate(ort_sparse, c) * 1e3,
                       "per_head_step_ms": decode_rate(ort_per_head, c) * 1e3}
                      for c in (256, 1024, 2048, 4096, 8192)]
    del ort_per_head
    ov = OpenVinoBackend(load_artifact(sparse),
                         config={"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"})
    ov_s = decode_rate(ov, 64)
    m = load_artifact(sparse).manifest
    res["per_layer"] = {"onnxruntime_ms_per_layer": s * 1e3 / LAYERS,
                        "openvino_ms_per_layer": ov_s * 1e3 / LAYERS,
                        "kv_bytes_per_token_per_layer":
                            m.kv_layout("onnx").bytes_per_token // LAYERS,
                        "per_head_kv_bytes_per_token_per_layer_fp32": 2 * 16 * 192 * 4}
    out = RESULTS
    (out / "mla_moe.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [(f"# MLA and MoE decode ({res['model']}; `python -m benchmarks.design.mla_moe`, 2 "
              "threads)"), "",
             "| experts | decode step (ms) |", "|---|---|",
             f"| only the routed ones (edgeds) | {res['moe']['sparse_step_ms']:.1f} |",
             f"| all 64 computed | {res['moe']['all_experts_step_ms']:.1f} |",
             f"| speedup | {res['moe']['speedup']:.2f}x |", "",
             ("| context | latent cache, absorbed (edgeds): step (ms) | per-head K/V cache: step "
              "(ms) | ratio |"),
             "|---|---|---|---|"]
    lines += [f"| {r['context']} | {r['step_ms']:.1f} | {r['per_head_step_ms']:.1f} | "
              f"{r['per_head_step_ms'] / r['step_ms']:.2f}x |"
              for r in res["context"]]
    p = res["per_layer"]
    lines += ["",
              (f"Per layer at batch 1: ONNX Runtime {p['onnxruntime_ms_per_layer']:.1f} ms, "
               "OpenVINO "
               f"{p['openvino_ms_per_layer']:.1f} ms. KV cache {p['kv_bytes_per_token_per_layer']} "
               "bytes/token/layer "
               f"(latent, fp32) against {p['per_head_kv_bytes_per_token_per_layer_fp32']} for "
               "per-head K and V in fp32.")]
    (out / "mla_moe.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
