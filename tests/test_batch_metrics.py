"""Prometheus metrics of a job (issue 28): the file parses with prometheus_client's parser and its
counters match the output; /metrics answers while a job runs; a failing write never fails the
job."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request

import pytest
from batch_helpers import ENV, infer, infer_cmd, read_out

from edgeds.default_model import default_artifact

parser = pytest.importorskip("prometheus_client.parser")


def samples(text: str) -> dict[str, float]:
    """name{le=...} -> value, labels other than `le` checked to be the job's."""
    out = {}
    for family in parser.text_string_to_metric_families(text):
        for s in family.samples:
            assert set(s.labels) - {"le"} == {"backend", "profile", "artifact_sha256"}, s
            key = s.name + (f"[{s.labels['le']}]" if "le" in s.labels else "")
            out[key] = s.value
    return out


def test_the_metrics_file_parses_and_its_counters_match_the_output(tmp_path):
    inp, out, prom = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "job.prom"
    lines = [json.dumps({"id": i, "prompt": f"def f{i}(x):"}) for i in range(5)]
    lines[2] = "{not json"
    inp.write_text("\n".join(lines) + "\n")
    r = infer(default_artifact(), inp, out, "--max-new-tokens", 6, "--prometheus-file", prom)
    assert r.returncode == 1, r.stderr  # the bad line is an error record
    m = samples(prom.read_text())
    records = read_out(out)
    ok = [x for x in records if "error" not in x]
    assert m["edgeds_records_done_total"] == len(ok) == 4
    assert m["edgeds_records_failed_total"] == 1
    assert m["edgeds_records_pending"] == 0 and m["edgeds_records_running"] == 0
    assert m["edgeds_prompt_tokens_total"] == sum(x["usage"]["prompt_tokens"] for x in ok)
    assert m["edgeds_generated_tokens_total"] == sum(x["usage"]["completion_tokens"] for x in ok)
    assert m["edgeds_request_latency_seconds_count"] == 4
    assert m["edgeds_request_latency_seconds_bucket[+Inf]"] == 4
    assert m["edgeds_request_latency_seconds_sum"] == pytest.approx(
        sum(x["latency_s"] for x in ok), abs=1e-3)
    assert m["edgeds_time_to_first_token_seconds_count"] == 4
    assert m["edgeds_kv_cache_tokens"] == 0  # every sequence released its cache
    assert m["edgeds_peak_resident_memory_bytes"] >= m["edgeds_resident_memory_bytes"] > 0
    assert m["edgeds_job_running"] == 0
    assert not list(tmp_path.glob(".job.prom.*.tmp"))


def test_blank_lines_are_not_counted_as_pending_records(tmp_path):
    """Blank lines give no record, so they are not records left to do: a finished job reads 0
    pending and its progress N/N (they counted as lines and left it above 0, issue 28)."""
    inp, out, prom = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "job.prom"
    rows = [json.dumps({"id": i, "prompt": f"def f{i}(x):"}) for i in range(3)]
    inp.write_bytes(b"\xef\xbb\xbf\n" + f"{rows[0]}\r\n   \r\n\t\n{rows[1]}\r\r"
                    f"\u3000\n{rows[2]}\n\n".encode())
    r = infer(default_artifact(), inp, out, "--max-new-tokens", 2, "--prometheus-file", prom)
    assert r.returncode == 0, r.stderr
    assert len(read_out(out)) == 3
    m = samples(prom.read_text())
    assert m["edgeds_records_pending"] == 0 and m["edgeds_records_done_total"] == 3
    assert "3/3 records" in r.stderr and "/9 records" not in r.stderr


def test_a_metrics_file_that_cannot_be_written_is_a_warning_not_a_failure(tmp_path):
    from edgeds.batch.metrics import JobView, MetricsPublisher
    from edgeds.batch.progress import JobStats

    warnings = []
    target = tmp_path / "gone" / "job.prom"  # its folder vanished after the job started
    publisher = MetricsPublisher(str(target), warn=warnings.append)
    labels = {"backend": "b", "profile": "p", "artifact_sha256": "x"}
    publisher.start(JobView(JobStats(), 3, labels))
    publisher.write_file()
    publisher.close()
    assert len(warnings) == 1 and "cannot write metrics" in warnings[0], warnings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def test_the_http_endpoint_answers_while_the_job_runs(tmp_path):
    port = _free_port()
    out = tmp_path / "out.jsonl"
    cmd = infer_cmd(default_artifact(), "-", out, "--max-new-tokens", 4, "--prometheus-port", port)
    # The job reads stdin: it keeps running, waiting for more lines, until stdin closes.
    job = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        for i in range(3):
            job.stdin.write(json.dumps({"id": i, "prompt": f"x = {i}"}) + "\n")
        job.stdin.flush()
        done, deadline = None, time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                m = samples(_scrape(port))
            except OSError:  # not listening yet, or the model still loads
                m = {}
            done = m.get("edgeds_records_done_total")
            if done == 3:
                break
            time.sleep(0.2)
        assert done == 3 and m["edgeds_job_running"] == 1, m
        assert m["edgeds_generated_tokens_total"] > 0
        job.stdin.close()
        assert job.wait(timeout=120) == 0, job.stderr.read()
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert len(read_out(out)) == 3


def test_bad_metrics_flags_are_refused_before_the_model_loads(tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": 1, "prompt": "x"}\n')
    r = infer(default_artifact(), inp, tmp_path / "o.jsonl", "--prometheus-port", 70000)
    assert r.returncode == 2 and "--prometheus-port must be 1 to 65535" in r.stderr, r.stderr
    r = infer(default_artifact(), inp, tmp_path / "o.jsonl", "--prometheus-file", tmp_path / "no/x")
    assert r.returncode == 2 and "prometheus-file" in r.stderr, r.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = infer(default_artifact(), inp, tmp_path / "o.jsonl", "--prometheus-port", port)
    assert r.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "o.jsonl").exists()


def test_without_prometheus_client_the_port_option_says_which_extra_to_install(monkeypatch):
    import sys

    from edgeds.batch.metrics import MetricsPublisher
    from edgeds.errors import ConfigError

    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails as if absent
    with pytest.raises(ConfigError, match=r"pip install 'edgeds\[metrics\]'"):
        MetricsPublisher(port=_free_port())


def test_the_grafana_dashboard_reads_only_metrics_the_job_exports():
    import re

    from conftest import REPO

    from edgeds.batch.metrics import JobView, Metrics
    from edgeds.batch.progress import JobStats

    stats = JobStats(prefix_cache_hits=0, prefix_cache_hit_tokens=0)
    metrics = Metrics()
    metrics.attach(JobView(stats, 1, {"backend": "b", "profile": "p", "artifact_sha256": "x"}))
    exported = {name.split("[")[0] for name in samples(metrics.render())}
    dashboard = json.loads((REPO / "docs/grafana-edgeds-jobs.json").read_text())
    queried = {name for panel in dashboard["panels"] for t in panel["targets"]
               for name in re.findall(r"edgeds_\w+", t["expr"])}
    assert queried and queried <= exported, queried - exported


def test_prefix_cache_hits_in_the_metrics_match_the_job_summary(tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    prom, summary = tmp_path / "job.prom", tmp_path / "summary.json"
    shared = "".join(f"value_{i} = {i} * {i}\n" for i in range(40))  # several blocks long
    inp.write_text("".join(json.dumps({"id": i, "prompt": shared + f"def f{i}(x):"}) + "\n"
                           for i in range(4)))
    r = infer(default_artifact(), inp, out, "--max-new-tokens", 4, "--prometheus-file", prom,
              "--metrics", summary)
    assert r.returncode == 0, r.stderr
    reused = json.loads(summary.read_text())["prefix_cache"]
    m = samples(prom.read_text())
    assert reused["tokens_reused"] > 0
    assert m["edgeds_prefix_cache_hits_total"] == reused["hits"]
    assert m["edgeds_prefix_cache_hit_tokens_total"] == reused["tokens_reused"]
