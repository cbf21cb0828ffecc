"""Greedy results do not depend on how a job ran (issue 21, item 9): a straight run at batch 64,
one at batch 1 and a run stopped halfway and resumed give every id the same text, on every
backend that runs the reference models here (exported in the test session)."""

from __future__ import annotations

import io
import json

import pytest
from batch_helpers import read_out
from conftest import REPO

MODELS = REPO / "benchmarks/reference_models"
DENSE, MOE = "r1-distill-tiny-python", "deepseek-v3-tiny-python"


CASES = [
    (DENSE, "onnxruntime"),
    (DENSE, "native"),
    (DENSE, "openvino"),
    (MOE, "onnxruntime"),
    (MOE, "openvino"),
    (MOE, "native"),
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from edgeds_export import export_checkpoint

    cache = {}

    def get(model: str):
        if model not in cache:
            cache[model] = tmp_path_factory.mktemp("reference") / model
            export_checkpoint(MODELS / model, cache[model], weights="int8", context=256)
        return cache[model]

    return get


def prompts(n: int) -> list[str]:
    """Openings of the held-out sample, 1 to 10 lines long: prompts of many lengths."""
    text = (MODELS / "r1-distill-tiny-python/heldout_sample.txt").read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    return ["\n".join(lines[i * 7: i * 7 + 1 + (i * 13) % 10]) + "\n" for i in range(n)]


def job(engine, inp, out, batch_size):
    from edgeds.batch import JobOptions, run_job
    from edgeds.sampling import SamplingParams

    opts = JobOptions(str(inp), str(out), SamplingParams(max_new_tokens=24), batch_size=batch_size)
    return run_job(engine, opts, progress_stream=io.StringIO())


@pytest.mark.parametrize("model, backend", CASES)
def test_greedy_text_is_the_same_straight_resumed_and_at_batch_1_and_64(exported, model, backend,
                                                                        tmp_path):
    from edgeds.artifact import load_artifact
    from edgeds.engine import load
    from edgeds.hardware import detect
    from edgeds.selection import installed_backends, native_unavailable

    reference = exported(model)
    if backend == "native" and (why := native_unavailable(detect(), load_artifact(reference))):
        pytest.skip(f"native: {why}")
    if backend != "native" and not installed_backends().get(backend):
        pytest.skip(f"{backend} is not installed")
    engine = load(reference, backend=backend)
    assert engine.describe()["backend"] == backend
    rows = [json.dumps({"id": i, "prompt": p}) + "\n" for i, p in enumerate(prompts(80))]
    inp, half = tmp_path / "in.jsonl", tmp_path / "half.jsonl"
    inp.write_text("".join(rows))
    half.write_text("".join(rows[::2]))  # the first run sees every other line
    texts = {}
    for name, batch in (("b64", 64), ("b1", 1)):
        assert job(engine, inp, tmp_path / f"{name}.jsonl", batch).ok == 80
        texts[name] = {r["id"]: r["text"] for r in read_out(tmp_path / f"{name}.jsonl")}
    resumed = tmp_path / "resumed.jsonl"
    job(engine, half, resumed, 16)
    stats = job(engine, inp, resumed, 16)
    assert (stats.skipped, stats.ok) == (40, 40)
    texts["resumed"] = {r["id"]: r["text"] for r in read_out(resumed)}
    assert len(set(texts["b64"].values())) > 40  # the prompts really differ
    for name in ("b1", "resumed"):
        differ = sorted(i for i in range(80) if texts[name][i] != texts["b64"][i])
        assert not differ, f"{backend}, {name} against batch 64: ids {differ}"


@pytest.mark.parametrize("profile", ["cpu-avx2", "cpu-avx512", "cpu-amx"])
def test_openvino_compiles_without_the_rounding_that_depends_on_the_batch(exported, profile):
    """bf16 and the CPU plugin's dynamic activation quantization each flipped greedy tokens
    between batch 1 and 64 (their kernels are picked by row count): no CPU profile may run them."""
    from edgeds.engine import load
    from edgeds.selection import installed_backends

    if not installed_backends().get("openvino"):
        pytest.skip("openvino is not installed")
    compiled = load(exported(DENSE), profile=profile, backend="openvino").backend.compiled
    assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
    assert int(compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE")) == 0
