"""The generate loop: continuous batching, stop conditions, streaming, the Python API."""

from __future__ import annotations

import numpy as np
import pytest

import edgeds
from edgeds import generate as gen
from edgeds.sampling import SamplingParams


@pytest.fixture(scope="module")
def engine(artifacts):
    return edgeds.load(artifacts("qwen2", "int8"), backend="onnxruntime")


class CountingBackend:
    """Wraps a backend to record how the loop drives it."""

    def __init__(self, inner):
        self.inner = inner
        self.prefills: list[list[int]] = []
        self.prompt_lengths: list[list[int]] = []
        self.decodes = 0
        self.capacities: list[int] = []
        self.supports_refill = inner.supports_refill

    def start(self, batch_size, capacity):
        self.capacities.append(capacity)
        self.batch_size = batch_size
        return self.inner.start(batch_size, capacity)

    def grow(self, capacity):
        self.capacities.append(capacity)
        return self.inner.grow(capacity)

    def prefill(self, slots, prompts, every_position=False):
        self.prefills.append(list(slots))
        self.prompt_lengths.append([len(p) for p in prompts])
        return self.inner.prefill(slots, prompts, every_position)

    def decode(self, tokens):
        self.decodes += 1
        return self.inner.decode(tokens)

    def release(self, slot):
        return self.inner.release(slot)


def requests(lengths_and_budgets, seed=0, ignore_eos=True):
    rng = np.random.default_rng(seed)
    return [gen.Request(i, rng.integers(2, 320, n).astype(np.int64),
                        SamplingParams(max_new_tokens=m, ignore_eos=ignore_eos))
            for i, (n, m) in enumerate(lengths_and_budgets)]


def test_finished_slot_takes_the_next_prompt_at_once(engine):
    backend = CountingBackend(engine.backend)
    reqs = requests([(5, 2), (9, 20), (4, 3), (7, 3), (6, 3)])
    done = [e for e in gen.run(backend, reqs, 2, 128, set()) if isinstance(e, gen.Finished)]
    assert sorted(len(d.token_ids) for d in done) == [2, 3, 3, 3, 20]
    # First both slots together, then slot 0 is refilled three times while slot 1 keeps decoding.
    assert backend.prefills == [[0, 1], [0], [0], [0]]
    assert backend.decodes == 19  # the long request bounds the job: no step waits for a wave
    alone = {r.key: [e for e in gen.run(engine.backend, [r], 1, 128, set())
                     if isinstance(e, gen.Finished)][0].token_ids
             for r in requests([(5, 2), (9, 20), (4, 3), (7, 3), (6, 3)])}
    assert {d.key: d.token_ids for d in done} == alone


def test_a_job_smaller_than_the_batch_takes_only_the_slots_it_needs(engine):
    """Three prompts with a batch of 8: every decode step computes three rows, not eight."""
    backend = CountingBackend(engine.backend)
    done = [e for e in gen.run(backend, iter(requests([(5, 4), (9, 6), (4, 3)])), 8, 128, set())
            if isinstance(e, gen.Finished)]
    assert backend.batch_size == 3 and sorted(len(d.token_ids) for d in done) == [3, 4, 6]
    backend = CountingBackend(engine.backend)
    list(gen.run(backend, iter(requests([(5, 2)] * 5)), 4, 128, set()))
    assert backend.batch_size == 4  # more prompts than slots: the batch as asked


def test_cache_grows_to_the_longest_request_and_keeps_what_it_holds(engine):
    lengths = [(5, 2), (9, 40), (60, 30)]
    backend = CountingBackend(engine.backend)
    done = {e.key: e.token_ids for e in gen.run(backend, requests(lengths), 2, 128, set())
            if isinstance(e, gen.Finished)}
    # Sized for the first two requests (9 + 40 tokens -> one 64-token step); grown to the
    # 128-token context when the third came, while request 1 was mid-way: its cache moved.
    assert backend.capacities == [64, 128]
    alone = {r.key: [e for e in gen.run(engine.backend, [r], 1, 128, set())
                     if isinstance(e, gen.Finished)][0].token_ids
             for r in requests(lengths)}
    assert done == alone and len(done[1]) == 40


def test_openvino_runs_waves_with_the_same_results(artifacts):
    ov = edgeds.load(artifacts("qwen2", "int8"), backend="openvino")
    ort = edgeds.load(artifacts("qwen2", "int8"), backend="onnxruntime")
    prompts = ["import os", "def f(x):\n    return", "class A:"]
    a = [r.token_ids for r in ov.generate(prompts, max_new_tokens=10, batch_size=2)]
    b = [r.token_ids for r in ort.generate(prompts, max_new_tokens=10, batch_size=2)]
    assert [len(x) for x in a] == [len(x) for x in b]


def test_eos_and_max_tokens_and_context(engine):
    eos_run = [e
               for e in gen.run(engine.backend, requests([(5, 50)], ignore_eos=False), 1, 128,
                                eos_ids=set(range(320)))
               if isinstance(e, gen.Finished)][0]
    assert eos_run.finish_reason == "stop" and eos_run.token_ids == []
    ctx = [e for e in gen.run(engine.backend, requests([(120, 50)]), 1, 128, set())
           if isinstance(e, gen.Finished)][0]
    # 120 + 8 = the 128-token context
    assert ctx.finish_reason == "context" and len(ctx.token_ids) == 8


def test_stop_strings_cut_the_text(engine):
    [free] = engine.generate(["import os"], max_new_tokens=30)
    stop = free.text[5:8]
    [cut] = engine.generate(["import os"], max_new_tokens=30, stop=(stop,))
    assert cut.finish_reason == "stop" and stop not in cut.text
    assert free.text.startswith(cut.text)


def test_stream_yields_the_same_text_as_generate(engine):
    [whole] = engine.generate(["def f(x):"], max_new_tokens=12)
    pieces = list(engine.stream("def f(x):", max_new_tokens=12))
    assert "".join(pieces) == engine.tokenizer.decode(whole.token_ids)
    assert len(pieces) > 1


def test_messages_use_the_chat_template(engine):
    [r] = engine.generate([[{"role": "user", "content": "hello"}]], max_new_tokens=4)
    ids = engine.encode([{"role": "user", "content": "hello"}]).tolist()
    assert ids[0] == 0 and engine.tokenizer.tok.token_to_id("<｜Assistant｜>") in ids
    assert r.prompt_tokens == len(ids)


def test_sampling_is_seeded_and_independent_of_batching(engine):
    kw = dict(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=3)
    alone = engine.generate(["import os"], **kw)[0].token_ids
    batched = engine.generate(["import os", "class A:", "x = 1"], batch_size=3, **kw)[0].token_ids
    assert alone == batched
    assert engine.generate(["import os"], **{**kw, "seed": 4})[0].token_ids != alone


def test_prefill_groups_stay_dense_and_bounded():
    from edgeds.backends.onnxruntime.backend import PREFILL_ROWS, _prefill_groups

    assert PREFILL_ROWS == 512
    # 512 rows a call
    assert _prefill_groups(list(range(16)), [128] * 16) == [(0, 4), (4, 8), (8, 12), (12, 16)]
    # padding would double the work
    assert _prefill_groups([0, 1, 2], [64, 500, 70]) == [(0, 1), (1, 2), (2, 3)]
    # only consecutive slots share a call
    assert _prefill_groups([0, 2, 3], [10, 10, 10]) == [(0, 1), (1, 3)]


def test_prompts_taken_together_fill_slots_shortest_first(engine):
    # Neighbouring slots share one padded prefill call only when their prompts are about as
    # long, so prompts taken together are laid out by length; results still go to their own ids.
    backend = CountingBackend(engine.backend)
    reqs = requests([(40, 2), (6, 2), (30, 2), (5, 2)])
    done = {e.key: e for e in gen.run(backend, reqs, 4, 128, set()) if isinstance(e, gen.Finished)}
    assert backend.prompt_lengths == [[5, 6, 30, 40]]
    assert {k: d.prompt_tokens for k, d in done.items()} == {0: 40, 1: 6, 2: 30, 3: 5}


def test_grouped_prefill_matches_one_prompt_at_a_time(engine):
    prompts = [np.random.default_rng(i).integers(2, 320, 20).astype(np.int64) for i in range(4)]
    backend = engine.backend
    backend.start(4, 64)
    together = backend.prefill([0, 1, 2, 3], prompts)  # one padded call of 4 x 20 rows
    alone = []
    for p in prompts:
        backend.start(1, 64)
        alone.append(backend.prefill([0], [p])[0])
    np.testing.assert_allclose(together, np.stack(alone), atol=1e-4)


@pytest.mark.parametrize("model", ["qwen2", "deepseek_v3"])
def test_long_prompt_prefills_in_chunks_with_the_same_logits(artifacts, monkeypatch, model):
    from edgeds.backends.onnxruntime import backend as ort_backend

    backend = edgeds.load(artifacts(model, "fp32"), backend="onnxruntime").backend
    prompt = np.random.default_rng(3).integers(2, 320, 100).astype(np.int64)
    backend.start(1, 128)
    whole = backend.prefill([0], [prompt])[0]
    whole_next = backend.decode(np.array([7]))[0]
    monkeypatch.setattr(ort_backend, "PREFILL_ROWS", 32)  # 4 calls: 32 + 32 + 32 + 4 tokens
    calls = []
    run = backend._run_prompts
    monkeypatch.setattr(backend, "_run_prompts",
                        lambda *a, **k: calls.append(k.get("past", 0)) or run(*a, **k))
    backend.start(1, 128)
    for cache in backend.cache.keys + backend.cache.values:
        cache[:] = 0  # nothing left from the unchunked run
    chunked = backend.prefill([0], [prompt])[0]
    assert calls == [0, 32, 64, 96]
    np.testing.assert_allclose(chunked, whole, atol=1e-5)
    # the cache is complete
    np.testing.assert_allclose(backend.decode(np.array([7]))[0], whole_next, atol=1e-5)


def test_decode_steps_bound_again_each_step_give_the_same_logits(artifacts):
    """With a GPU provider ONNX Runtime copies a bound CPU input at binding time, so the backend
    binds the step inputs again before every decode step; that path must equal binding once."""
    from edgeds.artifact import load_artifact
    from edgeds.backends.onnxruntime import OnnxRuntimeBackend

    art = load_artifact(artifacts("qwen2", "int8"))

    def steps(bind_every_step: bool) -> np.ndarray:
        backend = OnnxRuntimeBackend(art, ["CPUExecutionProvider"], 1)
        backend._copied_at_bind = bind_every_step
        backend.start(2, 64)
        out = [backend.prefill([0, 1], [np.arange(10, 22), np.arange(40, 47)])]
        for t in range(6):
            out.append(backend.decode(np.array([11 + t, 50 + 3 * t])).copy())
        return np.stack(out)

    once, every = steps(False), steps(True)
    np.testing.assert_array_equal(once, every)
    assert not np.allclose(once[1], once[2])  # the steps differ: inputs really changed between them
