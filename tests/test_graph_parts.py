"""ONNX graph parts (export/graph/parts.py): the CPU runtime loads them on parallel threads.

Every parity test against transformers already runs through them (the tiny models' graphs are
split by default); these tests check that the parts compute exactly what the whole graph does,
hold each layer once, and are refused when they do not chain.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import CONTEXT
from edgeds_export import export_checkpoint
from edgeds_export.errors import ExportError
from edgeds_export.graph.parts import cut_layers

from edgeds.artifact import load_artifact
from edgeds.backends.onnxruntime import OnnxRuntimeBackend, loads_in_parts
from edgeds.errors import ArtifactError
from edgeds.manifest import seal


def _steps(backend: OnnxRuntimeBackend) -> list[np.ndarray]:
    """Prefill of three prompts in one call, decode steps, a slot refilled, more decode steps."""
    rng = np.random.default_rng(7)
    prompts = [rng.integers(2, 320, n).astype(np.int64) for n in (4, 11, 23)]
    tokens = np.array([5, 6, 7])
    backend.start(3, 48)
    out = [backend.prefill([0, 1, 2], prompts)]
    out += [backend.decode(tokens).copy() for _ in range(5)]
    backend.release(2)
    out += [backend.prefill([2], [prompts[0]]), backend.decode(tokens).copy()]
    return out


@pytest.mark.parametrize("kind,weights,kv_cache",
                         [("qwen2", "int8", "float32"), ("llama", "fp32", "float16"),
                          ("qwen2", "fp32", "int8"), ("deepseek_v3", "int8", "float32")])
def test_parts_compute_what_the_whole_graph_computes(kind, weights, kv_cache, checkpoints,
                                                     artifacts, tmp_path):
    parts = load_artifact(artifacts(kind, weights, kv_cache))
    whole = tmp_path / "whole"
    export_checkpoint(checkpoints(kind), whole, formats=("onnx",), weights=weights, context=CONTEXT,
                      kv_cache=kv_cache, load_parts=1)
    split = OnnxRuntimeBackend(parts, ["CPUExecutionProvider"], 2)
    one = OnnxRuntimeBackend(load_artifact(whole), ["CPUExecutionProvider"], 2)
    assert len(split.sessions) == min(4, parts.model.num_layers) and len(one.sessions) == 1
    for a, b in zip(_steps(split), _steps(one)):
        np.testing.assert_array_equal(a, b)


def test_parts_hold_each_layer_once_and_point_into_the_weight_file(artifacts):
    path = artifacts("deepseek_v3", "int8")
    graph = load_artifact(path).graph("onnx")
    whole = onnx.load(str(path / graph.file), load_external_data=False)
    parts = [onnx.load(str(path / p.file), load_external_data=False) for p in graph.parts]
    assert [p.first_layer for p in graph.parts] == [0, *cut_layers(3, 4)] == [0, 1, 2]
    seen: dict[str, int] = {}
    for part in parts:
        for t in part.graph.initializer:
            seen[t.name] = seen.get(t.name, 0) + 1
            if t.data_location == onnx.TensorProto.EXTERNAL:
                assert {e.key: e.value for e in t.external_data}["location"] == graph.data_file
    layer_weights = [n for n in seen if "layers." in n]
    assert layer_weights and all(seen[n] == 1 for n in layer_weights)
    assert set(seen) == {t.name for t in whole.graph.initializer}
    # The layers' nodes are in one part each; only small shared nodes are copied.
    layer_nodes = [n.name for part in parts for n in part.graph.node
                   if n.name.startswith("/model/layers.")]
    assert len(layer_nodes) == len(set(layer_nodes))
    assert sum(len(p.graph.node) for p in parts) < len(whole.graph.node) * 1.05
    files = load_artifact(path).manifest.files
    assert all(p.file in files and files[p.file].sha256 for p in graph.parts)


def test_parts_that_do_not_chain_are_refused(artifacts, tmp_path):
    path = tmp_path / "reordered"
    shutil.copytree(artifacts("qwen2", "int8"), path)
    manifest = json.loads((path / "edgeds.json").read_text())
    manifest["graphs"]["onnx"]["parts"].reverse()
    manifest["graphs"]["onnx"]["parts"][0]["first_layer"] = 0  # increasing, as the manifest checks
    for part, first in zip(manifest["graphs"]["onnx"]["parts"][1:], range(1, 99)):
        part["first_layer"] = first
    (path / "edgeds.json").write_text(json.dumps(seal(manifest)))
    with pytest.raises(ArtifactError, match="do not chain"):
        OnnxRuntimeBackend(load_artifact(path), ["CPUExecutionProvider"])
    # the first part alone
    manifest["graphs"]["onnx"]["parts"] = manifest["graphs"]["onnx"]["parts"][-1:]
    manifest["graphs"]["onnx"]["parts"][0]["first_layer"] = 0
    (path / "edgeds.json").write_text(json.dumps(seal(manifest)))
    with pytest.raises(ArtifactError, match="does not produce the logits"):
        OnnxRuntimeBackend(load_artifact(path), ["CPUExecutionProvider"])


def test_a_tampered_part_is_refused(artifacts, tmp_path):
    import edgeds

    path = tmp_path / "tampered"
    shutil.copytree(artifacts("qwen2", "int8"), path)
    part = path / load_artifact(path).graph("onnx").parts[-1].file
    model = onnx.load(str(part), load_external_data=False)
    model.graph.node[-1].name += "x"  # same size on disk would be luck; any change must be caught
    onnx.save_model(model, str(part))
    with pytest.raises(ArtifactError, match="model.part1.onnx"):
        edgeds.load(path, backend="onnxruntime")


def test_parts_wait_for_an_onnxruntime_that_loads_them_in_parallel(artifacts, monkeypatch):
    import onnxruntime as ort

    import edgeds

    engine = edgeds.load(artifacts("qwen2", "int8"), backend="onnxruntime")
    assert len(engine.backend.sessions) == 2
    assert "graph: 2 parts, created in parallel" in engine.reasons
    graph = engine.artifact.graph("onnx")
    assert not loads_in_parts(graph, "CUDAExecutionProvider")  # GPU providers load the whole graph
    monkeypatch.setattr(ort, "__version__", "1.30.0")  # it held the GIL while creating a session
    engine = edgeds.load(artifacts("qwen2", "int8"), backend="onnxruntime")
    assert len(engine.backend.sessions) == 1
    assert any(r.startswith("graph: whole (its 2 parts") for r in engine.reasons)


def test_each_part_writes_its_own_profile(artifacts, tmp_path):
    """Parts are created at the same moment, and ORT names a profile by prefix and creation
    time (to the millisecond: the 1.5B's first two parts collided): each gets its own prefix."""
    backend = OnnxRuntimeBackend(load_artifact(artifacts("qwen2", "int8")),
                                 ["CPUExecutionProvider"], profile_prefix=str(tmp_path / "ort"))
    backend.start(1, 16)
    backend.prefill([0], [np.arange(2, 9)])
    files = [Path(s.end_profiling()) for s in backend.sessions]
    assert len({f.name.split("_")[0] for f in files}) == len(backend.sessions) == 2
    for f in files:
        assert any(e.get("cat") == "Node" for e in json.loads(f.read_text()))


def test_load_parts_option(checkpoints, tmp_path):
    export_checkpoint(checkpoints("qwen2"), tmp_path / "one", formats=("onnx",), context=CONTEXT,
                      load_parts=1)
    assert not load_artifact(tmp_path / "one").graph("onnx").parts
    assert not list((tmp_path / "one").glob("*.part*.onnx"))
    with pytest.raises(ExportError, match="--load-parts"):
        export_checkpoint(checkpoints("qwen2"), tmp_path / "none", formats=("onnx",), load_parts=0)


def test_cut_layers_are_even():
    assert cut_layers(28, 4) == [7, 14, 21]
    assert cut_layers(61, 4) == [15, 30, 46]
    assert cut_layers(2, 4) == [1]
    assert cut_layers(5, 1) == []
