"""Decode attention over the latent cache in bf16 products (edgeds/native/latent_tiles.h): on
vdpbf16ps where the CPU has AVX-512 BF16, and on AMX-BF16 tiles, real where the CPU has them,
else on the library's emulated-tiles build (tile_emulation.h: the tile instructions in plain C),
so the tiles' layouts, padding and task splits are checked on any AVX-512 CPU (the lent Xeon runs
them on real tiles: benchmarks/devices/moe_device.sh's AMX_TESTS). Against transformers past
several key chunks, and the same bits over any split of the work or batch."""

from __future__ import annotations

import numpy as np
import pytest
from batch_helpers import assert_alone_as_in_batch
from test_export_parity import reference_logits
from tiny_models import load_reference, make_checkpoint

from edgeds import generate as gen
from edgeds import native
from edgeds.artifact import load_artifact
from edgeds.backends.native_mla import NativeMlaBackend
from edgeds.backends.onnxruntime import OnnxRuntimeBackend
from edgeds.hardware import detect
from edgeds.sampling import SamplingParams

CPU = detect().flags
pytestmark = pytest.mark.skipif(native.build_for(CPU) != "avx512",
                                reason="the emulated-tiles build is an AVX-512 build")

PROMPT = 1300  # six key chunks of 256, the last one part full
CONTEXT = 1400


@pytest.fixture(params=["tiles", "bf16"])
def kernel(request, monkeypatch):
    """The bf16 kernel under test, and the library it runs in: tiles real on a CPU with them,
    else emulated; vdpbf16ps where the CPU has it."""
    if request.param == "bf16" and "avx512_bf16" not in CPU:
        pytest.skip("vdpbf16ps: a CPU with AVX-512 BF16")
    if request.param == "tiles" and "amx_bf16" not in CPU:
        monkeypatch.setattr(native, "this_cpus_build", lambda: "avx512-emulated-tiles")
    native.library.cache_clear()
    yield request.param
    native.library.cache_clear()


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    from edgeds_export import export_checkpoint

    root, cache = tmp_path_factory.mktemp("mla-tiles"), {}

    def get(kind: str, heads: int = 4):
        if (kind, heads) not in cache:
            ck = make_checkpoint(root / f"ck-{kind}-{heads}", kind, seed=5,
                                 max_position_embeddings=2048, num_attention_heads=heads,
                                 num_key_value_heads=heads, hidden_size=80 if heads == 40 else 64)
            out = root / f"art-{kind}-{heads}"
            export_checkpoint(ck, out, formats=("onnx",), weights="int8", context=CONTEXT)
            cache[kind, heads] = ck, load_artifact(out)
        return cache[kind, heads]

    return get


def decode_logits(backend, prompt: np.ndarray, tokens) -> np.ndarray:
    backend.start(1, CONTEXT)
    backend.prefill([0], [prompt])
    return np.stack([backend.decode(np.array([t]))[0].copy() for t in tokens])


@pytest.mark.parametrize("kind,cache", [("deepseek_v2", "float32"), ("deepseek_v3", "float32"),
                                        ("deepseek_v2", "float16")])
def test_bf16_decode_follows_transformers_as_closely_as_onnxruntime(kind, cache, exports, kernel):
    """bf16 products of the absorbed queries and the cached latents: cached decode past five
    full key chunks within ONNX Runtime's distance of transformers (float32 throughout)."""
    ck, art = exports(kind)
    prompt = np.random.default_rng(7).integers(2, 320, PROMPT).astype(np.int64)
    _, ref_decode, tokens = reference_logits(load_reference(ck), prompt, 8)
    ref = np.stack(ref_decode)
    backend = NativeMlaBackend(art, 3, cache_dtype=cache, decode_kernel=kernel)
    assert backend.decode_kernel == kernel
    got = decode_logits(backend, prompt, tokens[:8])
    ort = decode_logits(OnnxRuntimeBackend(art, ["CPUExecutionProvider"], 2), prompt, tokens[:8])
    scale = np.abs(ref).max()
    error, ort_error = (np.abs(x - ref).max(-1) / scale for x in (got, ort))
    assert error.max() < 1.5 * ort_error.max() + 2e-3
    agree, ort_agree = (np.mean(x.argmax(-1) == ref.argmax(-1)) for x in (got, ort))
    assert agree >= ort_agree - 0.13  # one of eight steps


@pytest.mark.parametrize("heads", [64, 40])
def test_bf16_decode_is_the_same_over_any_split_and_batch(heads, exports, kernel):
    """64 heads: one task of four groups of 16 (1 thread), a task per chunk (8 threads), a task
    per chunk and group (30); 40: a last group of 8 heads padded. The same bits each way, alone
    and as one row of a batch of 8 at other depths (a task per row)."""
    _, art = exports("deepseek_v2", heads)
    prompt = np.random.default_rng(8).integers(2, 320, PROMPT).astype(np.int64)
    runs = []
    for threads in (1, 8, 30):
        backend = NativeMlaBackend(art, threads, decode_kernel=kernel)
        assert backend.decode_kernel == kernel
        runs.append(decode_logits(backend, prompt, (5, 9, 11)))
    for run in runs[1:]:
        np.testing.assert_array_equal(run, runs[0])
    rng = np.random.default_rng(9)
    params = SamplingParams(max_new_tokens=4, ignore_eos=True)
    reqs = [gen.Request(0, prompt, params)] + [
        gen.Request(i, rng.integers(2, 320, n).astype(np.int64), params)
        for i, n in enumerate(rng.integers(3, 700, 7), 1)]
    backend = NativeMlaBackend(art, 2, decode_kernel=kernel)
    assert_alone_as_in_batch(backend, reqs, 8, CONTEXT)


def test_the_float32_kernel_is_another_kernel(exports, kernel):
    """decode_kernel="fma": float32 products, whose logits differ from the bf16 kernels' in the
    last bits but not by more than bf16 rounding."""
    _, art = exports("deepseek_v2")
    prompt = np.random.default_rng(10).integers(2, 320, PROMPT).astype(np.int64)
    tiled = NativeMlaBackend(art, 2, decode_kernel=kernel)
    plain = NativeMlaBackend(art, 2, decode_kernel="fma")
    assert (tiled.decode_kernel, plain.decode_kernel) == (kernel, "fma")
    a, b = (decode_logits(be, prompt, (5, 9, 11)) for be in (tiled, plain))
    assert not np.array_equal(a, b)
    assert np.abs(a - b).max() < 0.05 * np.abs(b).max()


@pytest.mark.skipif("amx_bf16" not in CPU, reason="real tiles: a CPU with AMX-BF16")
def test_real_tiles_compute_what_the_emulated_ones_do(exports, monkeypatch):
    """On an AMX CPU: the hardware's tile products against tile_emulation.h's, the same layouts
    read by both (only the order of the float32 sums differs)."""
    _, art = exports("deepseek_v2", 64)
    prompt = np.random.default_rng(11).integers(2, 320, PROMPT).astype(np.int64)
    runs = []
    for build in ("avx512", "avx512-emulated-tiles"):
        monkeypatch.setattr(native, "this_cpus_build", lambda b=build: b)
        native.library.cache_clear()
        backend = NativeMlaBackend(art, 4, decode_kernel="tiles")
        assert backend.decode_kernel == "tiles"
        runs.append(decode_logits(backend, prompt, (5, 9, 11)))
    native.library.cache_clear()
    assert np.abs(runs[0] - runs[1]).max() < 1e-3 * np.abs(runs[1]).max()


def test_a_kernel_the_cpu_lacks_falls_back_to_fmas(exports, monkeypatch):
    """The emulated-tiles build has no vdpbf16ps (built without AVX-512 BF16): "bf16" asked,
    FMAs taken and said; an unknown name is an error naming the choices."""
    _, art = exports("deepseek_v2")
    monkeypatch.setattr(native, "this_cpus_build", lambda: "avx512-emulated-tiles")
    native.library.cache_clear()
    try:
        assert NativeMlaBackend(art, 1, decode_kernel="bf16").decode_kernel == "fma"
        with pytest.raises(ValueError, match="auto, fma, bf16, tiles"):
            NativeMlaBackend(art, 1, decode_kernel="amx")
    finally:
        native.library.cache_clear()
