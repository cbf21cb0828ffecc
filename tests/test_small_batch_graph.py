"""`export --small-batch-graph`: the int8 weights repacked for MatMulNBits in a second graph,
which the runtime decodes small batches with, bound to the main graph's KV cache."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from test_export_parity import errors_against_reference
from tiny_models import load_reference

import edgeds
from edgeds.artifact import load_artifact
from edgeds.backends.onnxruntime import OnnxRuntimeBackend
from edgeds.errors import ArtifactError
from edgeds.memory_budget import weight_bytes
from edgeds_export import export_checkpoint
from edgeds_export.errors import ExportError

CONTEXT = 128
CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def small_artifact(checkpoints, tmp_path_factory):
    """kind -> an int8 ONNX artifact with the small-batch graph, exported once per module."""
    root, cache = tmp_path_factory.mktemp("small-batch"), {}

    def get(kind: str, kv_cache: str = "float32"):
        if (kind, kv_cache) not in cache:
            out = root / f"{kind}-{kv_cache}"
            export_checkpoint(checkpoints(kind), out, formats=("onnx",), weights="int8",
                              context=CONTEXT, kv_cache=kv_cache, small_batch_graph=True)
            cache[kind, kv_cache] = out
        return cache[kind, kv_cache]

    return get


@pytest.mark.parametrize("kind,kv_cache",
                         [("qwen2", "float32"), ("llama", "float32"), ("qwen2", "float16"),
                          ("deepseek_v2", "float32"), ("deepseek_v3", "float32")])
def test_small_batch_decode_follows_transformers(kind, kv_cache, checkpoints, small_artifact):
    """Prefill on the main graph, then 24 cached decode steps on the small-batch graph, each
    against the reference, as close as the main graph's own steps."""
    art = load_artifact(small_artifact(kind, kv_cache))
    model = load_reference(checkpoints(kind))
    small = OnnxRuntimeBackend(art, CPU, 2, small_batch_max=4)
    main = OnnxRuntimeBackend(art, CPU, 2)
    errors, agree = errors_against_reference(model, small, 24)
    main_errors, _ = errors_against_reference(model, main, 24)
    assert small.decode_graph is small.small and main.small is None
    assert max(errors) < 0.08  # the int8 bound of test_quantized_logit_error_is_bounded
    assert max(errors[1:]) < 2 * max(main_errors[1:]) + 1e-3
    # the steps really ran another graph (activations rounded per block)
    assert errors[1:] != main_errors[1:]
    assert np.mean(agree) >= 0.9


def test_small_batch_graph_holds_the_main_weights_repacked(small_artifact):
    """Every MatMulNBits of the small graph dequantizes to exactly its main-graph twin."""
    art = load_artifact(small_artifact("qwen2"))
    main = onnx.load(str(art.path("model.onnx")), load_external_data=False)
    small = onnx.load(str(art.path("decode_small.onnx")), load_external_data=False)
    w_main = {t.name: numpy_helper.to_array(t, str(art.root)) for t in main.graph.initializer}
    w_small = {t.name: numpy_helper.to_array(t, str(art.root)) for t in small.graph.initializer}
    nbits = [n for n in small.graph.node if n.op_type == "MatMulNBits"]
    integer = [n for n in main.graph.node if n.op_type == "MatMulIntegerToFloat"]
    assert len(nbits) == len(integer) == 2 * 5 + 1
    assert not [n for n in small.graph.node
                if n.op_type in ("MatMulIntegerToFloat", "QuantizeLinear")]
    for nb, mm in zip(nbits, integer):
        packed, scales = w_small[nb.input[1]], w_small[nb.input[2]]
        n, blocks, size = packed.shape
        from_small = ((packed.astype(np.float32) - 128)
                      * scales[:, :, None]).reshape(n, blocks * size)
        # (K, N) int8 x (N,) scales
        from_main = (w_main[mm.input[1]].astype(np.float32) * w_main[mm.input[3]]).T
        np.testing.assert_array_equal(from_small, from_main)
    # Everything that is not a linear layer is read from the main weight file, not copied.
    shared = [t for t in small.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
              and t.name not in {x for nb in nbits for x in nb.input[1:3]}]
    assert shared and all(e.value == "model.onnx.data" for t in shared for e in t.external_data
                          if e.key == "location")


def test_every_integer_matmul_of_an_moe_graph_is_repacked(small_artifact):
    """MLA/MoE: attention projections, every expert, the shared experts and the LM head."""
    art = load_artifact(small_artifact("deepseek_v2"))
    main = onnx.load(str(art.path("model.onnx")), load_external_data=False).graph
    small = onnx.load(str(art.path("decode_small.onnx")), load_external_data=False).graph
    integer = sum(n.op_type == "MatMulIntegerToFloat" for n in main.node)
    assert integer > 2 * 5 + 1  # experts' matmuls besides attention and the LM head
    assert sum(n.op_type == "MatMulNBits" for n in small.node) == integer
    assert not any(n.op_type == "MatMulIntegerToFloat" for n in small.node)


def test_batches_above_the_limit_decode_on_the_main_graph(small_artifact):
    """...and the small-batch graph loads only when a batch small enough for it starts."""
    art = load_artifact(small_artifact("qwen2"))
    backend = OnnxRuntimeBackend(art, CPU, 2, small_batch_max=2)
    prompts = [np.arange(3, 3 + n) for n in (5, 9, 7)]
    backend.start(3, 32)
    backend.prefill([0, 1, 2], prompts)
    assert backend.decode_graph is backend.main and backend.small is None
    assert len(backend.sessions) == len(backend.main.sessions)
    three = backend.decode(np.array([4, 4, 4]))
    backend.start(2, 32)
    backend.prefill([0, 1], prompts[:2])
    assert backend.decode_graph is backend.small is not None
    assert len(backend.sessions) == len(backend.main.sessions) + len(backend.small.sessions)
    two = backend.decode(np.array([4, 4]))
    # The two graphs round activations differently; their logits stay within int8 error.
    np.testing.assert_allclose(two, three[:2], atol=0.05 * np.abs(three).max())
    # A larger batch again: the small graph's sessions are released before its cache comes...
    import weakref

    gone = weakref.ref(backend.small.sessions[0])
    backend.start(3, 32)
    assert backend.small is None and gone() is None and backend.decode_graph is backend.main
    backend.prefill([0, 1, 2], prompts)
    np.testing.assert_array_equal(backend.decode(np.array([4, 4, 4])), three)
    # ...and loaded again by the next small batch.
    backend.start(1, 32)
    assert backend.decode_graph is backend.small is not None


def test_profile_decides_whether_it_loads(small_artifact, monkeypatch):
    path = small_artifact("qwen2")
    engine = edgeds.load(path, backend="onnxruntime", profile="cpu-avx512")
    loaded = engine.profile.onnxruntime.small_batch_max
    assert loaded and engine.backend.small_batch_max == loaded
    assert (f"small-batch graph: decode steps of <= {loaded} sequences run it (loaded when the "
            "first such "
            "batch starts)") in engine.reasons
    engine.generate(["def f(x):"], max_new_tokens=2)
    assert engine.backend.small is not None
    engine = edgeds.load(path, backend="onnxruntime", profile="jetson-orin-nano")
    engine.generate(["def f(x):"], max_new_tokens=2)
    assert engine.backend.small is None
    moe = edgeds.load(small_artifact("deepseek_v2"), backend="onnxruntime", profile="cpu-avx512")
    assert moe.backend.small_batch_max == moe.profile.onnxruntime.small_batch_max_moe > loaded
    # The engine's memory budget counts the second graph's weights where it is loaded.
    manifest = engine.artifact.manifest
    assert weight_bytes(manifest, "onnx", small_batch=True) > 1.5 * weight_bytes(manifest, "onnx")


def test_tampered_small_batch_weights_are_refused(small_artifact, tmp_path):
    import shutil

    copy = tmp_path / "art"
    shutil.copytree(small_artifact("qwen2"), copy)
    data = copy / "decode_small.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="decode_small.onnx.data"):
        edgeds.load(copy, backend="onnxruntime", profile="cpu-avx512")
    # A profile that does not load it (a Jetson's) neither reads nor hashes it.
    engine = edgeds.load(copy, backend="onnxruntime", profile="jetson-orin-nano")
    engine.generate(["def f(x):"], max_new_tokens=2)
    assert engine.backend.small is None


def test_export_verify_checks_the_small_batch_graph_too(checkpoints, tmp_path):
    manifest = export_checkpoint(checkpoints("llama"), tmp_path / "out", formats=("onnx",),
                                 context=CONTEXT, small_batch_graph=True, verify=True)
    checked = manifest["verification"]["formats"]
    # native: where this CPU runs it
    assert set(checked) - {"onnx native"} == {"onnx", "onnx small-batch"}
    assert checked["onnx small-batch"]["relative_error"] != checked["onnx"]["relative_error"]


@pytest.mark.parametrize("kwargs,kind", [
    ({"weights": "int8-wo"}, "qwen2"),
    ({"weights": "int8", "kv_cache": "int8"}, "qwen2"),
    ({"weights": "int8", "formats": ("openvino",)}, "qwen2"),
])
def test_refused_where_it_does_not_apply(kwargs, kind, checkpoints, tmp_path):
    with pytest.raises(ExportError, match="--small-batch-graph"):
        export_checkpoint(checkpoints(kind), tmp_path / "out", context=CONTEXT,
                          small_batch_graph=True, **kwargs)


def test_refilled_slots_decode_on_the_small_graph_as_alone(small_artifact):
    """Five prompts through two slots: finished slots take the next prompt (a prefill on the main
    graph into the small graph's cache rows) and each prompt gets what it gets alone."""
    from edgeds import generate as gen
    from edgeds.sampling import SamplingParams

    def run(prompts, lengths, batch_size):
        reqs = [gen.Request(i, p, SamplingParams(max_new_tokens=n, ignore_eos=True))
                for i, (p, n) in enumerate(zip(prompts, lengths))]
        done = {e.key: e.token_ids for e in engine.run(reqs, batch_size)
                if isinstance(e, gen.Finished)}
        return [done[i] for i in range(len(prompts))]

    engine = edgeds.load(small_artifact("qwen2"), backend="onnxruntime", profile="cpu-avx512")
    rng = np.random.default_rng(4)
    prompts = [rng.integers(2, 320, n).astype(np.int64) for n in (5, 17, 9, 30, 12)]
    lengths = [3, 11, 6, 9, 4]  # slots free at different steps: refills come mid-decode
    together = run(prompts, lengths, 2)
    assert engine.backend.decode_graph is engine.backend.small
    assert together == [run([p], [n], 1)[0] for p, n in zip(prompts, lengths)]


def test_a_small_batch_graph_that_does_not_load_leaves_the_job_on_the_main_graph(
        small_artifact, tmp_path, caplog):
    """It only speeds decoding up: an onnxruntime that cannot create it (simulated by an
    unreadable graph, checksums off) must not stop a job, and the job says why."""
    import shutil

    copy = tmp_path / "art"
    shutil.copytree(small_artifact("qwen2"), copy)
    for part in copy.glob("decode_small*.onnx"):
        part.write_bytes(b"not an onnx graph")
    engine = edgeds.load(copy, backend="onnxruntime", profile="cpu-avx512", verify=False)
    with caplog.at_level("WARNING", logger="edgeds"):
        [done] = engine.generate(["def add(a, b):"], max_new_tokens=4)
    assert done.token_ids and engine.backend.decode_graph is engine.backend.main
    assert engine.backend.small is None and engine.backend.small_batch_max == 0
    assert engine.backend.small_batch_error.startswith("small-batch graph: not loaded")
    assert engine.backend.small_batch_error in caplog.text
    engine.generate(["def add(a, b):"], max_new_tokens=2)  # not tried again
    assert caplog.text.count("not loaded") == 1
