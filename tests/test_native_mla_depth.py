"""The native MLA decoder (edgeds/native/mla_moe.c) at depth: positions past 4,096 against
transformers with yarn rope (V2: no q_lora, softmax routing; V3: q_lora, sigmoid routing),
decode attention split over key chunks and head groups as bit for bit the same as one thread,
prompts prefilled in one call or cut into many (their decompressed keys kept between calls or
not), alone or in a batch of 64."""

from __future__ import annotations

import numpy as np
import pytest
from batch_helpers import assert_alone_as_in_batch
from test_export_parity import reference_logits
from tiny_models import load_reference, make_checkpoint

from edgeds import generate as gen
from edgeds import native
from edgeds.artifact import load_artifact
from edgeds.backends import native as native_backend
from edgeds.backends.native_mla import NativeMlaBackend
from edgeds.backends.onnxruntime import OnnxRuntimeBackend
from edgeds.hardware import detect
from edgeds.sampling import SamplingParams

pytestmark = pytest.mark.skipif(native.unavailable(detect().flags) is not None,
                                reason=str(native.unavailable(detect().flags)))

DEEP = 4400  # prompt tokens: past 4,096, over 18 decode chunks and 9 prefill calls
CONTEXT = 4480
YARN = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048, "beta_fast": 32,
        "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707}


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    from edgeds_export import export_checkpoint

    root, cache = tmp_path_factory.mktemp("mla-deep"), {}

    def get(kind: str):
        if kind not in cache:
            ck = make_checkpoint(root / f"ck-{kind}", kind, seed=3, max_position_embeddings=8192,
                                 rope_scaling=YARN)
            out = root / f"art-{kind}"
            export_checkpoint(ck, out, formats=("onnx",), weights="int8", context=CONTEXT)
            cache[kind] = ck, load_artifact(out)
        return cache[kind]

    return get


def logits_at_depth(backend, prompt: np.ndarray, tokens: list[int]) -> np.ndarray:
    """The last 256 prompt positions' logits, then a decode step per token."""
    backend.start(1, CONTEXT)
    rows = [backend.prefill([0], [prompt], every_position=True)[0][-256:]]
    rows += [backend.decode(np.array([t]))[0][None].copy() for t in tokens]
    return np.concatenate(rows)


@pytest.mark.parametrize("kind,cache,tiles", [("deepseek_v2", "float32", True),
                                              ("deepseek_v3", "float32", True),
                                              ("deepseek_v2", "float16", True),
                                              ("deepseek_v2", "float32", False)])
def test_logits_past_4096_follow_transformers_as_closely_as_onnxruntime(kind, cache, tiles, deep):
    """float16: the latent cache rounded to half precision (cache_dtype), read by the same
    kernels after conversion. tiles: prompt attention on AMX-BF16 tiles where the CPU has them
    (bf16 products), else float32 FMAs."""
    ck, art = deep(kind)
    prompt = np.random.default_rng(7).integers(2, 320, DEEP).astype(np.int64)
    ref_prefill, ref_decode, tokens = reference_logits(load_reference(ck), prompt, 6)
    ref = np.concatenate([ref_prefill[-256:], np.stack(ref_decode)])
    scale = np.abs(ref).max()
    # 3 threads > 1 row: decode attention splits over the 18 key chunks (flash-decoding).
    backend = NativeMlaBackend(art, 3, cache_dtype=cache, prompt_tiles=tiles)
    got = logits_at_depth(backend, prompt, tokens[:6])
    assert backend.latent.dtype == cache and cache in backend.cache_layout
    ort = logits_at_depth(OnnxRuntimeBackend(art, ["CPUExecutionProvider"], 2), prompt, tokens[:6])
    error, ort_error = (np.abs(x - ref).max(-1) / scale for x in (got, ort))
    assert error.max() < 1.5 * ort_error.max() + 1e-3
    assert np.median(error) < 1.5 * np.median(ort_error) + 1e-4
    agree, ort_agree = (np.mean(x.argmax(-1) == ref.argmax(-1)) for x in (got, ort))
    assert agree >= ort_agree - 0.02


def test_decode_at_depth_is_the_same_split_over_any_number_of_threads(deep):
    """1 thread: the row's chunks in one task; 8: a task per chunk (four heads); 30: two heads
    a task; 80: one head. The same logits to the bit, with either cache dtype."""
    _, art = deep("deepseek_v2")
    prompt = np.random.default_rng(8).integers(2, 320, DEEP).astype(np.int64)
    runs = []
    for threads, cache in [(t, c) for c in ("float32", "float16") for t in (1, 8, 30, 80)]:
        backend = NativeMlaBackend(art, threads, cache_dtype=cache)
        backend.start(1, CONTEXT)
        backend.prefill([0], [prompt])
        runs.append(np.stack([backend.decode(np.array([t]))[0].copy() for t in (5, 9, 11)]))
    for run in runs[1:4]:
        np.testing.assert_array_equal(run, runs[0])
    for run in runs[5:]:
        np.testing.assert_array_equal(run, runs[4])
    assert not np.array_equal(runs[4], runs[0])  # the float16 cache is another cache


def test_a_long_prompt_in_many_calls_gives_the_logits_of_one(deep, monkeypatch):
    """Prefill calls cut anywhere (97 rows: tiles, key blocks and decode chunks cut mid-way)
    and greedy decode after: the same logits as calls of 512 rows, to the bit."""
    _, art = deep("deepseek_v3")
    prompt = np.random.default_rng(9).integers(2, 320, 1500).astype(np.int64)
    backend = NativeMlaBackend(art, 2)
    runs = []
    for rows in (512, 97):
        monkeypatch.setattr(native_backend, "PREFILL_ROWS", rows)
        backend.start(2, 1600)
        logits = [backend.prefill([1], [prompt], every_position=True)[0]]
        for _ in range(4):
            logits.append(backend.decode(np.array([3, logits[-1][-1].argmax()]))[1][None].copy())
        runs.append(np.concatenate(logits))
    np.testing.assert_array_equal(runs[1], runs[0])


def test_greedy_is_the_same_at_batch_1_and_64_at_depth(deep):
    """A 2,100-token prompt beside 63 short ones (one prefill, then 64 rows a decode step) and
    alone (decode split over its key chunks): the same greedy tokens."""
    _, art = deep("deepseek_v2")
    rng = np.random.default_rng(10)
    params = SamplingParams(max_new_tokens=5, ignore_eos=True)
    lengths = [2100, *rng.integers(3, 300, 63)]
    reqs = [gen.Request(i, rng.integers(2, 320, n).astype(np.int64), params)
            for i, n in enumerate(lengths)]
    backend = NativeMlaBackend(art, 4)
    assert_alone_as_in_batch(backend, reqs, 64, CONTEXT)


@pytest.mark.parametrize("tiles", [True, False])
def test_keeping_a_prompts_decompressed_keys_between_calls_changes_no_bit(deep, monkeypatch,
                                                                          tiles):
    """A long prompt prefilled in many calls keeps its decompressed keys and values from call to
    call (each call decompresses its own rows): the same logits, prefill and decode, as with
    nothing kept (every call decompresses the whole prefix). Calls through every layer keeping
    as many leading layers as the budget holds (the first prompt only, some of a prompt's
    layers), and calls layer by layer keeping one layer at a time beside the rows' hidden states
    (a later prompt kept where an earlier one does not fit; where the hidden states alone fill
    the budget, calls through every layer again), beside short prompts in the same calls. With
    either prompt attention kernel."""
    _, art = deep("deepseek_v2")
    rng = np.random.default_rng(12)
    prompts = [rng.integers(2, 320, n).astype(np.int64) for n in (1300, 9, 700, 40)]
    monkeypatch.setattr(native_backend, "PREFILL_ROWS", 200)
    backend = NativeMlaBackend(art, 3, prompt_tiles=tiles)
    layers = backend.layers
    assert layers >= 2
    kept_bytes = backend.lib.em_kept_bytes
    one = kept_bytes(backend._model, 1300, layers)
    first_layer = kept_bytes(backend._model, 1300, 1)
    second_layer = kept_bytes(backend._model, 700, 1)
    assert one == layers * first_layer and second_layer < first_layer
    hidden = sum(map(len, prompts)) * backend.hidden_size * 4  # layer by layer holds them too
    every = [(0, layers), (2, layers)]
    cases = [(False, 0, []), (False, one, [(0, layers)]), (False, first_layer, [(0, 1)]),
             (False, one + second_layer, [(0, layers), (2, 1)]), (False, 1 << 30, every),
             (True, 0, []), (True, hidden + first_layer, [(0, layers)]),
             (True, hidden + second_layer, [(2, layers)]),
             (True, hidden + first_layer + second_layer, every),
             (True, hidden, [(0, min(layers, hidden // first_layer))][:hidden // first_layer])]
    runs = []
    for layer_major, budget, kept in cases:
        backend.layer_major, backend.keep_decompressed_bytes = layer_major, budget
        backend.start(4, 1400)
        logits = [backend.prefill([0, 1, 2, 3], prompts, every_position=True)]
        assert backend.kept_slots == kept  # slots 1 and 3 lie in one call each
        for tokens in ([3, 5, 7, 11], [13, 17, 19, 23], [29, 31, 37, 41]):
            logits.append(backend.decode(np.array(tokens))[:, None].copy())
        runs.append(np.concatenate([logits[0][:, -300:], *logits[1:]], 1))
    for run in runs[1:]:
        np.testing.assert_array_equal(run, runs[0])


def test_a_straddling_prompt_runs_every_call_through_a_layer_before_the_next(deep, monkeypatch):
    """Layer by layer (the default where a prompt's one layer fits the budget): each call's rows
    through layer 0, then each through layer 1, ..., the logits at the last layer's calls
    alone; with nothing kept, each call through every layer at once."""
    _, art = deep("deepseek_v2")
    rng = np.random.default_rng(13)
    prompts = [rng.integers(2, 320, n).astype(np.int64) for n in (450, 30)]
    monkeypatch.setattr(native_backend, "PREFILL_ROWS", 200)
    backend = NativeMlaBackend(art, 2)
    seen = []
    forward = backend._forward

    def recording(ids, slots, positions, logit_rows, logits, prompt=False, layers=None,
                  hidden=None):
        seen.append((layers, len(ids), len(logit_rows)))
        forward(ids, slots, positions, logit_rows, logits, prompt, layers, hidden)

    monkeypatch.setattr(backend, "_forward", recording)
    backend.start(2, 600)
    backend.prefill([0, 1], prompts)
    L = backend.layers
    assert seen == [((l, l + 1), n, (l == L - 1) * logits) for l in range(L)
                    for n, logits in ((200, 0), (200, 0), (80, 2))]
    seen.clear()
    backend.keep_decompressed_bytes = 0
    backend.start(2, 600)
    backend.prefill([0, 1], prompts)
    assert seen == [(None, 200, 0), (None, 200, 0), (None, 80, 2)]
