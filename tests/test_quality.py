"""The quality gate on the shipped reference model: a change that hurts quantization fails CI.

A short held-out slice (standard library files the model never saw) scored by transformers fp32
and by fresh fp32 and INT8 exports in both formats.
"""

from __future__ import annotations

import pytest

from conftest import REPO

from edgeds.hardware import detect
from edgeds.native import unavailable as native_unavailable

MODELS = REPO / "benchmarks/reference_models"
CHECKPOINT = MODELS / "r1-distill-tiny-python"


@pytest.fixture(scope="module", params=["r1-distill-tiny-python", "deepseek-v3-tiny-python"])
def rows(request):
    from benchmarks.quality.perplexity import evaluate

    rows = evaluate(MODELS / request.param, ("fp32", "int8", "int8-wo"), windows=6, seq=128)
    return {"model": request.param, **{(r["graph"], r["weights"]): r for r in rows}}


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_fp32_export_matches_transformers_perplexity(rows, fmt):
    r = rows[fmt, "fp32"]
    assert abs(r["ppl_change_pct"]) < 0.1 and r["top1_agreement_pct"] > 99.5, r


# Top-1 agreement floors on this 762-token slice (0.13% per token). The full benchmark
# (benchmarks/results/quality.md) is higher. ONNX "int8" also quantizes activations per row
# (integer matmuls): it trades about 1 point of top-1 on these 256-wide models for 1.1-1.8x faster
# batched rows; "int8-wo" keeps float activations. The MoE model's routing flips on a few tokens.
TOP1_FLOOR = {("r1-distill-tiny-python", "int8-wo"): 98.0, ("r1-distill-tiny-python", "int8"): 97.0,
              ("deepseek-v3-tiny-python", "int8-wo"): 96.0,
              ("deepseek-v3-tiny-python", "int8"): 95.5}


@pytest.mark.parametrize("weights", ["int8", "int8-wo"])
@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_int8_keeps_quality(rows, fmt, weights, capsys):
    r = rows[fmt, weights]
    with capsys.disabled():
        print(f"\n{weights} {fmt}: perplexity {r['perplexity']:.4f} ({r['ppl_change_pct']:+.3f}%), "
              f"top-1 agreement {r['top1_agreement_pct']:.2f}%")
    assert r["ppl_change_pct"] < 0.5, r
    assert r["top1_agreement_pct"] >= TOP1_FLOOR[rows["model"], weights], r
    assert rows["transformers", "fp32"]["perplexity"] < 20  # the model really learned Python


def test_native_backend_keeps_the_quality_of_the_same_export(rows):
    """The int8 export through edgeds' own decoder scores as ONNX Runtime does on its graph: the
    same int8 arithmetic, only the float rounding (summation order) differs, which moves a
    row's quantized activations at rounding ties. On this 762-token slice the two measured
    +0.263% / +0.341%."""
    if ("onnx native", "int8") not in rows:
        assert rows["model"] == "deepseek-v3-tiny-python" or native_unavailable(detect().flags)
        return
    native, ort = rows["onnx native", "int8"], rows["onnx", "int8"]
    assert native["ppl_change_pct"] < 0.5, native  # the int8 gate of test_int8_keeps_quality
    assert abs(native["ppl_change_pct"] - ort["ppl_change_pct"]) < 0.25, (native, ort)
    assert native["top1_agreement_pct"] >= TOP1_FLOOR[rows["model"], "int8"], native


def test_embedded_default_is_this_model_in_int8():
    import json

    manifest = json.loads((REPO / "edgeds/embedded_model/edgeds.json").read_text())
    assert manifest["quantization"]["weights"] == "int8"
    assert manifest["model"]["model_type"] == "qwen2"
    src_hash = manifest["source"]["files"]["model.safetensors"]
    from edgeds.artifact import sha256_file

    assert sha256_file(CHECKPOINT / "model.safetensors") == src_hash


def test_int8_kv_cache_keeps_quality(capsys):
    """An int8 KV cache on top of int8 weights, scored in decode steps (every position reads
    the cache). Measured on this slice: perplexity -0.03%, top-1 96.59% (int8 weights alone:
    97.38%; on the full benchmark 98.19% against 98.33%)."""
    from benchmarks.quality.perplexity import evaluate

    rows = evaluate(CHECKPOINT, ("int8",), windows=6, seq=128, kv_caches=("int8",))
    [r] = [r for r in rows if r["graph"] == "onnx"]
    with capsys.disabled():
        print(f"\nint8 + int8 KV onnx: perplexity {r['perplexity']:.4f} "
              f"({r['ppl_change_pct']:+.3f}%), "
              f"top-1 agreement {r['top1_agreement_pct']:.2f}%")
    assert r["weights"] == "int8, int8 KV (decode steps)"
    assert r["ppl_change_pct"] < 0.5, r
    assert r["top1_agreement_pct"] >= 96.0, r
