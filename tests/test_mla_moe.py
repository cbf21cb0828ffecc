"""DeepSeek-V2/V3 specifics: the latent cache, quantized experts, --verify, what the manifest
says."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from edgeds.artifact import load_artifact
from edgeds.cli.main import app
from edgeds_export.verify import open_backends


@pytest.mark.parametrize("kind", ["deepseek_v2", "deepseek_v3"])
def test_cache_holds_the_latent_not_per_head_kv(kind, artifacts):
    art = load_artifact(artifacts(kind))
    m, a = art.model, art.model.attention
    latent = a.kv_lora_rank + a.qk_rope_head_dim
    written = json.loads((art.root / "edgeds.json").read_text())["graphs"]  # what the exporter says
    kv = written["onnx"]["kv_cache"]
    assert kv["kind"] == "mla_latent" and kv["values_per_token_per_layer"] == latent
    assert (kv["bytes_per_token"] == m.num_layers * latent * 4
            == art.manifest.kv_layout("onnx").bytes_per_token)
    per_head = 2 * m.num_heads * (a.qk_nope_head_dim + a.qk_rope_head_dim)
    assert latent < per_head
    backend = dict(open_backends(art.root))["onnx"]
    backend.start(2, 64)
    assert [c.shape for c in backend.cache.keys] == [(2, 1, 64, latent)] * m.num_layers
    assert backend.cache.values == []  # the latent is key and value at once
    assert written["openvino"]["kv_cache"]["values_per_token_per_layer"] == latent
    assert art.manifest.kv_layout("openvino") == art.manifest.kv_layout("onnx")


def test_manifest_says_what_is_left_out_and_how_routing_works(checkpoints, artifacts):
    art = load_artifact(artifacts("deepseek_v3"))
    e = art.model.experts
    assert e.routing == "sigmoid_noaux_tc" and e.n_group == 4 and e.topk_group == 2
    assert e.layers == (1, 2)
    cfg = json.loads((checkpoints("deepseek_v3") / "config.json").read_text())
    assert art.model.mtp_layers_left_out == cfg.get("num_nextn_predict_layers", 0)
    assert load_artifact(artifacts("deepseek_v2")).model.experts.routing == "softmax_greedy"


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_int8_experts_error_is_bounded(fmt, artifacts, capsys):
    prompt = np.random.default_rng(5).integers(2, 320, 16).astype(np.int64)
    ref = dict(open_backends(artifacts("deepseek_v3", "fp32")))[fmt]
    quant = dict(open_backends(artifacts("deepseek_v3", "int8")))[fmt]
    for b in (ref, quant):
        b.start(1, 64)
    r = ref.prefill([0], [prompt], every_position=True)[0]
    q = quant.prefill([0], [prompt], every_position=True)[0]
    per_position = np.abs(q - r).max(-1) / np.abs(r).max()
    with capsys.disabled():
        print(f"\ndeepseek_v3 int8 {fmt}: per position {np.round(per_position * 100, 1)}% of max "
              "|logit|, "
              f"top-1 {np.mean(q.argmax(-1) == r.argmax(-1)):.0%}")
    assert 0 < per_position.max()
    # Routing is discrete: quantization noise may send a token to another expert, so one
    # position may move far; the rest stay within the INT8 bound.
    assert np.sort(per_position)[-2] < 0.08


@pytest.mark.parametrize("kind", ["deepseek_v2", "deepseek_v3"])
def test_int8_decode_runs_experts_no_token_chose(kind, checkpoints, tmp_path):
    """A batch-1 decode step sends its one token to top-k of the experts: every other expert's
    int8 subgraph runs on zero rows (ONNX Runtime 1.30 refused its QuantizeLinear then). ONNX
    alone, so that it also runs where OpenVINO is not installed (the lent Xeon's ORT is 1.30)."""
    from edgeds_export import export_checkpoint

    steps = []
    for weights in ("fp32", "int8"):
        out = tmp_path / weights
        export_checkpoint(checkpoints(kind), out, formats=("onnx",), weights=weights, context=64)
        model = load_artifact(out).model
        assert model.experts.num_experts_per_tok < model.experts.n_routed_experts
        b = dict(open_backends(out))["onnx"]
        b.start(1, 64)
        b.prefill([0], [np.random.default_rng(11).integers(2, 320, 8).astype(np.int64)])
        steps.append(np.stack([b.decode(np.array([t], np.int64))[0] for t in (5, 77, 190)]))
    r, q = steps
    assert np.isfinite(q).all()
    assert (np.abs(q - r).max(-1) / np.abs(r).max() < 0.08).all()


def test_every_expert_is_int8(artifacts):
    art = load_artifact(artifacts("deepseek_v3", "int8"))
    g = onnx.load(str(art.path("model.onnx")), load_external_data=False).graph
    int8 = [n.name for n in g.node if n.op_type == "MatMulIntegerToFloat"]
    # 2 MoE layers x 8 experts x (gate, up, down)
    assert sum("/experts." in n for n in int8) == 2 * 8 * 3
    assert not [n for n in g.node if n.op_type == "MatMul" and "/experts." in n.name]


def test_verify_works_for_mla(checkpoints, tmp_path):
    r = CliRunner().invoke(app,
                           ["export", str(checkpoints("deepseek_v2")), "-o", str(tmp_path / "a"),
                            "--weights", "fp32", "--verify", "--context", "64"])
    assert r.exit_code == 0, r.output
    assert "verified" in r.output


@pytest.mark.parametrize("kind", ["deepseek_v2", "deepseek_v3"])
def test_tensor_index_locates_every_mla_tensor(kind, artifacts):
    """tensors.json (listed and checksummed in the manifest) points at the weight file's bytes:
    the router read through it is the float32 (hidden, experts) matrix the graph uses."""
    art = load_artifact(artifacts(kind, "int8"))
    graph = art.graph("onnx")
    assert graph.tensors in art.manifest.files
    index = json.loads(art.path(graph.tensors).read_text())
    m, a, e = art.model, art.model.attention, art.model.experts
    layers = index["layers"]
    assert len(layers) == m.num_layers
    assert tuple(i for i, ly in enumerate(layers) if ly["moe"]) == e.layers
    assert all((ly["q_a"] is None) == (a.q_lora_rank is None) for ly in layers)
    moe = layers[e.layers[0]]["moe"]
    assert len(moe["experts"]) == e.n_routed_experts
    assert moe["router"]["shape"] == [m.hidden_size, e.n_routed_experts]
    assert moe["experts"][0]["gate"]["weight"]["dtype"] == "int8"
    assert layers[0]["w_uk"]["weight"]["shape"] == [m.num_heads, a.qk_nope_head_dim, a.kv_lora_rank]
    data = art.path(graph.data_file).read_bytes()
    router = moe["router"]
    stored = np.frombuffer(data, np.float32, int(np.prod(router["shape"])), router["offset"])
    g = onnx.load(str(art.path("model.onnx")), load_external_data=False).graph
    name = f"/model/layers.{e.layers[0]}/mlp/gate.weight"
    init = next(t for t in g.initializer if t.name == name)
    offset = int(next(e.value for e in init.external_data if e.key == "offset"))
    assert offset == router["offset"]
    assert np.isfinite(stored).all() and stored.any()
