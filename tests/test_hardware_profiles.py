"""Hardware detection against fake root folders, and the profile each target gets."""

from __future__ import annotations

import platform

import numpy as np
import pytest

from edgeds.errors import ConfigError
from edgeds.hardware import detect
from edgeds.profiles import choose_profile, load_profiles, parse_profile
from edgeds.selection import choose_backend

X86 = "flags\t\t: fpu sse2 avx avx2 fma {extra}\nmodel name\t: {model}\n"


def fake_root(tmp_path, cpuinfo: str, mem_kib: int = 16 << 20, tegra: bool = False,
              dt_model: str = ""):
    (tmp_path / "proc").mkdir(parents=True)
    (tmp_path / "proc/cpuinfo").write_text(cpuinfo)
    (tmp_path / "proc/meminfo").write_text(f"MemTotal:       {mem_kib} kB\nMemFree: 1 kB\n")
    if tegra:
        (tmp_path / "etc").mkdir()
        (tmp_path / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 3.0\n")
    if dt_model:
        (tmp_path / "proc/device-tree").mkdir()
        (tmp_path / "proc/device-tree/model").write_text(dt_model + "\x00")
    return tmp_path


def x86(n_cores: int, extra: str, model: str = "Some CPU") -> str:
    blocks = []
    for i in range(n_cores * 2):  # two hyperthreads per core
        blocks.append(f"processor\t: {i}\nphysical id\t: 0\ncore id\t\t: {i // 2}\n"
                      + X86.format(extra=extra, model=model))
    return "\n".join(blocks)


def arm(n: int) -> str:
    return "\n".join(f"processor\t: {i}\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\n"
                     for i in range(n))


CASES = {
    "cpu-avx2": (x86(4, ""), {}),
    "cpu-avx512": (x86(8, "avx512f avx512_vnni avx512_bf16"), {}),
    "cpu-amx": (x86(16, "avx512f avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16"), {}),
    "jetson-orin-nano": (arm(6),
                         {"tegra": True, "dt_model": "NVIDIA Jetson Orin Nano Developer Kit"}),
    "jetson-orin-nx": (arm(8),
                       {"tegra": True,
                        "dt_model": "NVIDIA Jetson Orin NX Engineering Reference Developer Kit"}),
    "jetson-agx-orin": (arm(12),
                        {"tegra": True, "dt_model": "NVIDIA Jetson AGX Orin Developer Kit"}),
}


@pytest.mark.parametrize("expected", list(CASES))
def test_each_target_gets_its_profile(expected, tmp_path):
    cpuinfo, extra = CASES[expected]
    hw = detect(fake_root(tmp_path, cpuinfo, **extra))
    profile, reasons = choose_profile(hw, load_profiles())
    assert profile.name == expected
    assert any(r.startswith(f"profile {expected}: matches") for r in reasons)


def test_detection_reads_cores_memory_and_flags(tmp_path):
    hw = detect(fake_root(tmp_path, x86(16, "avx512f avx512_vnni amx_tile amx_int8", "Xeon"),
                          mem_kib=64 << 20))
    assert hw.arch == "x86_64" and hw.cpu_model == "Xeon"
    assert hw.physical_cores == 16 and hw.logical_cores == 32
    assert hw.memory_bytes == 64 << 30
    assert hw.isa == ["avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8"]
    assert hw.jetson_model is None


def test_jetson_detection(tmp_path):
    hw = detect(fake_root(tmp_path, arm(6), tegra=True,
                          dt_model="NVIDIA Jetson Orin Nano Developer Kit"))
    assert hw.arch == "aarch64" and hw.jetson_module == "orin-nano"
    assert "Orin Nano" in hw.jetson_model


def test_jetson_without_tensorrt_falls_back_with_reason(tmp_path, monkeypatch):
    import edgeds.backends.onnxruntime.plan as sel

    hw = detect(fake_root(tmp_path, arm(8), tegra=True, dt_model="NVIDIA Jetson Orin NX"))
    profile, _ = choose_profile(hw, load_profiles())
    monkeypatch.setattr(sel, "ort_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    choice = choose_backend(profile, hw, None)
    assert choice.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert any("TensorrtExecutionProvider not available" in r for r in choice.reasons)
    monkeypatch.setattr(sel, "ort_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                 "CPUExecutionProvider"])
    assert choose_backend(profile, hw, None).providers[0] == "TensorrtExecutionProvider"


def test_missing_required_provider_without_fallback_is_an_error(tmp_path):
    text = (tmp_path / "p.toml")
    text.write_text('[runtime]\nbackends = ["onnxruntime"]\nallow_fallback = false\n'
                    '[onnxruntime]\nproviders = ["TensorrtExecutionProvider", '
                    '"CPUExecutionProvider"]\n')
    profile = parse_profile("strict", text.read_text())
    hw = detect(fake_root(tmp_path / "root", x86(2, "")))
    with pytest.raises(ConfigError, match="needs TensorrtExecutionProvider"):
        choose_backend(profile, hw, None)


def test_unknown_keys_are_errors():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['thread'\]"):
        parse_profile("typo", "[onnxruntime]\nthread = 4\n")
    with pytest.raises(ConfigError, match="unknown key"):
        parse_profile("typo", "colour = 'blue'\n")


def test_overrides_win(tmp_path):
    hw = detect(fake_root(tmp_path, x86(4, "avx512f avx512_vnni")))
    profiles = load_profiles()
    profile, reasons = choose_profile(hw, profiles, "cpu-avx2")
    assert profile.name == "cpu-avx2" and "--profile" in reasons[0]
    choice = choose_backend(profile, hw, None, backend="openvino", threads=3)
    assert (choice.backend, choice.threads) == ("openvino", 3)
    with pytest.raises(ConfigError, match="unknown profile"):
        choose_profile(hw, profiles, "cpu-quantum")


def test_every_shipped_profile_parses():
    profiles = load_profiles()
    assert {"cpu-avx2", "cpu-avx512", "cpu-amx", "jetson-orin-nano", "jetson-orin-nx",
            "jetson-agx-orin"} <= set(profiles)
    trt = profiles["jetson-orin-nano"].onnxruntime.provider_options["TensorrtExecutionProvider"]
    assert trt["trt_fp16_enable"] is True and trt["trt_engine_cache_enable"] is True


def test_batch_is_capped_so_full_context_caches_fit_in_memory(artifacts, monkeypatch):
    import dataclasses

    import edgeds
    from edgeds import engine as engine_module
    from edgeds.artifact import load_artifact
    from edgeds.memory_budget import USABLE, weight_bytes

    path = artifacts("qwen2", "int8")
    art = load_artifact(path)
    real = detect()
    roomy = edgeds.load(path, backend="onnxruntime", profile="cpu-avx2")
    # A machine with room for the weights and exactly three slots of full context.
    slot = art.manifest.kv_layout("onnx").bytes_per_token * roomy.context
    memory = int((weight_bytes(art.manifest, "onnx") + 3.5 * slot) / USABLE)
    monkeypatch.setattr(engine_module, "detect",
                        lambda: dataclasses.replace(real, memory_bytes=memory))
    small = edgeds.load(path, backend="onnxruntime", profile="cpu-avx2")
    assert roomy.batch_size == 8 and small.batch_size == 3  # cpu-avx2 asks for 8
    assert any(r.startswith("batch 8 -> 3:") for r in small.reasons)
    # A caller's larger batch is held to the same limit: the backend gets three slots.
    from edgeds import generate as gen
    from edgeds.sampling import SamplingParams

    reqs = [gen.Request(i, np.arange(2, 7), SamplingParams(max_new_tokens=2)) for i in range(5)]
    done = [e for e in small.run(reqs, batch_size=8) if isinstance(e, gen.Finished)]
    assert len(done) == 5 and small.backend.batch_size == 3


def test_decode_read_bytes_leave_out_the_embedding_and_moe(artifacts):
    import onnx

    from edgeds.artifact import load_artifact
    from edgeds.memory_budget import decode_read_bytes

    for weights in ("int8", "fp32"):
        art = load_artifact(artifacts("qwen2", weights))
        graph = onnx.load(str(art.path("model.onnx")), load_external_data=False).graph
        stored = sum(int({e.key: e.value for e in t.external_data}["length"])
                     for t in graph.initializer if t.external_data
                     and not t.name.startswith("embed_tokens."))
        # What the graph stores outside the embedding; the rest is the graph file itself.
        graph_bytes = art.path("model.onnx").stat().st_size
        assert 0 <= decode_read_bytes(art.manifest, "onnx") - stored <= graph_bytes
    assert decode_read_bytes(load_artifact(artifacts("deepseek_v3", "int8")).manifest,
                             "onnx") is None


def test_int8_artifact_runs_on_the_cpu_provider_of_a_jetson(tmp_path, monkeypatch, artifacts):
    import edgeds.backends.onnxruntime.plan as sel
    from edgeds.artifact import load_artifact

    hw = detect(fake_root(tmp_path, arm(8), tegra=True, dt_model="NVIDIA Jetson Orin NX"))
    profile, _ = choose_profile(hw, load_profiles())
    monkeypatch.setattr(sel, "ort_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                 "CPUExecutionProvider"])
    integer = load_artifact(artifacts("qwen2", "int8"))
    choice = choose_backend(profile, hw, integer, backend="onnxruntime")
    assert choice.providers == ["CPUExecutionProvider"]
    assert any("GPU providers skipped" in r and "int8-wo" in r for r in choice.reasons)
    with pytest.raises(ConfigError, match="cannot run on CUDAExecutionProvider"):
        choose_backend(profile, hw, integer, backend="onnxruntime", device="CUDAExecutionProvider")
    weight_only = load_artifact(artifacts("qwen2", "int8-wo"))
    choice = choose_backend(profile, hw, weight_only, backend="onnxruntime")
    assert choice.providers[0] == "TensorrtExecutionProvider"
    assert any("attention stays on the CPU" in r and "--kv-cache float16" in r
               for r in choice.reasons)
    half = choose_backend(profile, hw, load_artifact(artifacts("qwen2", "int8-wo", "float16")),
                          backend="onnxruntime")
    assert half.providers[0] == "TensorrtExecutionProvider"
    assert not any("attention stays on the CPU" in r for r in half.reasons)


def test_a_cpu_with_float16_arithmetic_is_told_of_the_float16_cache(tmp_path, artifacts):
    from edgeds.artifact import load_artifact

    sapphire = detect(fake_root(tmp_path / "spr",
                                x86(16,
                                    "avx512f avx512_vnni avx512_bf16 avx512_fp16 amx_tile amx_int8 "
                                    "amx_bf16")))
    zen4 = detect(fake_root(tmp_path / "zen4", x86(2, "avx512f avx512_vnni avx512_bf16")))
    floats = load_artifact(artifacts("qwen2", "int8"))
    half = load_artifact(artifacts("qwen2", "int8-wo", "float16"))

    def hinted(hw, art) -> bool:
        profile, _ = choose_profile(hw, load_profiles())
        return any("--kv-cache float16" in r
                   for r in choose_backend(profile, hw, art, backend="onnxruntime").reasons)

    assert "avx512_fp16" in sapphire.isa
    assert hinted(sapphire, floats)
    assert not hinted(sapphire, half) and not hinted(zen4, floats)


def test_a_job_starts_by_telling_what_would_run_better(tmp_path, artifacts, monkeypatch):
    """The advice goes to stderr at the start of `edgeds infer`, where no one reads doctor's
    reasons."""
    import json

    from typer.testing import CliRunner

    import edgeds.engine
    from edgeds.cli.main import app

    sapphire = detect(fake_root(tmp_path / "spr",
                                x86(16,
                                    "avx512f avx512_vnni avx512_bf16 avx512_fp16 amx_tile amx_int8 "
                                    "amx_bf16")))
    monkeypatch.setattr(edgeds.engine, "detect", lambda: sapphire)
    (tmp_path / "in.jsonl").write_text(json.dumps({"id": "a", "prompt": "hi",
                                                   "max_new_tokens": 2}) + "\n")
    args = ["-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"), "--overwrite"]
    told = CliRunner().invoke(app, ["infer", str(artifacts("qwen2", "int8")), *args])
    assert told.exit_code == 0, told.output
    assert "edgeds: note: this CPU has AVX512-FP16" in told.output
    quiet = CliRunner().invoke(app, ["infer", str(artifacts("qwen2", "int8-wo", "float16")), *args])
    assert quiet.exit_code == 0, quiet.output
    assert "edgeds: note:" not in quiet.output



# Asked without building the AVX2 library at import: on an AVX-512 machine that build would
# join every test's, and test_native_sanitized counts the builds its run made.
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64")
                    or __import__("edgeds.native", fromlist=["x"]).compiler() is None,
                    reason="no C compiler for the native decoder, or not x86-64")
def test_cpu_avx2_runs_moe_exports_natively_and_dense_ones_on_onnxruntime(tmp_path, artifacts):
    """The profile's backends_moe: on AVX2 CPUs the native MLA + MoE decoder is the faster
    one (benchmarks/results/avx2-epyc-2t.md), the dense one is not at batch 8 and up."""
    from edgeds.artifact import load_artifact

    hw = detect(fake_root(tmp_path, x86(2, "f16c")))
    profile, _ = choose_profile(hw, load_profiles())
    assert profile.name == "cpu-avx2"
    moe = choose_backend(profile, hw, load_artifact(artifacts("deepseek_v3", "int8")))
    assert moe.backend == "native"
    assert any("MoE artifacts try native" in r for r in moe.reasons)
    dense = choose_backend(profile, hw, load_artifact(artifacts("qwen2", "int8")))
    assert dense.backend == "onnxruntime"
    # Where native cannot run an MoE export (fp32 weights), the list goes on.
    fp32 = choose_backend(profile, hw, load_artifact(artifacts("deepseek_v3")))
    assert fp32.backend == "onnxruntime"
    assert any(r.startswith("backend native:") for r in fp32.reasons)
