"""The quality gate on the shipped reference model: a change that hurts quantization fails CI.

A short held-out slice (standard library files the model never saw) scored by transformers fp32
and by fresh fp32 and INT8 exports in both formats.
"""

from __future__ import annotations

import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
MODELS = REPO / "benchmarks/reference_models"
CHECKPOINT = MODELS / "r1-distill-tiny-python"


@pytest.fixture(scope="module", params=["r1-distill-tiny-python", "deepseek-v3-tiny-python"])
def rows(request):
    from quality import evaluate

    rows = evaluate(MODELS / request.param, ("fp32", "int8"), windows=6, seq=128)
    return {"model": request.param, **{(r["graph"], r["weights"]): r for r in rows}}


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_fp32_export_matches_transformers_perplexity(rows, fmt):
    r = rows[fmt, "fp32"]
    assert abs(r["ppl_change_pct"]) < 0.1 and r["top1_agreement_pct"] > 99.5, r


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_int8_keeps_quality(rows, fmt, capsys):
    r = rows[fmt, "int8"]
    with capsys.disabled():
        print(f"\nint8 {fmt}: perplexity {r['perplexity']:.4f} ({r['ppl_change_pct']:+.3f}%), "
              f"top-1 agreement {r['top1_agreement_pct']:.2f}%")
    assert r["ppl_change_pct"] < 0.5, r
    # The 98% target holds on the full benchmark (benchmarks/results/quality.md: 98.5-99.0%); this
    # 762-token slice moves by 0.13% per token, so the MoE model, whose routing flips on a few
    # tokens, gets a margin.
    assert r["top1_agreement_pct"] >= (98.0 if rows["model"] == "r1-distill-tiny-python" else 96.0), r
    assert rows["transformers", "fp32"]["perplexity"] < 20  # the model really learned Python


def test_embedded_default_is_this_model_in_int8():
    import json

    manifest = json.loads((REPO / "edgeds/embedded_model/edgeds.json").read_text())
    assert manifest["quantization"]["weights"] == "int8"
    assert manifest["model"]["model_type"] == "qwen2"
    src_hash = manifest["source"]["files"]["model.safetensors"]
    from edgeds.artifact import sha256_file

    assert sha256_file(CHECKPOINT / "model.safetensors") == src_hash
