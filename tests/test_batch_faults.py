"""The batch job under faults: a full or read-only disk, bad paths, signals at any point, odd
input streams, kill -9 at random points (issue 21, items 4, 6, 7, 10)."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from batch_helpers import ENV, infer, infer_cmd, read_out, run_in_process, write_prompts

import edgeds.batch.output as output_module
from edgeds.batch.output import OutputError


@pytest.fixture(scope="module")
def engine(artifacts):
    from edgeds.engine import load

    return load(artifacts("qwen2", "int8"), backend="onnxruntime")


def whole_records(path):
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), "the output ends inside a record"
    return read_out(path)  # every line parses


def failing_writer(after_records: int, err: int):
    """os.write that writes `after_records` records, then half of the next and fails."""
    count = {"n": 0}

    def write(fd, data):
        if count["n"] >= after_records:
            os.write(fd, bytes(data[: len(data) // 2]))
            raise OSError(err, os.strerror(err))
        count["n"] += 1
        return os.write(fd, data)

    return write


@pytest.mark.parametrize("err, reason", [(errno.ENOSPC, "no space left"),
                                         (errno.EROFS, "read-only"), (errno.EIO, "error")])
def test_a_failing_disk_stops_the_job_on_a_whole_record_and_a_rerun_completes(
        engine, tmp_path, monkeypatch, err, reason):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_prompts(inp, 12)
    monkeypatch.setattr(output_module, "_write", failing_writer(5, err))
    with pytest.raises(OutputError) as caught:
        run_in_process(engine, inp, out)
    message = str(caught.value)
    assert str(out) in message and reason in message.lower() and "\n" not in message
    assert caught.value.exit_code == 3
    assert len(whole_records(out)) == 5
    monkeypatch.setattr(output_module, "_write", os.write)
    stats = run_in_process(engine, inp, out)
    assert (stats.skipped, stats.ok) == (5, 7)
    assert sorted(r["id"] for r in whole_records(out)) == sorted(f"r{i}" for i in range(12))


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs, for a real full disk and a real read-only one (needs root)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                      capture_output=True, check=False).returncode:
        pytest.skip("cannot mount a tmpfs here")

    def remount(options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(mnt)], check=True)

    yield mnt, remount
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_really_full_then_read_only_disk(artifacts, tmp_path, small_disk):
    mnt, remount = small_disk
    inp, out = tmp_path / "in.jsonl", mnt / "out.jsonl"
    write_prompts(inp, 400)
    r = infer(artifacts("qwen2", "int8"), inp, out, "--max-new-tokens", 16, "--batch-size", 16)
    assert r.returncode == 3, r.stderr
    [line] = [ln for ln in r.stderr.splitlines() if "error" in ln]
    assert line.startswith(f"edgeds: error: cannot write {out}: no space left"), line
    assert "Traceback" not in r.stderr
    done = whole_records(out)
    assert 0 < len(done) < 400
    remount("ro")
    r = infer(artifacts("qwen2", "int8"), inp, out, "--max-new-tokens", 16)
    assert r.returncode == 3 and "read-only" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert whole_records(out) == done
    remount("rw,size=4m")
    r = infer(artifacts("qwen2", "int8"), inp, out, "--max-new-tokens", 16, "--batch-size", 16)
    assert r.returncode == 0, r.stderr
    assert sorted(rec["id"] for rec in whole_records(out)) == sorted(f"r{i}" for i in range(400))


def test_job_json_is_replaced_by_rename(engine, tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_prompts(inp, 2)
    run_in_process(engine, inp, out)
    job = tmp_path / "out.jsonl.job.json"
    os.link(job, tmp_path / "old-job.json")  # a rewrite in place would change this one too
    old = job.read_bytes()
    run_in_process(engine, inp, out, max_new_tokens=5)
    assert (tmp_path / "old-job.json").read_bytes() == old != job.read_bytes()
    assert json.loads(job.read_text())["max_new_tokens"] == 5
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("case", ["no output folder", "input is a folder", "output is the input",
                                  "output is a folder", "bad temperature", "bad seed"])
def test_bad_paths_and_flags_are_refused_before_the_model_loads(tmp_path, case):
    inp = tmp_path / "in.jsonl"
    write_prompts(inp, 1)
    args = {"no output folder": (inp, tmp_path / "nope" / "out.jsonl"),
            "input is a folder": (tmp_path, tmp_path / "out.jsonl"),
            "output is the input": (inp, tmp_path / "." / "in.jsonl"),
            "output is a folder": (inp, tmp_path),
            "bad temperature": (inp, tmp_path / "o.jsonl", "--temperature", "nan"),
            "bad seed": (inp, tmp_path / "o.jsonl", "--seed", "-1")}[case]
    r = infer(tmp_path / "no-such-artifact", *args)  # the artifact is never looked at
    assert r.returncode == 2, r.stderr
    [line] = r.stderr.splitlines()
    expected = {"no output folder": f"output '{args[1]}': its folder", "input is a folder":
                "is a folder, not a file", "output is the input": "is the input",
                "output is a folder": "is a folder; give a file path",
                "bad temperature": "temperature must be", "bad seed": "seed must be"}[case]
    assert expected in line and ".job.json" not in line, line
    assert inp.read_text().count("\n") == 1


def test_dev_zero_as_input_ends_quickly_with_an_error_record(artifacts, tmp_path):
    out = tmp_path / "out.jsonl"
    r = infer(artifacts("qwen2", "int8"), "/dev/zero", out)
    assert r.returncode == 1, r.stderr
    [rec] = read_out(out)
    assert rec["line"] == 1 and "line longer than" in rec["error"]
    assert "the rest of the input was not read" in r.stderr


def test_bom_crlf_and_cr_only_line_ends(engine, tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [json.dumps({"id": i, "prompt": f"x{i} = "}).encode() for i in range(6)]
    inp.write_bytes(b"\xef\xbb\xbf" + lines[0] + b"\r\n" + lines[1] + b"\r" + lines[2] + b"\n"
                    + lines[3] + b"\r\r\n" + lines[4] + b"\r" + lines[5])
    stats = run_in_process(engine, inp, out)
    assert (stats.ok, stats.failed) == (6, 0)
    assert sorted((r["id"], r["line"]) for r in read_out(out)) == [
        (0, 1), (1, 2), (2, 3), (3, 4), (4, 6), (5, 7)]


def test_a_line_piped_in_starts_before_the_pipe_closes(artifacts, tmp_path):
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(infer_cmd(artifacts("qwen2", "int8"), "-", out, "--max-new-tokens", 3),
                            env=ENV, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        proc.stdin.write(json.dumps({"id": "a", "prompt": "import os"}).encode() + b"\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (out.exists() and out.read_bytes()):
            time.sleep(0.05)
        assert [r["id"] for r in read_out(out)] == ["a"]  # done while the pipe is still open
        assert proc.poll() is None
    finally:
        proc.stdin.close()
    assert proc.wait(timeout=60) == 0, proc.stderr.read()


def slow_template_artifact(src: Path, dst: Path) -> Path:
    """A copy of an artifact whose chat template renders for hours (checksums updated)."""
    from edgeds.artifact import MANIFEST, sha256_file
    from edgeds.manifest import seal

    shutil.copytree(src, dst)
    manifest = json.loads((dst / MANIFEST).read_text())
    name = manifest["tokenizer"]["chat_template"]
    (dst / name).write_text("{% for i in range(100000) %}{% for j in range(100000) %}"
                            "{% endfor %}{% endfor %}{{ messages[0]['content'] }}")
    manifest["files"][name] = {"size": (dst / name).stat().st_size,
                               "sha256": sha256_file(dst / name)}
    (dst / MANIFEST).write_text(json.dumps(seal(manifest)))
    return dst


def wait_for(predicate, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("where", ["waiting on stdin", "rendering a template", "decoding"])
def test_a_signal_ends_the_job_within_2_s_resumably(artifacts, tmp_path, sig, where):
    art, out = artifacts("qwen2", "int8"), tmp_path / "out.jsonl"
    inp, log = tmp_path / "in.jsonl", tmp_path / "stderr.txt"
    stdin, records_before = None, 2
    if where == "waiting on stdin":
        inp, stdin, records_before = "-", subprocess.PIPE, 1
    elif where == "rendering a template":
        art = slow_template_artifact(art, tmp_path / "slow")
        inp.write_text(json.dumps({"id": "chat", "messages": [{"role": "user", "content": "hi"}]})
                       + "\n")
        records_before = 0
    else:
        write_prompts(inp, 5000)  # at batch 1: far longer than the test waits on a fast box
    with open(log, "w") as err:
        proc = subprocess.Popen(infer_cmd(art, inp, out, "--max-new-tokens", 64, "--batch-size", 1),
                                env=ENV, stdin=stdin, stdout=subprocess.DEVNULL, stderr=err)
    try:
        if where == "waiting on stdin":
            proc.stdin.write(json.dumps({"id": "s", "prompt": "import os"}).encode() + b"\n")
            proc.stdin.flush()  # one record, then the job waits for more
        wait_for(lambda: "records (" in log.read_text()  # the job has started
                 and out.read_bytes().count(b"\n") >= records_before)
        time.sleep(0.5)
        t0 = time.monotonic()
        proc.send_signal(sig)
        code = proc.wait(timeout=30)
        took = time.monotonic() - t0
    finally:
        proc.kill()
    text = log.read_text()
    assert code == 130, text
    assert took < 2.0, took
    assert "resume" in text and "Traceback" not in text and "Fatal" not in text
    done = whole_records(out)
    assert len(done) >= records_before and len({r["id"] for r in done}) == len(done)


def test_progress_counts_in_flight_tokens_and_prints_the_last_line_once(engine, tmp_path):
    import io

    from edgeds.batch import JobOptions, run_job
    from edgeds.batch.progress import JobStats, Progress
    from edgeds.sampling import SamplingParams

    stats = JobStats()
    stats.started -= 10.0
    stats.tokens, stats.in_flight = 300, 3  # nothing finished yet: 30 tok/s all the same
    line = Progress(100, stats, 100, io.StringIO()).line()
    assert "0/100 records" in line and "3 running" in line and "30.0 tok/s" in line
    assert "ETA 323s" in line  # (100 records * 100 tokens - 300 generated) / 30 tok/s
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_prompts(inp, 6)
    stream = io.StringIO()
    run_job(engine, JobOptions(str(inp), str(out), SamplingParams(max_new_tokens=3)),
            progress_stream=stream)
    shown = stream.getvalue().splitlines()
    assert shown[0].startswith("0/6 records")  # from the start, before any record is done
    assert shown[-1].startswith("6/6 records") and len(shown) == len(set(shown))


def test_kill_9_at_random_points_loses_and_duplicates_nothing(artifacts, tmp_path):
    art = artifacts("qwen2", "int8")
    inp, out, straight = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "straight.jsonl"
    n = 400
    write_prompts(inp, n)
    # Batch 1: records are written one by one and the job lasts seconds, so every round's kill
    # lands mid-job however fast the machine is.
    args = ("--max-new-tokens", 16, "--batch-size", 1, "--no-timings")
    assert infer(art, inp, straight, *args).returncode == 0
    rng = random.Random(21)
    kills = 0
    for _ in range(8):
        have = out.read_bytes().count(b"\n") if out.exists() else 0
        # A random point: while loading (target reached at once), or after some more records.
        target = have + rng.randint(0, (n - have) // 3)
        proc = subprocess.Popen(infer_cmd(art, inp, out, *args), env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.0, 0.3))
        while proc.poll() is None and not (out.exists()
                                           and out.read_bytes().count(b"\n") >= target):
            time.sleep(0.002)
        proc.kill()
        kills += proc.wait() == -signal.SIGKILL
        if out.exists() and rng.random() < 0.5:
            with open(out, "ab") as f:  # the worst a crash leaves: half a record
                f.write(b'{"id": "r7", "text": "cut he')
    assert kills >= 6
    r = infer(art, inp, out, *args)
    assert r.returncode == 0, r.stderr
    done = whole_records(out)
    assert sorted(rec["id"] for rec in done) == sorted(f"r{i}" for i in range(n))
    assert {rec["id"]: rec["text"] for rec in done} == {
        rec["id"]: rec["text"] for rec in read_out(straight)}
