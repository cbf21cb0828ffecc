"""The native decoder's AVX2 build (edgeds/native/avx512_on_avx2.h: each AVX-512 step as two
256-bit halves; int8_avx2.h, decode_avx2.h, flash_prefill_avx2.h) on whatever x86 CPU runs the suite, AVX-512 machines included, where the library
would otherwise be the AVX-512 build: the CPUs without AVX-512 keep a checked path either way."""

from __future__ import annotations

import numpy as np
import pytest
from test_export_parity import errors_against_reference
from tiny_models import load_reference

from edgeds import native
from edgeds.artifact import load_artifact
from edgeds.backends.native import NativeBackend
from edgeds.backends.native_mla import NativeMlaBackend
from edgeds.backends.onnxruntime import OnnxRuntimeBackend
from edgeds.hardware import detect

pytestmark = pytest.mark.skipif(native.build_for(detect().flags) is None
                                or native.unavailable(detect().flags) is not None,
                                reason="this CPU runs neither build of the native decoder")


@pytest.fixture
def avx2_build(monkeypatch):
    monkeypatch.setattr(native, "this_cpus_build", lambda: "avx2")
    native.library.cache_clear()
    yield
    native.library.cache_clear()


def test_the_avx2_build_follows_transformers_on_a_dense_export(avx2_build, checkpoints,
                                                               artifacts):
    backend = NativeBackend(load_artifact(artifacts("qwen2", "int8")), 2)
    assert "decoder-avx2-" in backend.lib._name
    errors, agree = errors_against_reference(load_reference(checkpoints("qwen2")), backend, 24)
    assert max(errors) < 0.08  # the int8 bound of test_quantized_logit_error_is_bounded
    assert np.mean(agree) >= 0.85


def test_the_avx2_build_follows_transformers_on_an_mla_export(avx2_build, checkpoints,
                                                              tmp_path):
    """V3 routing (sigmoid scores, correction bias, groups), q_lora, the latent cache: as close
    to transformers as ONNX Runtime on the same export's graph (test_native_mla.py's bound)."""
    from edgeds_export import export_checkpoint

    ck = checkpoints("deepseek_v3")
    export_checkpoint(ck, tmp_path / "v3", formats=("onnx",), weights="int8", context=128)
    art = load_artifact(tmp_path / "v3")
    model = load_reference(ck)
    ort_errors, ort_agree = errors_against_reference(
        model, OnnxRuntimeBackend(art, ["CPUExecutionProvider"], 2), 48)
    backend = NativeMlaBackend(art, 2)
    assert "decoder-avx2-" in backend.lib._name
    errors, agree = errors_against_reference(model, backend, 48)
    assert max(errors) < 1.5 * max(ort_errors) + 1e-3
    assert np.mean(agree) >= min(0.85, np.mean(ort_agree))
