"""Sequences that share a cached prompt prefix share its KV blocks on the native dense backend
(kv_blocks.py): one physical copy in every slot's table, reference counted, copied before a write,
freed after its last holder; and the tokens are those of a run without the prefix cache."""

from __future__ import annotations

import numpy as np
import pytest
from test_prefix_cache import _run

import edgeds
from edgeds import native, prefix_cache
from edgeds.backends.kv_blocks import BLOCK_TOKENS, BlockPool, BlockTables, PinnedBlock
from edgeds.hardware import detect

NO_NATIVE = native.unavailable(detect().flags)
CONTEXT = 320


def test_a_block_is_freed_after_its_last_holder_and_copied_before_a_shared_write():
    pool = BlockPool(2, 1, 4, np.float32)
    tables = BlockTables(pool, 2, 4 * BLOCK_TOKENS)
    tables.reserve(0, 2 * BLOCK_TOKENS + 2)  # three blocks
    first, second = (int(b) for b in tables.table[0, :2])
    pool.keys(second)[...] = 7.0
    pinned = PinnedBlock(pool, first)
    tables.share(1, 0, first)
    tables.share(1, 1, second)
    assert list(tables.table[1, :2]) == [first, second] and tables.held[1] == 2
    assert pool.refs[first] == 3 and pool.refs[second] == 2
    tables.own_from(1, BLOCK_TOKENS + 5)  # slot 1 writes into its second block: a copy first
    own = int(tables.table[1, 1])
    assert own != second and np.all(pool.keys(own) == 7.0) and pool.refs[second] == 1
    assert int(tables.table[1, 0]) == first  # the block before the write stays shared
    tables.own_from(1, BLOCK_TOKENS)  # already its own: nothing copied
    assert int(tables.table[1, 1]) == own
    tables.release(0)
    assert pool.in_use == 2  # slot 0's last two went back; the shared first one did not
    assert second in pool.free
    tables.release(1)
    assert pool.in_use == 1  # the pinned one stays
    pinned.drop()
    pinned.drop()  # dropping twice gives back once
    assert pool.in_use == 0
    with pytest.raises(RuntimeError, match="given back twice"):
        pool.give_back([first])
    with pytest.raises(RuntimeError, match="held while free"):
        PinnedBlock(pool, first)
    with pytest.raises(ValueError, match="block 3 of a slot"):
        tables.share(0, 3, pool.take())  # a gap in the slot's blocks


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, checkpoints):
    from edgeds_export import export_checkpoint

    out = tmp_path_factory.mktemp("shared") / "qwen2"
    export_checkpoint(checkpoints("qwen2"), out, weights="int8", context=CONTEXT)
    return out


def _prompts(seed: int = 5, shared_tokens: int = 3 * BLOCK_TOKENS + 10):
    rng = np.random.default_rng(seed)
    shared = rng.integers(2, 320, shared_tokens)
    return [np.concatenate([shared, rng.integers(2, 320, n)]).astype(np.int64)
            for n in (3, 17, 1, 40, 9)]


@pytest.mark.skipif(NO_NATIVE is not None, reason=str(NO_NATIVE))
def test_slots_hold_one_copy_of_a_shared_prefix_and_decode_the_same_logits(artifact):
    cached = edgeds.load(artifact, backend="native", profile="cpu-avx512")
    plain = edgeds.load(artifact, backend="native", profile="cpu-avx512", prefix_cache=False)
    assert cached.prefix.block_tokens == BLOCK_TOKENS == cached.backend.shared_block_tokens
    prompts = _prompts()[:3]
    backend, cache = cached.backend, cached.prefix
    backend.start(3, CONTEXT)
    plain.backend.start(3, CONTEXT)
    got = prefix_cache.prefill(backend, cache, [0, 1, 2], prompts)
    want = plain.backend.prefill([0, 1, 2], prompts)
    np.testing.assert_array_equal(got, want)
    table, refs = backend.blocks.table, backend.pool.refs
    shared = table[0, :3]
    assert (table[1, :3] == shared).all() and (table[2, :3] == shared).all()
    assert (refs[shared] == 4).all()  # three slots and the prefix cache
    assert len(set(table[:, 3])) == 3  # each prompt's own last block
    # 3 x 4 blocks without sharing; 3 shared + 3 own with it.
    assert backend.pool.in_use == 6
    tokens = np.argmax(want, axis=1)
    for _ in range(70):  # past the next block boundary of every slot
        got, want = backend.decode(tokens), plain.backend.decode(tokens)
        np.testing.assert_array_equal(got, want)
        tokens = np.argmax(want, axis=1)
    assert (table[:, :3] == shared).all()  # decode wrote no shared block
    for slot in range(3):
        backend.release(slot)
    assert backend.pool.in_use == 3 and (refs[shared] == 1).all()  # the cache's alone


@pytest.mark.skipif(NO_NATIVE is not None, reason=str(NO_NATIVE))
def test_greedy_tokens_with_shared_blocks_match_a_run_without_the_cache(artifact):
    plain = edgeds.load(artifact, backend="native", profile="cpu-avx512", prefix_cache=False)
    cached = edgeds.load(artifact, backend="native", profile="cpu-avx512")
    prompts = _prompts() + _prompts(seed=6, shared_tokens=2 * BLOCK_TOKENS + 1)
    want = _run(plain, prompts, 4)
    assert _run(plain, prompts, 1) == want
    assert _run(cached, prompts, 4) == want
    assert _run(cached, prompts, 3) == want  # refilled slots, every prefix from the cache
    assert cached.prefix.stats.tokens_reused >= 2 * 5 * 3 * BLOCK_TOKENS


@pytest.mark.skipif(NO_NATIVE is not None, reason=str(NO_NATIVE))
def test_an_evicted_block_stays_with_the_slots_that_share_it(artifact):
    cached = edgeds.load(artifact, backend="native", profile="cpu-avx512")
    backend = cached.backend
    cache = prefix_cache.PrefixCache(cached.prefix.root, BLOCK_TOKENS,
                                     budget_bytes=3 * backend.pool.block_bytes)
    prompts = _prompts()[:2]
    backend.start(2, CONTEXT)
    prefix_cache.prefill(backend, cache, [0, 1], prompts)
    held = backend.blocks.table[1, :3].copy()
    assert len(cache.blocks) == 3 and (backend.blocks.table[0, :3] == held).all()
    # Slot 0 takes another prefix, whose blocks evict the three; slot 1 keeps them.
    prefix_cache.prefill(backend, cache, [0], [_prompts(seed=9)[0]])
    assert cache.stats.evicted == 3 and (backend.pool.refs[held] == 1).all()
    assert not set(held) & set(backend.blocks.table[0])
    backend.release(1)
    assert not backend.pool.refs[held].any() and set(held) <= set(backend.pool.free)


@pytest.mark.skipif(NO_NATIVE is not None, reason=str(NO_NATIVE))
def test_blocks_read_from_the_store_are_shared_by_the_slots_that_load_them_next(artifact,
                                                                                  tmp_path):
    from edgeds.backends.kv_blocks import PinnedBlock

    writer = edgeds.load(artifact, backend="native", profile="cpu-avx512",
                         prefix_cache=tmp_path / "pc")
    prompts = _prompts()
    want = _run(writer, prompts[:1], 1)
    writer.prefix.store.close()
    reader = edgeds.load(artifact, backend="native", profile="cpu-avx512",
                         prefix_cache=tmp_path / "pc")
    backend, cache = reader.backend, reader.prefix
    backend.start(2, CONTEXT)
    prefix_cache.prefill(backend, cache, [0], prompts[:1])
    assert cache.stats.disk_hits == 3
    assert all(isinstance(b.rows, PinnedBlock) for b in cache.blocks.values())
    prefix_cache.prefill(backend, cache, [1], prompts[1:2])
    assert (backend.blocks.table[1, :3] == backend.blocks.table[0, :3]).all()
    assert cache.stats.disk_hits == 3  # the second from memory, its blocks the first slot's
    backend.release(0), backend.release(1)
    assert _run(reader, prompts[:1], 1) == want
