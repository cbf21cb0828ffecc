"""`--kv-cache int8`: the ONNX graph keeps K and V in int8 with calibrated per-channel scales.

Checked against the transformers reference like every graph (prefill and cached decode logits,
greedy tokens), against the float32-cache graph of the same weights (the int8 cache holds the
same keys and values, rounded), and through the batched generate loop.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgeds.artifact import load_artifact
from edgeds_export import export_checkpoint
from edgeds_export.errors import ExportError
from test_export_parity import assert_batch_matches_alone, backend_for, errors_against_reference
from tiny_models import load_reference


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_int8_cache_logits_follow_transformers(kind, checkpoints, artifacts):
    backend = backend_for(artifacts(kind, "fp32", "int8"), "onnx")
    errors, agree = errors_against_reference(load_reference(checkpoints(kind)), backend, 16)
    assert backend.cache.keys[0].dtype == np.int8 and backend.cache.values[0].dtype == np.int8
    # Measured: 4.4% (qwen2) and 1.1% (llama) at most; greedy 16/16 and 15/16.
    assert max(errors) < 0.08
    assert np.mean(agree) >= 0.85


def test_int8_cache_holds_the_float_cache_to_half_a_step(artifacts):
    prompt = np.random.default_rng(2).integers(2, 320, 24).astype(np.int64)
    caches = {}
    for kv in ("float32", "int8"):
        backend = backend_for(artifacts("qwen2", "fp32", kv), "onnx")
        backend.start(1, 32)
        backend.prefill([0], [prompt])
        backend.decode(np.array([5]))
        caches[kv] = (backend.cache.keys, backend.cache.values)
    graph = load_artifact(artifacts("qwen2", "fp32", "int8")).graph("onnx")
    assert graph.kv_cache.dtype == "int8"
    import onnx

    model = onnx.load(str(artifacts("qwen2", "fp32", "int8") / "model.onnx"),
                      load_external_data=False)
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer
              if t.name.endswith("_scale")}
    filled = len(prompt) + 1
    # Layer 0's keys and values depend on the tokens alone, so both graphs compute the same
    # ones; deeper layers see attention outputs that the int8 cache has already changed.
    for kind, idx in (("k", 0), ("v", 1)):
        exact = caches["float32"][idx][0][0, :, :filled]
        q = caches["int8"][idx][0][0, :, :filled].astype(np.float32)
        s = consts[f"/model/layers.0/attn/{kind}_scale"].reshape(q.shape[0], 1, q.shape[2])
        assert np.abs(q).max() > 64  # the scales use the int8 range, not a sliver of it
        inside = np.abs(exact) <= 127 * s  # values past the calibrated range saturate at -128/127
        assert inside.mean() > 0.99
        assert np.all(np.abs(q - np.clip(exact / s, -128, 127)) <= 0.5 + 1e-3)
    for layer in range(2):  # both caches hold values, int8 in the int8 graph
        assert caches["int8"][0][layer].dtype == np.int8
        assert np.abs(caches["int8"][1][layer][0, :, :filled]).max() > 0


def test_int8_cache_batch_matches_alone_and_quarters_the_memory(artifacts):
    path = artifacts("llama", "int8", "int8")
    assert_batch_matches_alone(path)
    art = load_artifact(path)
    floats = load_artifact(artifacts("llama", "int8")).manifest
    assert (art.manifest.kv_layout("onnx").bytes_per_token * 4
            == floats.kv_layout("onnx").bytes_per_token)


def test_int8_cache_is_refused_where_it_cannot_apply(checkpoints, tmp_path):
    with pytest.raises(ExportError, match="MLA"):
        export_checkpoint(checkpoints("deepseek_v3"), tmp_path / "a", formats=("onnx",),
                          kv_cache="int8")
    with pytest.raises(ExportError, match="ONNX graph"):
        export_checkpoint(checkpoints("qwen2"), tmp_path / "b", formats=("openvino",),
                          kv_cache="int8")
    with pytest.raises(ExportError, match="unknown kv cache"):
        export_checkpoint(checkpoints("qwen2"), tmp_path / "c", kv_cache="fp8")
    assert not any((tmp_path / name).exists() for name in "abc")


def test_int8_cache_on_an_older_onnxruntime_is_a_clear_error(artifacts, monkeypatch):
    import onnxruntime

    from edgeds.backends.onnxruntime import OnnxRuntimeBackend
    from edgeds.errors import ArtifactError

    art = load_artifact(artifacts("qwen2", "fp32", "int8"))
    monkeypatch.setattr(onnxruntime, "__version__", "1.29.1")
    with pytest.raises(ArtifactError, match="int8 KV cache needs onnxruntime >= 1.30"):
        OnnxRuntimeBackend(art, ["CPUExecutionProvider"])


def test_int8_cache_long_prompt_in_chunks_follows_transformers(checkpoints, artifacts, monkeypatch):
    """The first chunk takes the fresh-prompt path (float attention, keys and values stored by
    the runtime), the later ones attend over the int8 cache written before them."""
    import torch

    from edgeds.backends.onnxruntime import backend as ort_backend

    model = load_reference(checkpoints("qwen2"))
    prompt = np.random.default_rng(4).integers(2, 320, 30).astype(np.int64)
    with torch.no_grad():
        expected = model(torch.from_numpy(prompt[None])).logits[0, -1].numpy()
    backend = backend_for(artifacts("qwen2", "fp32", "int8"), "onnx")
    backend.start(1, 64)
    whole = backend.prefill([0], [prompt])[0].copy()
    monkeypatch.setattr(ort_backend, "PREFILL_ROWS", 8)
    backend.start(1, 64)
    chunked = backend.prefill([0], [prompt])[0]
    scale = np.abs(expected).max()
    assert np.abs(whole - expected).max() / scale < 0.08
    assert np.abs(chunked - expected).max() / scale < 0.08
    assert not np.array_equal(chunked, whole)  # the chunks did read the int8 cache
    assert int(chunked.argmax()) == int(expected.argmax())


def test_doctor_sizes_the_cache_by_its_type(artifacts):
    from edgeds.doctor import diagnose, format_report

    int8 = diagnose(str(artifacts("llama", "int8", "int8")), profile="cpu-avx2")
    floats = diagnose(str(artifacts("llama", "int8")), profile="cpu-avx2")
    assert int8["memory"]["kv_cache_dtype"] == "int8"
    assert floats["memory"]["kv_cache_dtype"] == "float32"
    # Tiny models round their cache to 0.1 MiB; the tokens that fit show the ratio exactly.
    assert int8["memory"]["max_tokens_in_cache"] == pytest.approx(
        4 * floats["memory"]["max_tokens_in_cache"], rel=1e-3)
    assert "int8 KV cache" in format_report(int8)
