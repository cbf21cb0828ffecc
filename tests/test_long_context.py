"""Long context: the context in force and where it comes from, over-long prompts failing alone,
truncation keeping the prompt's opening, the export's context checked against the model."""

from __future__ import annotations

import numpy as np
import pytest

import edgeds
from edgeds import generate as gen
from edgeds.context import choose_context, truncate_prompt
from edgeds.errors import ConfigError
from edgeds.sampling import SamplingParams


@pytest.fixture(scope="module")
def engine(artifacts):
    return edgeds.load(artifacts("qwen2", "int8"), backend="native", threads=1)


def test_the_profile_gives_a_default_the_caller_may_raise_to_the_artifacts():
    assert choose_context(None, "p", 4096, 8192).tokens == 4096
    assert "default" in choose_context(None, "p", 4096, 8192).source
    assert choose_context(None, "p", 4096, 2048).tokens == 2048
    assert "artifact's limit" in choose_context(None, "p", 4096, 2048).source
    assert choose_context(8192, "p", 4096, 8192).tokens == 8192
    with pytest.raises(ConfigError, match="exported for 2 to 8192"):
        choose_context(8193, "p", 4096, 8192)


def test_load_takes_a_context_up_to_the_artifacts(artifacts):
    art = artifacts("qwen2", "int8")
    small = edgeds.load(art, backend="native", threads=1, context=40)
    assert small.context == 40 and small.describe()["context_source"].startswith("--context")
    with pytest.raises(ConfigError, match="exported for 2 to 128"):
        edgeds.load(art, backend="native", threads=1, context=129)


def test_truncation_keeps_the_opening_and_the_end():
    ids = np.arange(1000)
    cut = truncate_prompt(ids, context=100, max_new_tokens=20)
    assert len(cut) == 80 and cut[0] == 0 and cut[-1] == 999
    assert list(cut[:20]) == list(range(20)) and list(cut[20:]) == list(range(940, 1000))
    assert len(truncate_prompt(ids[:50], 100, 20)) == 50


def test_an_over_long_prompt_fails_alone_and_the_context_ends_a_sequence(artifacts):
    engine = edgeds.load(artifacts("qwen2", "int8"), backend="native", threads=1, context=64)
    long = "import os " * 100
    short, over, near = engine.generate(["import os", long, "x = 1\n" * 2], max_new_tokens=200)
    assert over.finish_reason == "error" and "the context is 64" in over.error
    assert short.finish_reason == "context" and short.prompt_tokens + len(short.token_ids) == 64
    assert near.finish_reason == "context"
    # The same request alone gives the same tokens: the rejected one changed nothing.
    [alone] = engine.generate(["import os"], max_new_tokens=200)
    assert alone.token_ids == short.token_ids
    [cut] = engine.generate([long], max_new_tokens=8, truncate=True)
    assert cut.finish_reason == "length" and cut.prompt_tokens <= 56


def test_the_loop_rejects_a_request_and_runs_the_rest(engine):
    params = SamplingParams(max_new_tokens=4, ignore_eos=True)
    reqs = [gen.Request(k, np.full(n, 5, np.int64), params) for k, n in ((0, 10), (1, 128), (2, 7))]
    events = list(gen.run(engine.backend, reqs, 3, 128, set()))
    assert [(e.key, e.prompt_tokens) for e in events if isinstance(e, gen.Rejected)] == [(1, 128)]
    assert sorted(e.key for e in events if isinstance(e, gen.Finished)) == [0, 2]


def test_export_checks_the_context_against_the_model(checkpoints, tmp_path):
    from edgeds_export import export_checkpoint
    from edgeds_export.errors import ExportError

    with pytest.raises(ExportError, match="max_position_embeddings"):
        export_checkpoint(checkpoints("qwen2"), tmp_path / "a", formats=("onnx",), context=10**7)
    with pytest.raises(ExportError, match="a number of tokens or 'max'"):
        export_checkpoint(checkpoints("qwen2"), tmp_path / "b", formats=("onnx",), context="lots")


def test_the_block_cache_admits_what_fits_and_the_rest_waits(artifacts, monkeypatch):
    """A machine whose memory holds 200 cache tokens beside the weights: batch 8 of requests
    needing 60 each runs 3 at a time, with the results of an unbounded run."""
    import dataclasses

    from edgeds import engine as engine_module
    from edgeds.memory_budget import USABLE

    path = artifacts("qwen2", "int8")
    roomy = edgeds.load(path, backend="native", threads=1)
    per_token = roomy.artifact.manifest.kv_layout("onnx").bytes_per_token
    memory = int((roomy.weight_bytes + 200.5 * per_token) / USABLE)
    real = engine_module.detect()
    small_machine = dataclasses.replace(real, memory_bytes=memory)
    monkeypatch.setattr(engine_module, "detect", lambda: small_machine)
    small = edgeds.load(path, backend="native", threads=1)
    assert small.kv_tokens == 200 and small.context == 128 and small.batch_for(8) == 8
    assert any("admitted while" in r for r in small.reasons)
    params = SamplingParams(max_new_tokens=50, ignore_eos=True)
    reqs = [gen.Request(i, np.arange(2, 12), params) for i in range(8)]
    stats = gen.StepStats()
    done = {e.key: e.token_ids for e in small.run(reqs, 8, stats) if isinstance(e, gen.Finished)}
    free = {e.key: e.token_ids for e in roomy.run(reqs, 8) if isinstance(e, gen.Finished)}
    assert done == free and len(done) == 8 and stats.held_for_memory > 0
    # Three sequences of one 64-token block at a time: one chunk of 4 blocks, against 8 blocks
    # for the unbounded run's 8 sequences.
    assert small.backend.pool.size == 4 < roomy.backend.pool.size


def test_infer_takes_a_context_and_says_where_it_comes_from(artifacts, tmp_path):
    import json

    from batch_helpers import infer, read_out

    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n"
                           for i, p in enumerate(["import os", "import os " * 30])))
    r = infer(artifacts("qwen2", "int8"), inp, out, "--context", 48, "--max-new-tokens", 100,
              "--backend", "native")
    assert r.returncode == 1 and "context 48 (--context" in r.stderr
    recs = {rec["id"]: rec for rec in read_out(out)}
    assert recs[0]["finish_reason"] == "context"
    assert "over the context of 48" in recs[1]["error"] and "--truncate" in recs[1]["error"]
    bad = infer(artifacts("qwen2", "int8"), inp, tmp_path / "o2.jsonl", "--context", 4096)
    assert bad.returncode == 2 and "exported for 2 to 128" in bad.stderr


@pytest.mark.parametrize("name,head_dim_key", [("deepseek-r1-distill-qwen-1.5b", None),
                                               ("deepseek-v3", "qk_rope_head_dim")])
def test_rotary_tables_span_the_published_models_whole_context(name, head_dim_key):
    """The export's cos/sin tables for the published configs at their whole
    max_position_embeddings (131,072 plain; 163,840 yarn, factor 40): transformers' inverse
    frequencies and amplitude, and rows to the far end."""
    import json
    from pathlib import Path

    from edgeds_export.rope import cos_sin_tables, inv_freq_and_scale, rope_parameters

    transformers = pytest.importorskip("transformers")
    path = Path(__file__).resolve().parents[1].parent / "shared/reference/configs" / f"{name}.json"
    if not path.exists():
        pytest.skip("shared/reference is not beside the repository")
    config = json.loads(path.read_text())
    if name == "deepseek-v3":
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import (
            DeepseekV3RotaryEmbedding as Rotary,
        )
        ref = Rotary(config=transformers.DeepseekV3Config(**config))
        dim = config[head_dim_key]
    else:
        from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding as Rotary
        ref = Rotary(config=transformers.Qwen2Config(**config))
        dim = config["hidden_size"] // config["num_attention_heads"]
    theta, scaling = rope_parameters(config)
    inv_freq, amplitude = inv_freq_and_scale(dim, theta, scaling)
    np.testing.assert_allclose(inv_freq, ref.inv_freq.double().numpy(), rtol=1e-6)
    assert amplitude == pytest.approx(float(ref.attention_scaling))
    length = config["max_position_embeddings"]
    cos, sin = cos_sin_tables(inv_freq, amplitude, length)
    assert cos.shape == (length, dim // 2)
    # The far rows in float64 (transformers' float32 inverse frequencies drift by about 1e-2
    # radians at 131,072: the table is the more exact of the two there).
    far = np.array([4095, 4096, length // 2, length - 1])
    angles = np.outer(far.astype(np.float64), inv_freq)
    np.testing.assert_allclose(cos[far], np.cos(angles) * amplitude, atol=1e-6)
    np.testing.assert_allclose(sin[far], np.sin(angles) * amplitude, atol=1e-6)


def test_export_max_gives_the_models_whole_context_and_the_runtime_takes_it(tmp_path):
    """--context max on a V3-like yarn rope (163,840 positions): the artifact holds all of it
    and a run may ask for all of it."""
    from edgeds_export import export_checkpoint
    from tiny_models import make_checkpoint

    yarn = {"type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096}
    ck = make_checkpoint(tmp_path / "ck", "qwen2", seed=3, max_position_embeddings=163840,
                         rope_scaling=yarn)
    export_checkpoint(ck, tmp_path / "art", formats=("onnx",), weights="int8", context="max")
    engine = edgeds.load(tmp_path / "art", backend="native", threads=1, context=163840)
    assert engine.artifact.model.context_length == 163840 and engine.context == 163840
    [out] = engine.generate(["import os"], max_new_tokens=4)
    assert out.finish_reason in ("length", "stop") and out.token_ids
