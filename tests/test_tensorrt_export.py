"""`--target tensorrt` exports: every node parses for TensorRT 10.3 and the newest 10.x (static
check against the reference op tables), and the graphs are right on ONNX Runtime's CPU provider
(logits against transformers; the same greedy choices as the plain int8 export). TensorRT itself
is not installed here: no engine is built in these tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from conftest import CONTEXT
from edgeds.cli.main import app
from edgeds.tensorrt_check import OPS_FILE, check_artifact, check_model, load_tables
from test_export_parity import assert_batch_matches_alone, backend_for, reference_logits
from tiny_models import load_reference

FAMILIES = ["qwen2", "llama", "deepseek_v2", "deepseek_v3"]
# The project's reference tables, beside the repository (in CI too).
REFERENCE = (
    Path(__file__).resolve().parents[1].parent / "shared/reference/tensorrt/onnx-parser-ops.json"
)


@pytest.fixture(scope="module")
def reference_tables():
    if not REFERENCE.exists():
        pytest.skip(f"{REFERENCE} is absent (the project's shared reference folder)")
    return REFERENCE


@pytest.mark.parametrize("kind", FAMILIES)
def test_every_node_of_a_tensorrt_export_parses_in_both_releases(
    kind, trt_artifacts, reference_tables
):
    art = trt_artifacts(kind)
    report = check_artifact(art, reference_tables)
    assert report["ok"], "\n".join(p for v in report["versions"].values() for p in v["problems"])
    assert report["nodes"] > 50
    model = onnx.load(str(art / "model.onnx"), load_external_data=False)
    ops = [n.op_type for n in model.graph.node]
    assert {n.domain for n in model.graph.node} <= {""}
    assert "DequantizeLinear" in ops and "Softmax" in ops and "MatMulInteger" not in ops
    assert "ScatterND" not in ops
    if kind.startswith("deepseek"):  # the MoE combine
        assert any(
            n.op_type == "ScatterElements" and any(a.s == b"add" for a in n.attribute)
            for n in model.graph.node
        )


def test_the_check_rejects_the_onnxruntime_export(artifacts, reference_tables):
    report = check_artifact(artifacts("qwen2", "int8"), reference_tables)
    assert not report["ok"]
    found = "\n".join(report["versions"]["10.3"]["problems"])
    for expected in (
        "MatMulIntegerToFloat",
        "GroupQueryAttention",
        "SimplifiedLayerNormalization",
        "opset 21",
    ):
        assert expected in found


def _one_node_model(node, inputs, initializers, opset=20):
    graph = helper.make_graph(
        [node],
        "g",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _reasons(model, tables, version="10.3"):
    return [p.reason for p in check_model(model, tables, versions=(version,))]


def test_the_check_finds_each_restriction(reference_tables):
    tables = load_tables(reference_tables)
    f = helper.make_tensor_value_info
    x = f("x", TensorProto.FLOAT, [2, 3])
    rows = f("rows", TensorProto.INT64, [2, 1])
    scatter = helper.make_node("ScatterND", ["x", "rows", "x"], ["y"], reduction="add")
    assert any("reduction" in r for r in _reasons(_one_node_model(scatter, [x, rows], []), tables))
    assert any(
        "reduction" in r
        for r in _reasons(_one_node_model(scatter, [x, rows], []), tables, "10.x-newest")
    )
    axes = f("axes", TensorProto.INT64, [1])
    unsqueeze = helper.make_node("Unsqueeze", ["x", "axes"], ["y"])
    assert any("constant" in r for r in _reasons(_one_node_model(unsqueeze, [x, axes], []), tables))
    w = onnx.numpy_helper.from_array(np.ones((2, 3), np.int8), "w")
    gather = helper.make_node("Gather", ["w", "rows"], ["y"])
    assert any("INT8" in r for r in _reasons(_one_node_model(gather, [rows], [w]), tables))
    scale = onnx.numpy_helper.from_array(np.ones(3, np.float32), "s")
    zp = onnx.numpy_helper.from_array(np.full(3, 128, np.uint8), "zp")
    wq = onnx.numpy_helper.from_array(np.ones((2, 3), np.uint8), "w")
    dq = helper.make_node("DequantizeLinear", ["w", "s", "zp"], ["y"], axis=1)
    assert any(
        "UINT8" in r or "zero" in r
        for r in _reasons(_one_node_model(dq, [], [wq, scale, zp]), tables)
    )
    zero = onnx.numpy_helper.from_array(np.zeros(3, np.int8), "zp")
    good = helper.make_node("DequantizeLinear", ["w", "s", "zp"], ["y"], axis=1)
    assert _reasons(_one_node_model(good, [], [w, scale, zero]), tables) == []
    contrib = helper.make_node("MatMulNBits", ["x"], ["y"], domain="com.microsoft")
    assert any("com.microsoft" in r for r in _reasons(_one_node_model(contrib, [x], []), tables))


def test_the_shipped_tables_are_the_reference_file(reference_tables):
    assert json.loads(OPS_FILE.read_text()) == json.loads(reference_tables.read_text())


@pytest.mark.parametrize("kind", FAMILIES)
def test_fp32_tensorrt_graph_logits_match_transformers(kind, checkpoints, trt_artifacts):
    model = load_reference(checkpoints(kind))
    prompt = np.random.default_rng(1).integers(2, 320, 16).astype(np.int64)
    ref_prefill, ref_decode, tokens = reference_logits(model, prompt, 12)
    backend = backend_for(trt_artifacts(kind, "fp32"), "onnx")
    backend.start(1, 64)
    assert np.abs(backend.prefill([0], [prompt], every_position=True)[0] - ref_prefill).max() < 1e-4
    for step, expected in enumerate(ref_decode):
        got = backend.decode(np.array([tokens[step]]))[0]
        assert np.abs(got - expected).max() < 1e-4, f"decode step {step}"


def _greedy(backend, prompt, steps):
    backend.start(1, 64)
    logits = [backend.prefill([0], [prompt])[0]]
    for _ in range(steps):
        logits.append(
            backend.decode(np.array([int(logits[-1].argmax())]))[0].copy()
        )  # a reused buffer
    return [int(x.argmax()) for x in logits]


@pytest.mark.parametrize("kind", FAMILIES)
def test_int8_tensorrt_graph_picks_the_plain_int8_exports_tokens(
    kind, artifacts, trt_artifacts, capsys
):
    """Fed the plain int8 export's greedy tokens, the TensorRT graph (weight-only int8, float
    activations) picks the same next token, or one within a near-tie, at >= 90% of positions."""
    prompt = np.random.default_rng(4).integers(2, 320, 12).astype(np.int64)
    plain = _greedy(backend_for(artifacts(kind, "int8"), "onnx"), prompt, 40)
    trt = backend_for(trt_artifacts(kind), "onnx")
    trt.start(1, 64)
    logits = [trt.prefill([0], [prompt])[0]]
    for token in plain[:-1]:
        logits.append(trt.decode(np.array([token]))[0].copy())
    agree = same = 0
    for got, expected in zip(logits, plain):
        near_tie = got.max() - got[expected] <= 0.01 * (got.max() - got.min())
        same += int(got.argmax()) == expected
        agree += int(got.argmax()) == expected or near_tie
    with capsys.disabled():
        print(
            f"\n{kind}: tensorrt int8 picks the plain int8 token at {same}/{len(plain)}, "
            f"{agree}/{len(plain)} with near-ties"
        )
    assert agree >= 0.9 * len(plain), f"{agree} of {len(plain)}"


@pytest.mark.parametrize("kind", ["qwen2", "deepseek_v3"])
def test_a_batch_of_prompts_decodes_as_each_alone(kind, trt_artifacts):
    assert_batch_matches_alone(trt_artifacts(kind, "fp32"))


def test_the_cache_goes_where_the_graphs_attention_runs(trt_artifacts, monkeypatch):
    """A provider with device memory keeps a tensorrt graph's float32 cache there (its attention
    is MatMul/Softmax, which GPU providers run at any dtype; bound once on the host, the device
    would attend over a stale copy), and decodes as from numpy buffers. The CPU provider stands
    in for a device here, with its own memory as the device's."""
    from edgeds.artifact import load_artifact
    from edgeds.backends.onnxruntime import DEVICE_MEMORY, OnnxRuntimeBackend

    monkeypatch.setitem(DEVICE_MEMORY, "CPUExecutionProvider", "cpu")
    art = load_artifact(trt_artifacts("qwen2", "fp32"))
    assert "device memory" in OnnxRuntimeBackend.no_prefix_cache_for(art, ["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    prompts = [rng.integers(2, 320, n).astype(np.int64) for n in (13, 5)]
    steps = rng.integers(2, 320, (6, 2))
    logits = {}
    for on_device in (None, False):
        backend = OnnxRuntimeBackend(art, ["CPUExecutionProvider"], cache_on_device=on_device)
        assert backend.cache.memory == (("cpu", 0) if on_device is None else None)
        backend.start(2, 32)
        got = [backend.prefill([0, 1], prompts).copy()]
        got += [backend.decode(tokens).copy() for tokens in steps]
        logits[on_device] = np.stack(got)
    np.testing.assert_array_equal(logits[None], logits[False])


def test_the_manifest_carries_profiles_from_the_batch_and_context(trt_artifacts):
    manifest = json.loads((trt_artifacts("qwen2") / "edgeds.json").read_text())
    trt = manifest["graphs"]["onnx"]["tensorrt"]
    assert trt["target"] == "tensorrt" and "parts" not in manifest["graphs"]["onnx"]
    prefill, decode = trt["profiles"]["prefill"], trt["profiles"]["decode"]
    assert prefill["max"]["input_ids"] == [8, CONTEXT] and prefill["min"]["input_ids"] == [1, 1]
    assert decode["opt"]["input_ids"] == [8, 1] and decode["max"]["input_ids"] == [8, 1]
    assert decode["max"]["past_key.0"][2] == CONTEXT
    assert "total_sequence_length" not in decode["max"]  # a scalar: nothing to profile


def test_doctor_tensorrt_passes_a_tensorrt_export_and_fails_a_plain_one(trt_artifacts, artifacts):
    runner = CliRunner()
    ok = runner.invoke(app, ["doctor", str(trt_artifacts("qwen2")), "--tensorrt"])
    assert ok.exit_code == 0 and "every node parses" in ok.output
    bad = runner.invoke(app, ["doctor", str(artifacts("qwen2", "int8")), "--tensorrt"])
    assert bad.exit_code == 1 and "com.microsoft" in bad.output


def test_tensorrt_target_refuses_options_it_cannot_honour(checkpoints, tmp_path):
    from edgeds_export import export_checkpoint
    from edgeds_export.errors import ExportError

    for kwargs in (
        {"weights": "int4"},
        {"kv_cache": "float16"},
        {"small_batch_graph": True},
        {"formats": ("openvino",)},
        {"max_batch": 0},
    ):
        with pytest.raises(ExportError):
            export_checkpoint(
                checkpoints("qwen2"),
                tmp_path / "out",
                **{"formats": ("onnx",), **kwargs},
                target="tensorrt",
            )
    assert not (tmp_path / "out").exists()
