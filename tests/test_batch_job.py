"""`edgeds infer` as users run it: bad lines, resume after kill -9 and SIGINT, memory,
determinism."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from batch_helpers import ENV, infer, read_out, write_prompts

BAD_LINES = [
    (b'{"id": "ok1", "prompt": "import os"}', None),
    (b'{"id": "x", "prompt": ', "malformed JSON"),
    (b'{"prompt": "no id"}', "missing 'id'"),
    (b'{"id": "ok1", "prompt": "again"}', "duplicate id"),
    (b'{"id": [1], "prompt": "x"}', "'id' must be"),
    (b'{"id": "t", "prompt": 42}', "'prompt' must be a string"),
    (b'{"id": "e", "prompt": "   "}', "empty prompt"),
    (b'{"id": "r", "messages": [{"role": "robot", "content": "hi"}]}', "unknown role"),
    (b'{"id": "u", "prompt": "caf\xe9"}', "invalid UTF-8"),
    (b'{"id": "big", "prompt": "' + b"a" * (9 << 20) + b'"}', "line longer than 1048576 bytes"),
    (b'{"id": "long", "prompt": "' + b"import os " * 200 + b'"}', "over the context"),
    (b'{"id": "both", "prompt": "a", "messages": []}', "exactly one of"),
    (b'[1, 2, 3]', "must be a JSON object"),
    (b'{"id": "p", "prompt": "a", "top_p": "high"}', "wrong type"),
    (b'{"id": "s", "prompt": "a", "stop": 5}', "'stop' must be"),
    (b'{"id": "v", "prompt": "a", "temperature": -1}', "temperature must be"),
    (b'{"id": "seed", "prompt": "a", "seed": -1}', "seed must be"),
    (b'{"id": "nan", "prompt": "a", "temperature": NaN}', "temperature must be"),
    (b'{"id": "inf", "prompt": "a", "temperature": Infinity}', "temperature must be"),
    (b'{"id": "tiny", "prompt": "a", "temperature": 1e-308}', "temperature must be"),
    (b'{"id": "rp", "prompt": "a", "repetition_penalty": NaN}', "repetition_penalty must be"),
    (b'{"id": "tp", "prompt": "a", "top_p": 1.5}', "top_p must be"),
    (b'{"id": "tk", "prompt": "a", "top_k": -2}', "top_k must be"),
    (b'{"id": "mp", "prompt": "a", "min_p": -0.1}', "min_p must be"),
    (b'{"id": "mn", "prompt": "a", "max_new_tokens": 0}', "max_new_tokens must be"),
    (b'{"id": "deep", "prompt": ' + b"[" * 10_000 + b"]" * 10_000 + b'}', "nested deeper"),
    (b'{"id": "deep2", "prompt": "a", "meta": ' + b"[" * 40 + b"]" * 40 + b'}', "nested deeper"),
    (b'{"id": "\\ud800", "prompt": "a"}', "lone surrogate"),
    (b'{"id": "sp", "prompt": "a\\udfff b"}', "lone surrogate"),
    (b'{"id": "ok2", "messages": [{"role": "user", "content": "hello"}], "max_new_tokens": 3}',
     None),
]


def test_every_kind_of_bad_line_becomes_an_error_record(artifacts, tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_bytes(b"\n".join(line for line, _ in BAD_LINES) + b"\n")
    r = infer(artifacts("qwen2", "int8"), inp, out, "--max-new-tokens", 4, "--metrics",
              tmp_path / "m.json")
    assert r.returncode == 1, r.stderr  # finished, some records failed
    by_line = {rec["line"]: rec for rec in read_out(out)}
    assert len(by_line) == len(BAD_LINES)
    for n, (_, reason) in enumerate(BAD_LINES, start=1):
        if reason is None:
            assert "error" not in by_line[n] and by_line[n]["finish_reason"] in ("stop", "length")
        else:
            assert reason in by_line[n]["error"], (n, by_line[n])
    fields = {by_line[n].get("field") for n, (line, _) in enumerate(BAD_LINES, 1) if b"NaN" in line}
    assert fields == {"temperature", "repetition_penalty"}
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["records_ok"] == 2 and metrics["records_failed"] == len(BAD_LINES) - 2
    assert "records ok / failed" in r.stderr and "P50/P90/P99" in r.stderr


def test_truncate_keeps_the_end_of_long_prompts(artifacts, tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(json.dumps({"id": 1, "prompt": "import os " * 200}) + "\n")
    r = infer(artifacts("qwen2", "int8"), inp, out, "--max-new-tokens", 4, "--truncate")
    assert r.returncode == 0, r.stderr
    [rec] = read_out(out)
    assert rec["usage"]["prompt_tokens"] < 128 and rec["usage"]["completion_tokens"] == 4


def test_fail_fast_stops_at_first_bad_record(artifacts, tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text('not json\n{"id": 1, "prompt": "import os"}\n')
    r = infer(artifacts("qwen2", "int8"), inp, out, "--fail-fast")
    assert r.returncode == 1
    assert [rec.get("error", "")[:9] for rec in read_out(out)] == ["malformed"]


@pytest.mark.parametrize("kill_after_lines", [1, 37, 151])
def test_kill_9_then_resume_gives_each_id_once(artifacts, tmp_path, kill_after_lines):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_prompts(inp, 200)
    cmd = [sys.executable, "-m", "edgeds.cli", "infer", str(artifacts("qwen2", "int8")), "-i",
           str(inp), "-o", str(out), "--max-new-tokens", "24", "--batch-size", "4"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= kill_after_lines:
            break
        time.sleep(0.005)
    proc.kill()  # SIGKILL: no cleanup of any kind
    assert proc.wait() == -signal.SIGKILL, "the job finished before it could be killed"
    assert out.read_bytes().count(b"\n") < 200
    # A crash can also cut the last line in half: simulate the worst case on top.
    with open(out, "ab") as f:
        f.write(b'{"id": "r199", "text": "half a li')
    r = infer(artifacts("qwen2", "int8"), inp, out, "--max-new-tokens", 24, "--batch-size", 4)
    assert r.returncode == 0, r.stderr
    records = read_out(out)  # every line parses
    ids = [rec["id"] for rec in records]
    assert sorted(ids) == sorted(f"r{i}" for i in range(200))


def test_sigint_stops_cleanly_and_resumes(artifacts, tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_prompts(inp, 300)
    cmd = [sys.executable, "-m", "edgeds.cli", "infer", str(artifacts("qwen2", "int8")), "-i",
           str(inp), "-o", str(out), "--max-new-tokens", "32", "--batch-size", "2"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    while not (out.exists() and out.read_bytes().count(b"\n") >= 10):
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "resume" in err
    first = read_out(out)
    assert 10 <= len(first) < 300
    r = infer(artifacts("qwen2", "int8"), inp, out, "--max-new-tokens", 32, "--batch-size", 2)
    assert r.returncode == 0
    assert sorted(rec["id"] for rec in read_out(out)) == sorted(f"r{i}" for i in range(300))


def test_other_settings_or_artifact_recompute_and_keep_the_old_records_aside(artifacts, tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    replaced = tmp_path / "out.jsonl.replaced.jsonl"
    write_prompts(inp, 3)
    assert infer(artifacts("qwen2", "int8"), inp, out, "--max-new-tokens", 4).returncode == 0
    first = read_out(out)
    r = infer(artifacts("qwen2", "int8"), inp, out, "--max-new-tokens", 5)
    assert r.returncode == 0, r.stderr
    second = read_out(out)
    assert [rec["id"] for rec in second] == ["r0", "r1", "r2"]  # one record per id
    digests = {rec["request_digest"] for rec in second}
    assert digests.isdisjoint(rec["request_digest"] for rec in first)
    assert read_out(replaced) == first  # nothing lost
    r = infer(artifacts("qwen2", "fp32"), inp, out, "--max-new-tokens", 5)
    assert r.returncode == 0 and len(read_out(out)) == 3 and len(read_out(replaced)) == 6
    r = infer(artifacts("qwen2", "fp32"), inp, out, "--max-new-tokens", 5, "--overwrite")
    assert r.returncode == 0 and len(read_out(out)) == 3


def test_same_seed_gives_byte_identical_output(artifacts, tmp_path):
    inp = tmp_path / "in.jsonl"
    write_prompts(inp, 20)
    outs = []
    for run in range(2):
        out = tmp_path / f"out{run}.jsonl"
        r = infer(artifacts("qwen2", "int8"), inp, out, "--temperature", 0.9, "--top-p", 0.95,
                  "--seed", 5, "--max-new-tokens", 12, "--no-timings")
        assert r.returncode == 0, r.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    other = tmp_path / "other.jsonl"
    infer(artifacts("qwen2", "int8"), inp, other, "--temperature", 0.9, "--top-p", 0.95, "--seed",
          6, "--max-new-tokens", 12, "--no-timings")
    assert other.read_bytes() != outs[0]


def test_thousand_records_with_flat_memory(artifacts, tmp_path):
    peaks = {}
    for n in (200, 1000):
        inp, out = tmp_path / f"in{n}.jsonl", tmp_path / f"out{n}.jsonl"
        write_prompts(inp, n)
        r = infer(artifacts("qwen2", "int8"), inp, out, "--max-new-tokens", 8, "--metrics",
                  tmp_path / f"m{n}.json")
        assert r.returncode == 0, r.stderr
        assert len(read_out(out)) == n
        peaks[n] = json.loads((tmp_path / f"m{n}.json").read_text())["peak_rss_mib"]
    assert peaks[1000] - peaks[200] < 20, peaks  # five times the records, (almost) no more memory


def test_stdin_stdout_and_text_format(artifacts, tmp_path):
    r = subprocess.run([sys.executable, "-m", "edgeds.cli", "infer",
                        str(artifacts("qwen2", "int8")),
                        "-i", "-", "-o", "-", "--input-format", "text", "--max-new-tokens", "3"],
                       input="import os\n\nprint(1)\n", capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    assert sorted(rec["id"] for rec in recs) == [1, 3]  # blank line 2 is skipped


def test_peak_memory_is_the_jobs_own_not_its_parents():
    """A job started by a large process (a harness, an orchestrator) reports its own peak."""
    import subprocess
    import sys

    import numpy as np

    parent = np.ones(400 * 2**20 // 4, np.float32)  # 400 MiB resident in this process
    code = "from edgeds.batch.progress import peak_rss_bytes; print(peak_rss_bytes())"
    child = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               check=True).stdout)
    assert parent.sum() > 0
    assert 10 * 2**20 < child < 250 * 2**20
