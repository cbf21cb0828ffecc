"""`--kv-cache float16`: attention and its cache in float16, the graph GPU providers run whole.

Checked against the transformers reference like every graph (prefill and cached decode logits,
greedy tokens), through the batched generate loop, and for the cache kept in OrtValues (how it
lives in device memory on CUDA and TensorRT), here with host OrtValues on the CPU provider.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgeds.artifact import load_artifact
from edgeds.backends.onnxruntime import OnnxRuntimeBackend
from edgeds_export import export_checkpoint
from edgeds_export.errors import ExportError
from test_export_parity import assert_batch_matches_alone, backend_for, errors_against_reference
from tiny_models import load_reference


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_float16_cache_logits_follow_transformers(kind, checkpoints, artifacts):
    backend = backend_for(artifacts(kind, "fp32", "float16"), "onnx")
    errors, agree = errors_against_reference(load_reference(checkpoints(kind)), backend, 24)
    assert backend.cache.keys[0].dtype == np.float16 and backend.cache.values[0].dtype == np.float16
    # float16 keeps 11 significant bits: measured 6.8e-4 relative at most (qwen2, --verify).
    assert max(errors) < 5e-3
    assert min(errors) > 0  # the cache did round: this is not the float32 graph
    assert all(agree)


def test_float16_graph_casts_only_around_attention(artifacts):
    path = artifacts("qwen2", "int8-wo", "float16")
    model = onnx.load(str(path / "model.onnx"), load_external_data=False)
    half = onnx.TensorProto.FLOAT16
    inputs = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    assert inputs["past_key.0"] == half and inputs["past_value.1"] == half
    to_half = [n.name for n in model.graph.node if n.op_type == "Cast" and n.attribute[0].i == half]
    to_float = [n.name for n in model.graph.node if n.op_type == "Cast"
                and n.attribute[0].i == onnx.TensorProto.FLOAT]
    layers = len([n for n in model.graph.node if n.op_type == "GroupQueryAttention"])
    # Into each attention, plus cos and sin once; out of each attention (and the int8
    # embedding's dequantization, as in every int8-wo graph): the projections stay float32.
    assert len(to_half) == layers + 2 and all("/attn/" in n or "/rope/" in n for n in to_half)
    assert len([n for n in to_float if "/attn/" in n]) == layers and len(to_float) == layers + 1
    assert {n.op_type for n in model.graph.node} >= {"MatMulNBits", "GroupQueryAttention"}
    assert load_artifact(path).graph("onnx").kv_cache.dtype == "float16"


def test_float16_cache_batch_matches_alone_and_halves_the_memory(artifacts):
    path = artifacts("llama", "int8-wo", "float16")
    assert_batch_matches_alone(path)
    floats = load_artifact(artifacts("llama", "int8-wo")).manifest
    halved = load_artifact(path).manifest.kv_layout("onnx").bytes_per_token
    assert halved * 2 == floats.kv_layout("onnx").bytes_per_token


@pytest.mark.parametrize("kv_cache", ["float32", "float16"])
def test_cache_in_ortvalues_gives_the_numpy_cache_logits(kv_cache, artifacts):
    """Prefill, decode, a grow of the capacity, and a slot refilled: the cache bound by address
    in OrtValues (rows found by offset) computes exactly what numpy views of it compute."""
    art = load_artifact(artifacts("qwen2", "int8-wo", kv_cache))
    rng = np.random.default_rng(5)
    prompts = [rng.integers(2, 320, n).astype(np.int64) for n in (5, 17, 30)]
    tokens = np.array([7, 8, 9])
    runs = {}
    for on_device in (False, True):
        backend = OnnxRuntimeBackend(art, ["CPUExecutionProvider"], 2, cache_on_device=on_device)
        backend.start(3, 40)
        logits = [backend.prefill([0, 1, 2], prompts)]
        logits += [backend.decode(tokens).copy() for _ in range(4)]
        backend.grow(80)
        logits += [backend.decode(tokens).copy() for _ in range(4)]
        backend.release(1)
        logits += [backend.prefill([1], [prompts[0]]), backend.decode(tokens).copy()]
        runs[on_device] = logits
        assert isinstance(backend.cache.keys[0], np.ndarray) != on_device
    for numpy_cache, ortvalue_cache in zip(runs[False], runs[True]):
        np.testing.assert_array_equal(numpy_cache, ortvalue_cache)


def test_cache_on_device_is_refused_for_int8_cache_graphs(artifacts):
    art = load_artifact(artifacts("qwen2", "fp32", "int8"))
    with pytest.raises(ValueError, match="numpy buffers"):
        OnnxRuntimeBackend(art, ["CPUExecutionProvider"], cache_on_device=True)


def test_float16_cache_is_refused_for_mla(checkpoints, tmp_path):
    """MLA's latent stays float32: float16 decoded 2.5-3.3x slower at 8k context on the 2-core
    EPYC, and CUDA's attention refuses its 576-wide heads (benchmarks/results/cuda-h200.md)."""
    with pytest.raises(ExportError, match="MLA"):
        export_checkpoint(checkpoints("deepseek_v3"), tmp_path / "a", formats=("onnx",),
                          kv_cache="float16")
    assert not (tmp_path / "a").exists()


def test_cache_goes_to_device_memory_only_where_attention_runs(artifacts, monkeypatch):
    """With a provider that has device memory, a float16 graph (attention on the device) keeps
    its cache there; a float32 one runs attention on the CPU, so its cache stays on the host
    (on an H200 a device cache there fell to 44 tok/s at batch 64 from 1617). The CPU provider
    stands in for a device here, with its own memory as the device's."""
    from edgeds.backends import onnxruntime as ort_backend

    monkeypatch.setitem(ort_backend.DEVICE_MEMORY, "CPUExecutionProvider", "cpu")
    half = OnnxRuntimeBackend(load_artifact(artifacts("qwen2", "int8-wo", "float16")),
                              ["CPUExecutionProvider"])
    floats = OnnxRuntimeBackend(load_artifact(artifacts("qwen2", "int8-wo")),
                                ["CPUExecutionProvider"])
    assert half.cache.memory == ("cpu", 0) and floats.cache.memory is None
    monkeypatch.delitem(ort_backend.DEVICE_MEMORY, "CPUExecutionProvider")
    assert OnnxRuntimeBackend(load_artifact(artifacts("qwen2", "int8-wo", "float16")),
                              ["CPUExecutionProvider"]).cache.memory is None
