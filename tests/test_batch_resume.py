"""Resume by content and one writer per output (issue 21, items 2 and 3)."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from batch_helpers import ENV, infer, infer_cmd, read_out, run_in_process, write_prompts

from edgeds.batch.output import OutputBusy, OutputLog, ResumeError


@pytest.fixture(scope="module")
def engine(artifacts):
    from edgeds.engine import load

    return load(artifacts("qwen2", "int8"), backend="onnxruntime")


def lines_of(path):
    return path.read_bytes().splitlines(keepends=True)


def test_inserted_lines_are_computed_and_done_ones_kept(engine, tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_prompts(inp, 10)
    run_in_process(engine, inp, out)
    before = {rec["id"]: rec for rec in read_out(out)}
    rows = inp.read_text().splitlines(keepends=True)
    new = [json.dumps({"id": f"new{i}", "prompt": f"class C{i}:"}) + "\n" for i in range(3)]
    inp.write_text("".join(rows[:2] + new[:2] + rows[2:7] + new[2:] + rows[7:]))
    stats = run_in_process(engine, inp, out)
    assert (stats.skipped, stats.ok, stats.failed) == (10, 3, 0)
    after = {rec["id"]: rec for rec in read_out(out)}
    assert sorted(after) == sorted([*before, "new0", "new1", "new2"])
    assert all(after[i] == before[i] for i in before)  # the very records: latency_s included
    assert not (tmp_path / "out.jsonl.replaced.jsonl").exists()


def test_a_changed_request_is_recomputed_and_its_old_record_moved_aside(engine, tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_prompts(inp, 5)
    run_in_process(engine, inp, out)
    old = {rec["id"]: rec for rec in read_out(out)}
    rows = inp.read_text().splitlines(keepends=True)
    rows[3] = json.dumps({"id": "r3", "prompt": "import sys"}) + "\n"
    rows[1] = json.dumps({"id": "r1", "prompt": "def f1(x):", "max_new_tokens": 2}) + "\n"
    inp.write_text("".join(rows))
    stats = run_in_process(engine, inp, out)
    assert (stats.skipped, stats.ok) == (3, 2)
    new = read_out(out)
    assert sorted(rec["id"] for rec in new) == [f"r{i}" for i in range(5)]  # one per id
    by_id = {rec["id"]: rec for rec in new}
    assert by_id["r1"]["usage"]["completion_tokens"] <= 2
    assert by_id["r3"]["request_digest"] != old["r3"]["request_digest"]
    replaced = read_out(tmp_path / "out.jsonl.replaced.jsonl")
    assert sorted(replaced, key=lambda r: r["id"]) == [old["r1"], old["r3"]]  # nothing lost
    assert not (tmp_path / "out.jsonl.damaged").exists()  # no empty side file either


def test_error_records_are_retried_and_identical_ones_left_alone(engine, tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    good = json.dumps({"id": "a", "prompt": "import os"}) + "\n"
    inp.write_text(good + '{"id": "b", "prompt": "x", "temperature": -1}\n' + "not json\n")
    stats = run_in_process(engine, inp, out)
    assert (stats.ok, stats.failed) == (1, 2)
    first = out.read_bytes()
    stats = run_in_process(engine, inp, out)  # the same errors again: the output is untouched
    assert (stats.skipped, stats.failed) == (1, 2) and out.read_bytes() == first
    assert not (tmp_path / "out.jsonl.replaced.jsonl").exists()
    inp.write_text(good + json.dumps({"id": "b", "prompt": "x"}) + "\n"
                   + json.dumps({"id": "c", "prompt": "y"}) + "\n")
    stats = run_in_process(engine, inp, out)
    assert (stats.skipped, stats.ok, stats.failed) == (1, 2, 0)
    recs = read_out(out)
    assert sorted(r["id"] for r in recs) == ["a", "b", "c"] and not any("error" in r for r in recs)
    aside = read_out(tmp_path / "out.jsonl.replaced.jsonl")
    assert sorted(r.get("field", "") for r in aside) == ["", "temperature"]


def test_a_damaged_line_is_moved_aside_and_every_valid_record_kept(engine, tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_prompts(inp, 8)
    run_in_process(engine, inp, out)
    rows = lines_of(out)
    damaged = rows[3][:20] + b"\x00\x00\xff garbage\n"
    out.write_bytes(b"".join(rows[:3] + [damaged] + rows[4:]) + rows[5][:30])  # + a cut tail
    stats = run_in_process(engine, inp, out)
    assert (stats.skipped, stats.ok) == (7, 1)
    after = lines_of(out)
    assert sorted(json.loads(r)["id"] for r in after) == [f"r{i}" for i in range(8)]
    assert set(rows) - {rows[3]} <= set(after)  # every valid record, byte for byte
    assert lines_of(tmp_path / "out.jsonl.damaged") == [rows[5][:30] + b"\n", damaged]


def test_a_greedy_job_is_not_redone_for_a_new_seed(engine, tmp_path):
    from edgeds.batch import JobOptions, run_job
    from edgeds.sampling import SamplingParams

    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_prompts(inp, 4)
    for seed, computed in ((0, 4), (7, 0)):
        opts = JobOptions(str(inp), str(out), SamplingParams(max_new_tokens=3, seed=seed))
        import io

        assert run_job(engine, opts, progress_stream=io.StringIO()).ok == computed


def test_an_output_not_written_by_edgeds_is_refused(tmp_path):
    out = tmp_path / "precious.jsonl"
    out.write_text('{"id": 1, "mine": true}\n')
    with pytest.raises(ResumeError, match="not an edgeds output"):
        OutputLog(out)
    assert out.read_text() == '{"id": 1, "mine": true}\n'


def test_a_second_writer_exits_at_once_and_writes_nothing(artifacts, tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_prompts(inp, 3)
    with OutputLog(out) as held:
        held.start({"held": True})
        held.write({"id": "x", "text": "y"})
        with pytest.raises(OutputBusy):
            OutputLog(out)
        before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
        t0 = time.monotonic()
        r = infer(artifacts("qwen2", "int8"), inp, out, "--max-new-tokens", 3)
        waited = time.monotonic() - t0
        assert r.returncode == 2, r.stderr
        assert "being written by another edgeds process" in r.stderr and "profile" not in r.stderr
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert waited < 60
    r = infer(artifacts("qwen2", "int8"), inp, out, "--max-new-tokens", 3)  # the lock went with it
    assert r.returncode == 0, r.stderr


def test_two_concurrent_runs_on_one_output(artifacts, tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    # Long enough that the first job still runs when the second has started: with passive
    # OpenMP threads the native backend ended 300 records before a second python had loaded.
    n = 3000
    write_prompts(inp, n)
    cmd = infer_cmd(artifacts("qwen2", "int8"), inp, out, "--max-new-tokens", 24, "--batch-size", 2)
    first = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.monotonic() + 120
    while not (out.exists() and out.read_bytes().count(b"\n") >= 2):
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.02)
    second = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120,
                            check=False)
    assert first.poll() is None, "the first job ended before the second tried"
    assert second.returncode == 2 and "being written by another edgeds process" in second.stderr
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert sorted(rec["id"] for rec in read_out(out)) == sorted(f"r{i}" for i in range(n))
