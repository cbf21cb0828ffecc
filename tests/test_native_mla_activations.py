"""export --activations int16 / --embedding float16 on the native MLA + MoE backend: matmul inputs
kept to about 15 bits as two int8 planes (manifest quantization.activations "int16 per row"),
the embedding table float16 read in place. Closer to transformers than int8 per row, and a
row's logits still do not depend on its batch or the kernel (integer sums stay exact)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from edgeds_export import export_checkpoint
from edgeds_export.errors import ExportError
from test_export_parity import errors_against_reference
from test_native_mla import greedy
from tiny_models import load_reference

from edgeds import native
from edgeds.artifact import MANIFEST, load_artifact
from edgeds.backends.native_mla import NativeMlaBackend
from edgeds.errors import ArtifactError
from edgeds.hardware import detect
from edgeds.manifest import parse, seal

needs_native = pytest.mark.skipif(
    native.unavailable(detect().flags) is not None, reason=str(native.unavailable(detect().flags))
)


@pytest.fixture(scope="module")
def exports(tmp_path_factory, checkpoints):
    """options -> (checkpoint, artifact) of the tiny V3 (q_lora, sigmoid routing, groups)."""
    root = tmp_path_factory.mktemp("activations")
    cache = {}

    def get(**options):
        key = tuple(sorted(options.items()))
        if key not in cache:
            ck = checkpoints("deepseek_v3")
            out = root / f"a{len(cache)}"
            export_checkpoint(ck, out, formats=("onnx",), weights="int8", context=128, **options)
            cache[key] = ck, load_artifact(out)
        return cache[key]

    return get


def test_the_manifest_records_both_options(exports):
    _, art = exports(activations="int16", embedding="float16")
    quant = art.manifest.quantization
    assert (quant.activations, quant.embedding) == ("int16 per row", "float16")
    _, plain = exports()
    assert (plain.manifest.quantization.activations, plain.manifest.quantization.embedding) == (
        "int8 per row",
        "int8 per-row",
    )


@needs_native
def test_two_planes_follow_transformers_closer_than_int8_rows(exports):
    """The same weights, matmul inputs at about 15 bits: every call's largest logit error
    against transformers fp32 is well below int8 per row's, on average (0.66x here: on random
    weights their own int8 rounding is most of what is left)."""
    ck, art = exports(activations="int16", embedding="float16")
    _, plain = exports()
    model = load_reference(ck)
    errors, agree = errors_against_reference(model, NativeMlaBackend(art, 2), 24)
    int8_errors, _ = errors_against_reference(model, NativeMlaBackend(plain, 2), 24)
    assert np.mean(errors) < 0.8 * np.mean(int8_errors)
    assert np.mean(agree) >= 0.9


@needs_native
def test_two_planes_keep_a_row_bit_identical_at_batch_1_and_64(exports):
    """A prompt alone, then in slot 21 of 64 (the busiest experts and every projection take
    16 rows or more: the AMX tiles where the CPU has them), and on one thread: the same logits
    to the bit."""
    _, art = exports(activations="int16")
    assert NativeMlaBackend(art, 2).activation_planes == 2
    rng = np.random.default_rng(5)
    prompt = rng.integers(2, 320, 11).astype(np.int64)
    tokens, alone = greedy(NativeMlaBackend(art, 2), prompt, 8)
    np.testing.assert_array_equal(np.stack(greedy(NativeMlaBackend(art, 1), prompt, 8)[1]),
                                  np.stack(alone))
    for use_amx in (True, False):
        backend = NativeMlaBackend(art, 2, use_amx=use_amx)
        backend.start(64, 32)
        prompts = [rng.integers(2, 320, int(rng.integers(1, 20))).astype(np.int64)
                   for _ in range(64)]
        prompts[21] = prompt
        got = [backend.prefill(list(range(64)), prompts)[21].copy()]
        for step in range(7):
            ids = rng.integers(2, 320, 64)
            ids[21] = tokens[step]
            got.append(backend.decode(ids)[21].copy())
        np.testing.assert_array_equal(np.stack(got), np.stack(alone))


def test_activations_are_an_int8_weights_option(checkpoints, tmp_path):
    ck = checkpoints("deepseek_v3")
    with pytest.raises(ExportError, match="--activations int16 is not for --weights int4"):
        export_checkpoint(ck, tmp_path / "a", formats=("onnx",), weights="int4",
                          activations="int16")
    with pytest.raises(ExportError, match="--activations float is not for --weights int8"):
        export_checkpoint(ck, tmp_path / "e", formats=("onnx",), activations="float")
    with pytest.raises(ExportError, match="unknown activations"):
        export_checkpoint(ck, tmp_path / "b", formats=("onnx",), activations="int4")
    with pytest.raises(ExportError, match="unknown embedding"):
        export_checkpoint(ck, tmp_path / "c", formats=("onnx",), embedding="int4")


def test_a_manifest_with_activations_for_other_weights_is_refused(exports):
    _, art = exports(activations="int16")
    manifest = json.loads((art.root / MANIFEST).read_text())
    manifest["quantization"]["weights"] = "fp16"
    with pytest.raises(ArtifactError, match="quantization.activations is set for weights fp16"):
        parse(seal(manifest))
    manifest["quantization"]["weights"] = "int4"
    with pytest.raises(ArtifactError, match="activations is 'int16 per row', not one of float"):
        parse(seal(manifest))
    manifest["quantization"] |= {"weights": "int8", "activations": "int12 per row"}
    with pytest.raises(ArtifactError, match="quantization.activations is 'int12 per row', not one"):
        parse(seal(manifest))


def test_float_activations_write_matmulnbits_at_accuracy_level_0(checkpoints, tmp_path):
    """--weights int8-wo --activations float: every MatMulNBits of the graph at level 0 (the
    default export: 4 where K >= 256), the manifest saying so; the level is restored after."""
    import onnx
    from edgeds_export.graph import onnx_ops

    ck = checkpoints("deepseek_v3")
    levels = {}
    for acts in (None, "float"):
        out = tmp_path / f"wo-{acts}"
        export_checkpoint(ck, out, formats=("onnx",), weights="int8-wo", activations=acts,
                          context=64)
        model = onnx.load(str(out / "model.onnx"), load_external_data=False)
        levels[acts] = {a.i for n in model.graph.node if n.op_type == "MatMulNBits"
                        for a in n.attribute if a.name == "accuracy_level"}
        assert load_artifact(out).manifest.quantization.activations == acts
    assert levels["float"] == {0}
    assert onnx_ops.ACCURACY_LEVEL == 4


@needs_native
def test_a_site_without_its_second_plane_rounds_as_one_plane(exports):
    """em_set_plane_sites (benchmarks/quality/plane_sites.py): no site with two planes gives the
    int8 rows' logits bit for bit; every site gives the two planes' own."""
    _, art = exports(activations="int16")
    rng = np.random.default_rng(3)
    prompts = [rng.integers(0, 256, n) for n in (9, 30, 17)]

    def logits(planes: int, sites: int) -> np.ndarray:
        backend = NativeMlaBackend(art, 2)
        backend.lib.em_set_activations(backend._model, planes)
        backend.lib.em_set_plane_sites(backend._model, sites)
        backend.start(3, 40)
        return backend.prefill([0, 1, 2], prompts).copy()

    one, two = logits(1, -1), logits(2, -1)
    assert not np.array_equal(one, two)
    assert np.array_equal(logits(2, 0), one)
    assert np.array_equal(logits(2, 63), two)
