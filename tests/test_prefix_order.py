"""The job's prefix order (edgeds/batch/prefix_order.py): requests sharing a prompt prefix run
side by side, every request runs once, none waits past the window, and a job's records (by id),
its resume and its greedy tokens are what they are in input order."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from batch_helpers import read_out, run_in_process

import edgeds
from edgeds import native
from edgeds.batch.prefix_order import PrefixOrder
from edgeds.hardware import detect


def _req(name, ids):
    return SimpleNamespace(name=name, prompt_ids=np.asarray(ids, np.int64))


def _docs(n_docs=3, questions=4, head=12):
    """Questions over documents, interleaved: d0q0 d1q0 d2q0 d0q1 ..."""
    rng = np.random.default_rng(0)
    docs = [rng.integers(2, 300, head) for _ in range(n_docs)]
    return [_req(f"d{d}q{q}", np.concatenate([docs[d], rng.integers(2, 300, 3)]))
            for q in range(questions) for d in range(n_docs)]


def test_requests_sharing_a_block_go_together_and_each_goes_once():
    reqs = _docs()
    got = [r.name for r in PrefixOrder(iter(reqs), block_tokens=8)]
    assert sorted(got) == sorted(r.name for r in reqs)
    docs = [name[:2] for name in got]
    assert docs == sorted(docs, key=docs.index)  # each document's questions in one run
    assert got[0] == "d0q0"  # the first request read goes first
    # Less than a whole block shared is no reason to reorder: input order stays.
    assert [r.name for r in PrefixOrder(iter(reqs), block_tokens=13)] == [r.name for r in reqs]


def test_none_ready_is_passed_on_only_when_nothing_waits_and_no_request_waits_past_the_window():
    reqs = _docs(2, 3)
    source = iter([None, reqs[0], None, None, *reqs[1:]])
    got = list(PrefixOrder(source, block_tokens=8))
    assert [r if r is None else r.name for r in got][:3] == [None, "d0q0", None]
    assert got.count(None) == 2  # the second None came while d0q0 waited: not passed on
    assert sorted(r.name for r in got if r is not None) == sorted(r.name for r in reqs)
    # One document's stream of questions, a lone other request early on: with a window of 3
    # it goes out within 3 hand-outs of coming in, however many questions keep coming.
    rng = np.random.default_rng(1)
    doc = rng.integers(2, 300, 16)
    stream = [_req(f"q{i}", np.concatenate([doc, [i + 2]])) for i in range(10)]
    stream.insert(2, _req("other", rng.integers(2, 300, 17)))
    names = [r.name for r in PrefixOrder(iter(stream), block_tokens=8, window=3)]
    assert 2 < names.index("other") <= 2 + 3


NO_NATIVE = native.unavailable(detect().flags)


@pytest.mark.skipif(NO_NATIVE is not None, reason=str(NO_NATIVE))
def test_a_job_runs_each_document_together_with_the_records_and_resume_of_input_order(
        tmp_path, artifacts):
    folder = artifacts("qwen2", "int8")
    docs = ["".join(f"doc{d}_{i} = {i} * {d}\n" for i in range(8)) for d in range(3)]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": f"d{d}q{q}", "prompt": docs[d] + f"q{q} = "}) + "\n"
                           for q in range(4) for d in range(3)))

    def job(out, prefix=True, **kw):
        engine = edgeds.load(folder, backend="native", profile="cpu-avx512", prefix_cache=False)
        if prefix:
            engine.enable_prefix_cache(block_tokens=8)
        return run_in_process(engine, inp, out, batch_size=1, max_new_tokens=6, **kw)

    plain, ordered = tmp_path / "plain.jsonl", tmp_path / "ordered.jsonl"
    job(plain, prefix=False)
    stats = job(ordered)
    want = {r["id"]: r["text"] for r in read_out(plain)}
    got = read_out(ordered)
    assert [r["id"] for r in read_out(plain)] == [f"d{d}q{q}" for q in range(4) for d in range(3)]
    assert {r["id"]: r["text"] for r in got} == want  # greedy tokens whatever the order
    runs = [r["id"][:2] for r in got]  # batch 1: records in the order they ran
    assert runs == sorted(runs, key=runs.index), runs
    assert stats.prefix_cache["hits"] == 9  # every question after its document's first
    # Resume: the first five records kept, the same command does the rest, nothing twice.
    lines = ordered.read_text().splitlines(keepends=True)
    ordered.write_text("".join(lines[:5]))
    again = job(ordered)
    assert again.skipped == 5 and again.ok == 7
    assert {r["id"]: r["text"] for r in read_out(ordered)} == want
    assert len(read_out(ordered)) == 12


@pytest.mark.skipif(NO_NATIVE is not None, reason=str(NO_NATIVE))
def test_a_fail_fast_job_reads_no_further_than_its_first_bad_line(tmp_path, artifacts):
    """The order reads 256 lines ahead: a fail-fast job would find its bad line while the lines
    before it wait, and stop without running them. It takes lines in input order instead."""
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    good = [json.dumps({"id": f"r{i}", "prompt": f"def f{i}(x):"}) for i in range(16)]
    inp.write_text("\n".join(good[:10] + ["not json"] + good[10:]) + "\n")
    engine = edgeds.load(artifacts("qwen2", "int8"), backend="native", profile="cpu-avx512")
    assert engine.prefix is not None
    stats = run_in_process(engine, inp, out, batch_size=2, max_new_tokens=3, fail_fast=True)
    records = read_out(out)
    assert sorted(r["id"] for r in records if "error" not in r) == sorted(
        f"r{i}" for i in range(10))
    assert [r["line"] for r in records if "error" in r] == [11] and stats.failed == 1
