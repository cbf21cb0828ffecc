"""The quality gate on the shipped reference model: a change that hurts quantization fails CI.

A short held-out slice (standard library files the model never saw) scored by transformers fp32
and by fresh fp32 and INT8 exports in both formats.
"""

from __future__ import annotations

import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
CHECKPOINT = REPO / "benchmarks/reference_models/r1-distill-tiny-python"


@pytest.fixture(scope="module")
def rows():
    from quality import evaluate

    return {(r["graph"], r["weights"]): r for r in evaluate(CHECKPOINT, ("fp32", "int8"), windows=6, seq=128)}


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
    assert r["top1_agreement_pct"] >= 98.0, r
    assert rows["transformers", "fp32"]["perplexity"] < 20  # the model really learned Python


def test_embedded_default_is_this_model_in_int8():
    import json

    manifest = json.loads((REPO / "edgeds/embedded_model/edgeds.json").read_text())
    assert manifest["quantization"]["weights"] == "int8"
    assert manifest["model"]["model_type"] == "qwen2"
    src_hash = manifest["source"]["files"]["model.safetensors"]
    from edgeds.artifact import sha256_file

    assert sha256_file(CHECKPOINT / "model.safetensors") == src_hash
