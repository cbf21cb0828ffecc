"""The native dense decoder at depth: positions past 4,096 against transformers (plain and yarn
rope; float32 and float16
caches), its blocked KV cache, and attention that is bit for bit the same whether a prompt is
prefilled whole or in chunks, alone or in a batch of 64, decoded split over threads or not."""

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
from edgeds.backends.kv_blocks import BLOCK_TOKENS
from edgeds.backends.native import NativeBackend
from edgeds.hardware import detect
from edgeds.sampling import SamplingParams

pytestmark = pytest.mark.skipif(native.unavailable(detect().flags) is not None,
                                reason=str(native.unavailable(detect().flags)))

DEEP = 4400  # prompt tokens: past 4,096, over 17 attention splits and 69 cache blocks
CONTEXT = 4480
ROPES = {
    "plain": {},
    "yarn": {"rope_scaling": {"type": "yarn", "factor": 4.0,
                              "original_max_position_embeddings": 2048}},
}


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    from edgeds_export import export_checkpoint

    root, cache = tmp_path_factory.mktemp("deep"), {}

    def get(rope: str, kv_cache: str = "float32"):
        if rope not in cache:
            cache[rope] = make_checkpoint(root / f"ck-{rope}", "qwen2", seed=2,
                                          max_position_embeddings=8192, **ROPES[rope])
        if (rope, kv_cache) not in cache:
            out = root / f"art-{rope}-{kv_cache}"
            export_checkpoint(cache[rope], out, formats=("onnx",), weights="int8", context=CONTEXT,
                              kv_cache=kv_cache)
            cache[rope, kv_cache] = cache[rope], load_artifact(out)
        return cache[rope, kv_cache]

    return get


@pytest.mark.parametrize("kv_cache", ["float32", "float16"])
@pytest.mark.parametrize("rope", ["plain", "yarn"])
def test_logits_past_4096_follow_transformers(rope, kv_cache, deep):
    ck, art = deep(rope, kv_cache)
    prompt = np.random.default_rng(7).integers(2, 320, DEEP).astype(np.int64)
    ref_prefill, ref_decode, tokens = reference_logits(load_reference(ck), prompt, 6)
    backend = NativeBackend(art, 4)  # threads > rows x KV heads (2): decode splits over keys
    backend.start(1, CONTEXT)
    prefill = backend.prefill([0], [prompt], every_position=True)[0]
    scale = np.abs(ref_prefill[-256:]).max()
    errors = [np.abs(prefill[-256:] - ref_prefill[-256:]).max() / scale]
    agree = list(prefill[-256:].argmax(-1) == ref_prefill[-256:].argmax(-1))
    for step, expected in enumerate(ref_decode):
        got = backend.decode(np.array([tokens[step]]))[0]
        errors.append(np.abs(got - expected).max() / scale)
        agree.append(int(got.argmax()) == tokens[step + 1])
    assert max(errors) < 0.08  # the int8 bound of test_quantized_logit_error_is_bounded
    assert np.mean(agree) >= 0.85
    # The cache holds blocks for the tokens, not the capacity: 4,406 positions in 69 blocks.
    assert backend.blocks.held[0] == -(-(DEEP + 6) // BLOCK_TOKENS)


def test_a_long_prompt_in_chunks_gives_the_logits_of_one_call(deep, monkeypatch):
    _, art = deep("plain")
    prompt = np.random.default_rng(8).integers(2, 320, 1500).astype(np.int64)
    backend = NativeBackend(art, 2)
    backend.start(2, 1600)
    whole = backend.prefill([1], [prompt], every_position=True)
    monkeypatch.setattr(native_backend, "PREFILL_ROWS", 97)  # tiles and splits cut anywhere
    backend.start(2, 1600)
    chunked = backend.prefill([1], [prompt], every_position=True)
    np.testing.assert_array_equal(chunked, whole)


@pytest.mark.parametrize("kv_cache", ["float32", "float16"])
def test_greedy_is_the_same_at_batch_1_and_64_at_depth(kv_cache, deep):
    """Batch 1 decodes with its attention split over threads (flash-decoding: 4 threads, 2 KV
    heads); batch 64 one sequence per thread: the same tokens, bit for bit the same logits."""
    _, art = deep("plain", kv_cache)
    rng = np.random.default_rng(9)
    params = SamplingParams(max_new_tokens=5, ignore_eos=True)
    lengths = [1300, *rng.integers(3, 300, 63)]
    reqs = [gen.Request(i, rng.integers(2, 320, n).astype(np.int64), params)
            for i, n in enumerate(lengths)]
    backend = NativeBackend(art, 4)
    assert_alone_as_in_batch(backend, reqs, 64, CONTEXT)


def test_released_blocks_are_reused_and_idle_slots_hold_none(deep):
    _, art = deep("plain")
    backend = NativeBackend(art, 1)
    backend.start(4, 512)
    backend.prefill([0, 2], [np.full(200, 5, np.int64), np.full(10, 6, np.int64)])
    assert list(backend.blocks.held) == [4, 0, 1, 0]
    for _ in range(60):  # slot 2 crosses into its second block; idle slots 1 and 3 take none
        backend.decode(np.full(4, 7, np.int64))
    assert list(backend.blocks.held) == [5, 0, 2, 0]
    size = backend.pool.size
    backend.release(0)
    backend.prefill([1], [np.full(250, 5, np.int64)])
    assert backend.pool.size == size and list(backend.blocks.held) == [0, 4, 2, 0]


class WholePrefill:
    """The native backend without chunked prefill: the loop prefills every prompt in one go."""

    chunked_prefill = False

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_long_prompt_is_prefilled_in_chunks_between_the_others_decode_steps(deep):
    _, art = deep("plain")
    rng = np.random.default_rng(10)
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    short = [gen.Request(i, rng.integers(2, 320, 20).astype(np.int64), params) for i in range(3)]
    long = gen.Request("long", rng.integers(2, 320, 3 * gen.PREFILL_CHUNK + 100).astype(np.int64),
                       SamplingParams(max_new_tokens=6, ignore_eos=True))
    backend = NativeBackend(art, 2)

    def run(b):
        # Two short ones first; the long one and the third arrive while they decode.
        events = list(gen.run(b, [*short[:2], long, short[2]], 3, CONTEXT, set()))
        done = {e.key: e.token_ids for e in events if isinstance(e, gen.Finished)}
        order = [e.key for e in events if isinstance(e, gen.TokenEvent)]
        return done, order

    chunked, order = run(backend)
    whole, whole_order = run(WholePrefill(backend))
    assert chunked == whole and len(chunked) == 4
    # While the long prompt's four chunks ran, the short ones kept decoding.
    assert order.index("long") > 3 + whole_order.index("long")


def test_long_prompts_share_a_cached_document_chunk_by_chunk(deep):
    """Three questions over one 1,300-token document, prefilled in chunks side by side: the
    prefix cache gives later ones the chunks another computed, and greedy tokens are those of a
    run without it."""
    from edgeds import prefix_cache

    _, art = deep("plain")
    rng = np.random.default_rng(11)
    doc = rng.integers(2, 320, 1300)
    params = SamplingParams(max_new_tokens=5, ignore_eos=True)
    reqs = [gen.Request(i, np.concatenate([doc, rng.integers(2, 320, n)]).astype(np.int64), params)
            for i, n in enumerate((9, 40, 3))]
    backend = NativeBackend(art, 2)

    def run(prefix):
        return {e.key: e.token_ids for e in gen.run(backend, reqs, 3, CONTEXT, set(),
                                                     prefix=prefix)
                if isinstance(e, gen.Finished)}

    want = run(None)
    cache = prefix_cache.PrefixCache(prefix_cache.namespace("d" * 64, backend.cache_layout, 32))
    assert run(cache) == want
    s = cache.stats
    # Each computed a chunk the others then took: the document was computed about once.
    assert s.lookups == 3 and s.hits == 3 and s.tokens_prefilled < len(doc) + 3 * 64
    assert s.tokens_prefilled + s.tokens_reused == sum(len(r.prompt_ids) for r in reqs)
    assert run(cache) == want  # everything cached now: each prompt computes its last block only
    assert cache.stats.hits == 6 and cache.stats.tokens_prefilled < len(doc) + 6 * 64
