"""export --activations int16 / --embedding float16 on the dense native backend (decoder.c): the
MLA decoder's two int8 planes (int8_gemm.h) for every matmul input, and a float16 embedding table
read in place. Closer to transformers than int8 per row; a row's logits still do not depend on
its batch, its thread count or the kernel (AMX tiles or VNNI)."""

from __future__ import annotations

import numpy as np
import pytest
from edgeds_export import export_checkpoint
from test_export_parity import errors_against_reference
from tiny_models import load_reference

from edgeds import native
from edgeds.artifact import load_artifact
from edgeds.backends.native import NativeBackend
from edgeds.backends.onnxruntime import OnnxRuntimeBackend
from edgeds.hardware import detect

pytestmark = pytest.mark.skipif(native.unavailable(detect().flags) is not None,
                                reason=str(native.unavailable(detect().flags)))


@pytest.fixture(scope="module")
def exports(tmp_path_factory, checkpoints):
    """(kind, options) -> (checkpoint, artifact), ONNX only, int8 weights."""
    root = tmp_path_factory.mktemp("dense-activations")
    cache = {}

    def get(kind: str, **options):
        key = (kind, *sorted(options.items()))
        if key not in cache:
            out = root / f"a{len(cache)}"
            export_checkpoint(checkpoints(kind), out, formats=("onnx",), weights="int8",
                              context=128, **options)
            cache[key] = checkpoints(kind), load_artifact(out)
        return cache[key]

    return get


def test_the_manifest_records_int16_activations_for_a_dense_model(exports):
    _, art = exports("qwen2", activations="int16", embedding="float16")
    quant = art.manifest.quantization
    assert (quant.activations, quant.embedding) == ("int16 per row", "float16")
    assert NativeBackend(art, 2).activation_planes == 2
    assert NativeBackend(exports("qwen2")[1], 2).activation_planes == 1


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_two_planes_follow_int8_weights_with_float_activations(kind, exports):
    """Against the float path of the same rounding (transformers fp32 with every linear layer's
    weights rounded per output channel as the export does, inputs left float, the table float16:
    routing_flips' simulation), two planes leave a small fraction of int8 per row's error (about
    1/15 here); against plain transformers they stay within the int8 bound."""
    from benchmarks.quality.routing_flips import int8_model

    ck, art = exports(kind, activations="int16", embedding="float16")
    _, plain = exports(kind, embedding="float16")
    model = load_reference(ck)
    with int8_model(model, {"embedding", "attention", "dense_mlp", "lm_head"}, act_float=True,
                    embedding_float16=True) as weight_only:
        errors, agree = errors_against_reference(weight_only, NativeBackend(art, 2), 24)
        int8_errors, _ = errors_against_reference(weight_only, NativeBackend(plain, 2), 24)
    assert np.mean(errors) < 0.2 * np.mean(int8_errors)
    assert max(errors) < 0.01
    assert np.mean(agree) == 1.0
    errors, _ = errors_against_reference(model, NativeBackend(art, 2), 24)
    assert max(errors) < 0.08  # the int8 bound of test_quantized_logit_error_is_bounded


def test_a_float16_table_is_read_in_place_and_gives_onnxruntimes_rows(exports):
    """The float16 table stays the file's (not widened to float32); the first layer's input is
    the same as ONNX Runtime's lookup: one-token prompts' logits within the int8 bound of ORT's."""
    _, art = exports("qwen2", embedding="float16")
    backend = NativeBackend(art, 2)
    assert backend._table.dtype == np.float16
    ort = OnnxRuntimeBackend(art, ["CPUExecutionProvider"], 2)
    ids = [np.array([t], np.int64) for t in (3, 77, 301)]
    for b in (backend, ort):
        b.start(3, 16)
    got, want = backend.prefill([0, 1, 2], ids), ort.prefill([0, 1, 2], ids)
    assert np.abs(got - want).max() / np.abs(want).max() < 0.05
    assert (got.argmax(-1) == want.argmax(-1)).all()


@pytest.mark.parametrize("kv_cache", ["float32", "float16"])
def test_two_planes_keep_a_row_bit_identical_at_batch_1_and_64(kv_cache, exports):
    """A 12-token prompt alone on one thread (its matmuls on VNNI), then in slot 37 of 64
    prompted together and decoding with them (calls of more than 16 rows: AMX tiles where
    granted, padded rows beside it): the same logits to the bit. Each run with AMX and without:
    the prompt attention's AMX-BF16 tiles and vdpbf16ps round differently
    (test_flash_prefill.py), which two planes carry through where int8 rounding hid it."""
    _, art = exports("llama", activations="int16", embedding="float16", kv_cache=kv_cache)
    rng = np.random.default_rng(11)
    prompt, steps = rng.integers(2, 320, 12).astype(np.int64), 8
    for use_amx in (True, False):
        alone = NativeBackend(art, 1, use_amx=use_amx)
        alone.start(1, 64)
        logits = alone.prefill([0], [prompt])
        reference, tokens = [logits[0].copy()], []
        for _ in range(steps):
            tokens.append(int(logits[0].argmax()))
            logits = alone.decode(np.array(tokens[-1:], np.int64))
            reference.append(logits[0].copy())

        batch = NativeBackend(art, 2, use_amx=use_amx)
        batch.start(64, 64)
        prompts = [rng.integers(2, 320, int(n)).astype(np.int64) for n in rng.integers(1, 30, 64)]
        prompts[37] = prompt
        seen = [batch.prefill(list(range(64)), prompts)[37].copy()]
        for step in range(steps):
            ids = rng.integers(2, 320, 64)
            ids[37] = tokens[step]
            seen.append(batch.decode(ids)[37].copy())
        np.testing.assert_array_equal(np.stack(seen), np.stack(reference))


def test_doctor_points_an_int8_artifact_to_the_quality_setting(exports):
    """doctor's quality line: on native, int8 rows point to --activations int16 --embedding
    float16, and an artifact exported so says it has them; on ONNX Runtime, to int8-wo with
    float activations (its int8 graph rounds every matmul input to int8)."""
    from edgeds.doctor import diagnose, format_report

    _, plain = exports("qwen2")
    _, planes = exports("qwen2", activations="int16", embedding="float16")
    report = diagnose(str(plain.root), backend="native")
    assert "re-export with --activations int16 --embedding float16" in report["quality"]
    assert f"quality: {report['quality']}" in format_report(report)
    assert "two int8 planes" in diagnose(str(planes.root), backend="native")["quality"]
    ort = diagnose(str(plain.root), backend="onnxruntime")["quality"]
    assert "--weights int8-wo --activations float --embedding float16" in ort
