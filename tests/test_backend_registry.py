"""The backend registry: each backend says whether it can run an artifact here and why not;
selection, doctor and the engine ask it, and an unchosen backend is never imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest

from edgeds.backends import registry
from edgeds.errors import ConfigError
from edgeds.hardware import detect
from edgeds.profiles import load_profiles, parse_profile
from edgeds.selection import choose_backend


def test_every_backend_has_an_entry_under_its_own_name():
    assert list(registry.REGISTRY) == ["native", "onnxruntime", "openvino"]
    for name, entry in registry.REGISTRY.items():
        assert entry.name == name and entry.graph_format in ("onnx", "openvino")
        assert entry.backend_class().name == name  # the class it opens answers to the same name
    with pytest.raises(ConfigError,
                       match="unknown backend 'onnx'; choose from native, onnxruntime"):
        registry.get("onnx")


def test_a_backend_without_its_graph_or_package_says_why(monkeypatch):
    hw = detect()
    onnx_only = SimpleNamespace(formats=["onnx"])
    assert registry.get("openvino").unsupported(onnx_only, hw) == "artifact has no openvino graph"
    monkeypatch.setattr(registry.OpenVinoEntry, "module", "edgeds_no_such_package")
    assert registry.get("openvino").unsupported(None, hw) == "not installed"
    assert registry.installed_backends() == {"onnxruntime": True, "openvino": False}


def test_selection_passes_over_backends_that_cannot_with_their_reasons(tmp_path, monkeypatch):
    monkeypatch.setattr(registry.OpenVinoEntry, "module", "edgeds_no_such_package")
    profile = parse_profile("p", '[runtime]\nbackends = ["openvino", "tpu", "onnxruntime"]\n')
    choice = choose_backend(profile, detect(), None)
    assert choice.backend == "onnxruntime" and choice.artifact_format == "onnx"
    assert choice.reasons[:2] == ["backend openvino: not installed",
                                  "backend tpu: not one of native, onnxruntime, openvino"]
    only = parse_profile("q", '[runtime]\nbackends = ["openvino"]\n')
    with pytest.raises(ConfigError, match="no usable backend: backend openvino: not installed"):
        choose_backend(only, detect(), None)
    with pytest.raises(ConfigError, match="unknown backend 'tpu'"):
        choose_backend(profile, detect(), None, backend="tpu")


def test_the_openvino_plan_takes_its_own_thread_setting():
    profile = load_profiles()["cpu-avx2"]
    choice = choose_backend(profile, detect(), None, backend="openvino", threads=3)
    assert (choice.backend, choice.providers, choice.threads) == ("openvino", ["CPU"], 3)
    assert choice.artifact_format == "openvino"
    assert choice.reasons == ["backend openvino: installed, device CPU, 3 threads"]


def test_choosing_and_running_onnxruntime_never_imports_openvino(artifacts, tmp_path):
    art = artifacts("qwen2", "int8")
    script = textwrap.dedent(f"""
        import sys
        import edgeds
        from edgeds.doctor import diagnose
        engine = edgeds.load({str(art)!r}, backend="onnxruntime")
        [r] = engine.generate(["def add(a, b):"], max_new_tokens=4)
        assert len(r.token_ids) == 4, r
        assert diagnose({str(art)!r}, backend="onnxruntime")["choice"]["backend"] == "onnxruntime"
        assert "openvino" not in sys.modules, "openvino was imported"
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                       timeout=600, check=False)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


@pytest.mark.parametrize("backend", ["native", "onnxruntime", "openvino"])
@pytest.mark.parametrize("kind", ["qwen2", "deepseek_v2"])
def test_every_backend_grows_its_cache_keeping_what_it_held(artifacts, backend, kind):
    """The loop may enlarge a cache in the middle of a batch: decoding after grow() gives the
    logits of a cache that was that large from the start, on every backend (slots.grown)."""
    import edgeds

    art = artifacts(kind, "int8")
    engine = edgeds.load(art, backend=backend, profile="cpu-avx512", threads=2, prefix_cache=False)
    if engine.choice.backend != backend:
        pytest.skip(f"{backend} cannot run here: {engine.reasons}")
    b = engine.backend
    rng = np.random.default_rng(6)
    prompts = [rng.integers(2, 320, n).astype(np.int64) for n in (10, 7)]
    runs = []
    for first_capacity in (12, 40):
        b.start(2, first_capacity)
        logits = [b.prefill([0, 1], prompts).copy()]
        b.grow(40)
        for _ in range(20):
            logits.append(b.decode(logits[-1].argmax(-1)).copy())
        runs.append(np.stack(logits))
    np.testing.assert_array_equal(runs[0], runs[1])
