"""The TensorRT provider options the runtime derives from a `--target tensorrt` manifest. TensorRT
is not installed here: the options are checked as data, and the engine passes them on."""

from __future__ import annotations

from edgeds import tensorrt
from edgeds.artifact import load_artifact
from edgeds.profiles import load_profiles

DIGEST = "ab" * 32


def _entry(trt_artifacts):
    return load_artifact(trt_artifacts("qwen2")).graph("onnx").tensorrt


def test_profiles_become_the_providers_shape_options(trt_artifacts):
    options = tensorrt.profile_options(_entry(trt_artifacts))
    low, high = options["trt_profile_min_shapes"], options["trt_profile_max_shapes"]
    # Two profiles (prefill, decode): each input appears once per profile, in the same order.
    assert low.count("input_ids:") == 2 and high.count("past_key.0:") == 2
    assert high.startswith("input_ids:8x128,seqlens_k:8,logits_positions:8x128,")
    assert "input_ids:8x1," in high and "input_ids:1x1," in low
    assert "total_sequence_length" not in low


def test_engines_are_cached_per_artifact_tensorrt_version_and_gpu(trt_artifacts, tmp_path):
    base = load_profiles()["jetson-orin-nano"].onnxruntime.provider_options[tensorrt.PROVIDER]
    base = dict(base, trt_engine_cache_path=str(tmp_path))
    a = tensorrt.provider_options(
        _entry(trt_artifacts), base, DIGEST, "NVIDIA Jetson Orin Nano Developer Kit", "10.3.0"
    )
    assert a["trt_engine_cache_path"] == str(
        tmp_path / "abababababababab-trt10.3.0-nvidia-jetson-orin-nano-developer-kit"
    )
    assert a["trt_timing_cache_enable"] is True and a["trt_engine_cache_enable"] is True
    assert a["trt_fp16_enable"] is True  # the profile's own options stay
    others = [
        tensorrt.provider_options(_entry(trt_artifacts), base, DIGEST, "AGX Orin", "10.3.0"),
        tensorrt.provider_options(_entry(trt_artifacts), base, DIGEST, "Orin Nano", "10.16.0"),
        tensorrt.provider_options(_entry(trt_artifacts), base, "cd" * 32, "Orin Nano", "10.3.0"),
    ]
    assert len({a["trt_engine_cache_path"], *(o["trt_engine_cache_path"] for o in others)}) == 4


def test_the_first_run_says_it_builds_engines_and_a_later_run_that_it_loads_them(tmp_path):
    folder = tmp_path / "engines"
    assert "first run" in tensorrt.announce({"trt_engine_cache_path": str(folder)})
    (folder / "model.engine").write_bytes(b"x")
    assert "earlier run" in tensorrt.announce({"trt_engine_cache_path": str(folder)})


def test_the_engine_hands_the_options_to_the_tensorrt_provider(
    trt_artifacts, tmp_path, monkeypatch
):
    from edgeds.backends import registry
    from edgeds.selection import Choice

    seen = {}

    class Recorder:
        def __init__(self, artifact, providers, *args, **kwargs):
            seen["providers"] = providers

    monkeypatch.setattr("edgeds.backends.onnxruntime.OnnxRuntimeBackend", Recorder)
    monkeypatch.setattr(tensorrt, "tensorrt_version", lambda: "10.3.0")
    profile = load_profiles()["jetson-orin-nano"]
    art = load_artifact(trt_artifacts("qwen2"))
    choice = Choice("onnxruntime", list(profile.onnxruntime.providers), 4)
    monkeypatch.setenv("HOME", str(tmp_path))
    registry.get("onnxruntime").open(art, profile, choice, "NVIDIA Jetson Orin Nano Developer Kit")
    trt_name, trt_options = seen["providers"][0]
    assert trt_name == tensorrt.PROVIDER
    assert trt_options["trt_profile_opt_shapes"].count("input_ids:") == 2
    assert art.digest[:16] in trt_options["trt_engine_cache_path"]
    assert (
        seen["providers"][1][0] == "CUDAExecutionProvider"
        and "trt_profile_min_shapes" not in seen["providers"][1][1]
    )


def test_a_manifest_with_inconsistent_profiles_is_refused(trt_artifacts, tmp_path):
    import json

    import pytest

    from edgeds.errors import ArtifactError
    from edgeds.manifest import parse, seal

    data = json.loads((trt_artifacts("qwen2") / "edgeds.json").read_text())
    data["graphs"]["onnx"]["tensorrt"]["profiles"]["decode"]["min"]["input_ids"] = [9, 1]
    with pytest.raises(ArtifactError, match="min <= opt <= max"):
        parse(seal(data))
    data["graphs"]["onnx"]["tensorrt"]["profiles"]["decode"]["min"] = {"no_such_input": [1]}
    with pytest.raises(ArtifactError, match="no_such_input"):
        parse(seal(data))
