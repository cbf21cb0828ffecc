"""The prefix KV cache (edgeds/prefix_cache.py): chained block keys, eviction, and greedy tokens
identical with and without it on the native backends."""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import numpy as np
import pytest

import edgeds
import edgeds.artifact
from edgeds import generate as gen
from edgeds import native
from edgeds.hardware import detect
from edgeds.prefix_cache import PrefixCache, block_keys, namespace
from edgeds.sampling import SamplingParams

NO_NATIVE = native.unavailable(detect().flags)


def test_keys_chain_over_every_token_before_them():
    root = namespace("a" * 64, "layout", 4)
    ids = np.arange(10, 23)
    keys = block_keys(root, ids, 4)
    assert len(keys) == 3  # the 13th token is no whole block
    assert block_keys(root, ids[:8], 4) == keys[:2]
    changed = ids.copy()
    changed[1] = 99
    assert not set(block_keys(root, changed, 4)) & set(keys)  # a token changes every key after
    same_block_elsewhere = np.concatenate([ids[4:8], ids[4:8]])
    assert block_keys(root, same_block_elsewhere, 4)[1] != keys[1]
    for other in (namespace("b" * 64, "layout", 4), namespace("a" * 64, "other", 4)):
        assert not set(block_keys(other, ids, 4)) & set(keys)


class _Rows:
    """A fake backend's rows: block k of a sequence holds its tokens."""

    def __init__(self, ids):
        self.ids = ids

    def __call__(self, k):
        return np.asarray(self.ids[k * 4:(k + 1) * 4], np.float32)


def test_eviction_drops_the_least_recently_used_leaf_within_the_budget():
    cache = PrefixCache(namespace("a" * 64, "fake", 4), 4, budget_bytes=5 * 16)  # 5 blocks
    a, b = np.arange(0, 13), np.concatenate([np.arange(0, 8), np.arange(50, 55)])
    keys_a, rows = cache.lookup(a)
    assert rows == []
    cache.insert(keys_a, 0, _Rows(a))  # 3 blocks
    keys_b, rows = cache.lookup(b)
    assert [r.tolist() for r in rows] == [[0, 1, 2, 3], [4, 5, 6, 7]]  # shares a's first two
    cache.insert(keys_b, 2, _Rows(b))  # b's third block: 4 in all
    assert len(cache.blocks) == 4 and cache.bytes == 64
    c = np.arange(100, 109)
    keys_c, _ = cache.lookup(c)
    cache.insert(keys_c, 0, _Rows(c))  # 2 more: one must go, a's tail (the oldest leaf)
    assert cache.bytes <= cache.budget_bytes and cache.stats.evicted == 1
    assert keys_a[2] not in cache.blocks
    assert all(k in cache.blocks for k in keys_a[:2] + keys_b + keys_c)
    # Heads are never dropped before the blocks chained after them.
    for key, block in cache.blocks.items():
        assert block.parent is None or block.parent in cache.blocks
    tiny = PrefixCache(namespace("a" * 64, "fake", 4), 4, budget_bytes=8)
    tiny.insert(*tiny.lookup(a)[:1], 0, _Rows(a))
    assert not tiny.blocks  # a block over the budget is not kept



def test_a_chain_longer_than_the_budget_keeps_its_head_and_leaves_no_orphan_tail():
    cache = PrefixCache(namespace("a" * 64, "fake", 4), 4, budget_bytes=2 * 16)  # 2 blocks
    a = np.arange(0, 13)
    keys, _ = cache.lookup(a)
    cache.insert(keys, 0, _Rows(a))  # 3 blocks: the third does not fit beside its head
    assert list(cache.blocks) == keys[:2] and cache.stats.evicted == 0
    assert [r.tolist() for r in cache.lookup(a)[1]] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    b = np.arange(50, 59)
    keys_b, _ = cache.lookup(b)
    cache.insert(keys_b, 0, _Rows(b))  # a newer chain: a's tail goes, then a's head
    assert list(cache.blocks) == keys_b and cache.stats.evicted == 2

def test_blocks_reach_the_store_at_drain_and_a_new_cache_reads_them_back(tmp_path):
    """insert keeps a block in memory at once but writes it at the next drain (the generate
    loop's, after the step's tokens): no first token waits on the disk."""
    from edgeds.prefix_store import PrefixStore

    root, a = namespace("a" * 64, "fake", 4), np.arange(0, 13)
    store = PrefixStore(tmp_path / "pc", root.hex(), np.float32, (4,), 1 << 20)
    cache = PrefixCache(root, 4, 1 << 20, store)
    keys, _ = cache.lookup(a)
    cache.insert(keys, 0, _Rows(a))
    assert len(cache.blocks) == 3 and store.total_bytes() == 0
    cache.drain()
    assert store.total_bytes() == 3 * 16 and cache.stats.blocks_written == 3
    fresh = PrefixCache(root, 4, 1 << 20, store)
    _, rows = fresh.lookup(a)
    assert [r.tolist() for r in rows] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert fresh.stats.disk_hits == 3 and len(fresh.blocks) == 3  # kept in memory after
    fresh.lookup(a)
    assert fresh.stats.disk_hits == 3  # the second time from memory: no read, no re-hash


def _run(engine, prompts, batch_size, n=12):
    reqs = [gen.Request(i, p, SamplingParams(max_new_tokens=n, ignore_eos=True))
            for i, p in enumerate(prompts)]
    done = {e.key: e.token_ids for e in engine.run(reqs, batch_size)
            if isinstance(e, gen.Finished)}
    return [done[i] for i in range(len(prompts))]


def _prompts(seed=3):
    rng = np.random.default_rng(seed)
    shared = rng.integers(2, 320, 52)
    tails = [rng.integers(2, 320, n) for n in (7, 1, 20, 33, 12)]
    prompts = [np.concatenate([shared, t]).astype(np.int64) for t in tails]
    prompts.append(shared[:40].astype(np.int64))  # a prompt inside another's prefix
    return prompts


@pytest.mark.parametrize("backend,kind,kv_cache", [
    ("native", "qwen2", "float32"), ("native", "llama", "float16"),
    ("native", "deepseek_v2", "float32"), ("onnxruntime", "llama", "float16"),
    ("onnxruntime", "deepseek_v2", "float32")])
def test_greedy_tokens_are_the_same_with_and_without_the_cache(backend, kind, kv_cache,
                                                               artifacts):
    if backend == "native" and NO_NATIVE is not None:
        pytest.skip(str(NO_NATIVE))
    folder = artifacts(kind, "int8", kv_cache)
    plain = edgeds.load(folder, backend=backend, profile="cpu-avx512", prefix_cache=False)
    cached = edgeds.load(folder, backend=backend, profile="cpu-avx512")
    assert plain.prefix is None
    cached.enable_prefix_cache(block_tokens=16)
    prompts = _prompts()
    want = _run(plain, prompts, 3)
    assert _run(cached, prompts, 3) == want  # the first three in one call: two wait for the first
    s = replace(cached.prefix.stats)
    assert s.hits >= 4 and s.tokens_reused >= 4 * 48
    assert _run(cached, prompts, 2) == want  # again, refilled slots, everything cached
    assert cached.prefix.stats.since(s).hits == len(prompts)


@pytest.mark.skipif(NO_NATIVE is not None, reason=str(NO_NATIVE))
def test_doctor_says_what_the_backend_chosen_for_the_artifact_does(artifacts, monkeypatch):
    from edgeds.backends.native_mla import NativeMlaBackend
    from edgeds.doctor import diagnose, format_report

    mla, dense = str(artifacts("deepseek_v2", "int8")), str(artifacts("qwen2", "int8"))
    report = diagnose(mla, profile="cpu-avx512", backend="native")
    assert report["prefix_cache"].startswith("yes")
    assert f"prefix cache: {report['prefix_cache']}" in format_report(report)
    assert diagnose(mla, profile="cpu-avx512", backend="onnxruntime")["prefix_cache"].startswith(
        "yes")
    int8 = str(artifacts("llama", "int8", "int8"))
    ort = diagnose(int8, profile="cpu-avx512", backend="onnxruntime")["prefix_cache"]
    assert ort.startswith("onnxruntime: an int8-cache graph")
    engine = edgeds.load(int8, backend="onnxruntime", profile="cpu-avx512")
    assert engine.prefix is None and engine.enable_prefix_cache() == ort
    if importlib.util.find_spec("openvino"):
        ov = diagnose(mla, profile="cpu-avx512", backend="openvino")["prefix_cache"]
        assert ov.startswith("openvino keeps its cache as state")
    # The line is the class's own flag: turned off on the MLA class, it says so for MLA only.
    monkeypatch.setattr(NativeMlaBackend, "supports_prefix_cache", False)
    monkeypatch.setattr(NativeMlaBackend, "no_prefix_cache", "no latent rows", raising=False)
    assert diagnose(mla, profile="cpu-avx512", backend="native")["prefix_cache"] == "no latent rows"
    assert diagnose(dense, profile="cpu-avx512", backend="native")["prefix_cache"].startswith("yes")
    engine = edgeds.load(mla, backend="native", profile="cpu-avx512", prefix_cache=False)
    assert engine.enable_prefix_cache() == "no latent rows" and engine.prefix is None


def test_doctor_says_a_float16_cache_on_a_cuda_provider_keeps_no_prefix_cache(artifacts,
                                                                             monkeypatch):
    """ONNX Runtime keeps a float16 cache in device memory on CUDA (no rows to copy): doctor
    says so for that provider, as the loaded backend would; on the CPU provider it is reused."""
    import edgeds.backends.onnxruntime.plan as sel
    from edgeds.backends.onnxruntime import OnnxRuntimeBackend
    from edgeds.doctor import diagnose

    half, full = artifacts("llama", "fp32", "float16"), artifacts("llama", "fp32", "float32")
    monkeypatch.setattr(sel, "ort_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    said = diagnose(str(half), profile="jetson-orin-nx", backend="onnxruntime")["prefix_cache"]
    assert said.startswith("onnxruntime on CUDAExecutionProvider: the float16 cache lives in "
                           "device memory") and "--prefix-cache DIR is refused" in said
    for folder in (full, half):  # float32 on CUDA: host buffers; float16 on the CPU: the same
        providers = ["CUDAExecutionProvider"] if folder == full else ["CPUExecutionProvider"]
        art = edgeds.artifact.load_artifact(str(folder), verify=False)
        assert OnnxRuntimeBackend.no_prefix_cache_for(art, providers) is None
    cpu = diagnose(str(half), profile="cpu-avx512", backend="onnxruntime")["prefix_cache"]
    assert cpu.startswith("yes")
