"""`edgeds bench`: the one-command measurement of an artifact on this machine."""

from __future__ import annotations

import pytest

from edgeds.bench import format_bench, run_bench


def test_bench_measures_batch_one_and_the_batch_asked(artifacts):
    result = run_bench(str(artifacts("qwen2", "int8")), prompt_tokens=16, new_tokens=6,
                       batch_size=3)
    assert [r["batch_size"] for r in result["runs"]] == [1, 3]
    for r in result["runs"]:
        # the first token comes from the prefill
        assert r["decode_tokens_per_s"] > 0 and r["decode_steps"] == 5
        assert r["step_latency_s"]["p50"] <= r["step_latency_s"]["p99"]
    assert result["weights_mib"] > 0 and "batch   3" in format_bench(result)


def test_a_prompt_longer_than_the_context_is_a_clear_error(artifacts):
    with pytest.raises(ValueError, match="exceed the context"):
        run_bench(str(artifacts("qwen2", "int8")), prompt_tokens=128, new_tokens=8)


def test_bench_without_an_artifact_measures_the_embedded_default(capsys):
    from typer.testing import CliRunner

    from edgeds.cli.main import app
    from edgeds.default_model import FOLDER

    r = CliRunner().invoke(app,
                           ["bench", "--prompt-tokens", "8", "--new-tokens", "3", "--batch-size",
                            "2", "--json"])
    assert r.exit_code == 0, r.output
    assert f'"artifact": "{FOLDER}"' in r.output and '"batch_size": 2' in r.output


def test_load_without_an_artifact_gives_the_embedded_default_as_infer_does():
    import edgeds
    from edgeds.default_model import FOLDER

    engine = edgeds.load()
    assert engine.artifact.root == FOLDER
    [done] = engine.generate(["def add(a, b):"], max_new_tokens=4)
    assert done.finish_reason in ("length", "stop") and done.token_ids
