"""What an audit needs (issue 28, item 3): every result names its model, backend, settings and
seed, with its timings; OUT.job.json keeps the command line and the versions."""

from __future__ import annotations

import json

from batch_helpers import infer, read_out

from edgeds.artifact import load_artifact
from edgeds.default_model import default_artifact


def test_every_record_carries_its_audit_trail_and_the_job_json_its_command(tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(json.dumps({"id": "a", "prompt": "def f(x):"}) + "\n"
                   + json.dumps({"id": "b", "prompt": "x = 1", "temperature": 0.5, "seed": 7})
                   + "\n")
    r = infer(default_artifact(), inp, out, "--max-new-tokens", 5, "--backend", "onnxruntime")
    assert r.returncode == 0, r.stderr
    digest = load_artifact(default_artifact(), verify=False).digest
    records = {x["id"]: x for x in read_out(out)}
    for x in records.values():
        assert x["artifact_sha256"] == digest and x["backend"] == "onnxruntime"
        assert x["settings"]["max_new_tokens"] == 5
        assert 0 <= x["ttft_s"] <= x["latency_s"]
    assert records["a"]["settings"]["temperature"] == 0.0
    assert records["b"]["settings"]["temperature"] == 0.5
    # Each record's own seed (the job seed mixed with the id), not the job's.
    assert records["a"]["settings"]["seed"] != records["b"]["settings"]["seed"]
    job = json.loads((tmp_path / "out.jsonl.job.json").read_text())
    assert "infer" in job["command"] and str(inp) in job["command"]
    assert job["versions"]["edgeds"] and job["versions"]["onnxruntime"]
    assert job["engine"]["backend"] == "onnxruntime" and job["artifact_sha256"] == digest
