"""The baselines that benchmarks/design/mla_moe.py measures the MLA graph against compute the
same model: a per-head K/V cache and every expert on every token differ from it in cost only."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import CONTEXT

from benchmarks.design.mla_baselines import AllExperts, PerHeadCache, exported_with
from edgeds.artifact import load_artifact
from edgeds_export import export_checkpoint
from edgeds_export.verify import open_backends


def logits_of(art) -> np.ndarray:
    """Prefill and three cached decode steps at batch 1."""
    prompt = np.random.default_rng(9).integers(2, 320, 12).astype(np.int64)
    b = dict(open_backends(art))["onnx"]
    b.start(1, 32)
    rows = [b.prefill([0], [prompt])[0]]
    rows += [b.decode(np.array([t]))[0] for t in (5, 6, 7)]
    return np.stack(rows)


@pytest.mark.parametrize("graph", [PerHeadCache, AllExperts], ids=lambda g: g.__name__)
def test_baseline_matches_the_exported_graph(graph, checkpoints, artifacts, tmp_path):
    out = tmp_path / graph.__name__
    with exported_with(graph):
        export_checkpoint(checkpoints("deepseek_v3"), out, formats=("onnx",), weights="fp32",
                          context=CONTEXT)
    entry = load_artifact(out).graph("onnx")
    assert dict(entry.ops) | graph.ops == entry.ops  # the manifest says which baseline it holds
    if graph is PerHeadCache:
        assert entry.kv_cache.kind == "per_head" and entry.kv_cache.heads == 4
    np.testing.assert_allclose(logits_of(artifacts("deepseek_v3")), logits_of(out), atol=1e-4)


def test_the_exporter_is_itself_again_after_the_block(checkpoints, tmp_path):
    with exported_with(PerHeadCache):
        pass
    export_checkpoint(checkpoints("deepseek_v3"), tmp_path / "a", formats=("onnx",), weights="fp32",
                      context=CONTEXT)
    assert load_artifact(tmp_path / "a").graph("onnx").kv_cache.kind == "mla_latent"
