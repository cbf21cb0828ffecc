"""edgeds on Ray Data (issue 26): `edgeds.ray.Predictor` in `map_batches` and `edgeds infer
--ray` write the local job's records; a driver or an actor killed mid-run loses and doubles
nothing. One local Ray of 2 CPUs for the module; the CLI's runs join it or start their own."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from batch_helpers import ENV, infer, infer_cmd, read_out, run_in_process

ray = pytest.importorskip("ray", reason="edgeds[ray] is not installed")
psutil = pytest.importorskip("psutil")

from edgeds.ray import Predictor  # noqa: E402

TOKENS = 8


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def art(artifacts):
    return artifacts("qwen2", "int8")


def prompts(n: int) -> list[dict]:
    return [{"id": f"r{i}", "prompt": f"def f{i}(x):"} for i in range(n)]


def write_lines(path, objs, extra: bytes = b"") -> None:
    with open(path, "wb") as f:
        for obj in objs:
            f.write(json.dumps(obj).encode() + b"\n")
        f.write(extra)


def local_records(art, tmp_path, objs, extra: bytes = b"") -> dict:
    """The local job's output, id (error records: line) -> record."""
    from edgeds.engine import load

    inp, out = tmp_path / "local-in.jsonl", tmp_path / "local-out.jsonl"
    write_lines(inp, objs, extra)
    run_in_process(load(art), inp, out, max_new_tokens=TOKENS, timings=False)
    return {json.dumps(r["id"] if r["id"] is not None else r["line"]): r for r in read_out(out)}


def test_map_batches_writes_the_local_jobs_records(cluster, art, tmp_path):
    objs = [*prompts(14), {"id": "m7", "messages": [{"role": "user", "content": "hi there"}]},
            {"id": "empty", "prompt": " "}, {"id": "hot", "prompt": "x", "temperature": -1.0}]
    expect = local_records(art, tmp_path, objs)
    rows = [{**o, "line": n} for n, o in enumerate(objs, 1)]
    ds = ray.data.from_items(rows).map_batches(
        Predictor, fn_constructor_kwargs={"artifact": str(art), "max_new_tokens": TOKENS,
                                          "timings": False},
        compute=ray.data.ActorPoolStrategy(size=2), num_cpus=1, batch_size=4)
    got = ds.take_all()
    assert len(got) == len(objs)
    records = {json.dumps(r["id"]): json.loads(r["record"]) for r in got}
    assert records == expect  # greedy text, usage, digests, settings: line for line
    by_id = {r["id"]: r for r in got}
    assert by_id["r3"]["text"] == expect['"r3"']["text"]
    assert by_id["r3"]["completion_tokens"] == expect['"r3"']["usage"]["completion_tokens"]
    assert by_id["r3"]["error"] is None and by_id["r3"]["latency_s"] > 0
    assert by_id["empty"]["error"] == "empty prompt" and by_id["empty"]["text"] is None
    assert by_id["hot"]["field"] == "temperature"


def test_an_actor_killed_mid_batch_is_retried_and_nothing_is_lost_or_doubled(
        cluster, art, tmp_path):
    marker = tmp_path / "killed-once"

    class DiesOnce(Predictor):
        """Kills its own process once, after computing a batch and before returning it."""

        def __call__(self, batch):
            out = super().__call__(batch)
            try:
                marker.open("x").close()
            except FileExistsError:
                return out
            os.kill(os.getpid(), signal.SIGKILL)

    objs = prompts(12)
    expect = local_records(art, tmp_path, objs)
    ds = ray.data.from_items(objs).map_batches(
        DiesOnce, fn_constructor_kwargs={"artifact": str(art), "max_new_tokens": TOKENS,
                                         "timings": False},
        compute=ray.data.ActorPoolStrategy(size=1), num_cpus=2, batch_size=4)
    got = ds.take_all()
    assert marker.exists(), "the actor was never killed"
    assert sorted(r["id"] for r in got) == sorted(o["id"] for o in objs)  # each id once
    assert {r["id"]: r["text"] for r in got} == {json.loads(k): v["text"]
                                                 for k, v in expect.items()}


def test_infer_ray_writes_the_local_output_and_resumes_it(art, tmp_path):
    objs = [*prompts(20), {"id": "r3", "prompt": "again"},
            {"id": 5, "messages": [{"role": "user", "content": "hello"}]}]
    inp, local, out = tmp_path / "in.jsonl", tmp_path / "local.jsonl", tmp_path / "out.jsonl"
    write_lines(inp, objs, b'{"id": "cut", "prompt": \n\xff\xfe\n')
    args = ("--max-new-tokens", TOKENS, "--no-timings")
    assert infer(art, inp, local, *args).returncode == 1  # the bad lines fail, as they should
    r = infer(art, inp, out, *args, "--ray")  # a local Ray of its own
    assert r.returncode == 1, r.stderr
    assert "1 worker x 2 threads" in r.stderr and "records ok / failed" in r.stderr
    assert sorted(out.read_text().splitlines()) == sorted(local.read_text().splitlines())
    before = out.read_bytes()
    r = infer(art, inp, out, *args, "--ray", "--workers", 2, "--threads", 1)
    assert r.returncode == 1, r.stderr
    assert "resuming" in r.stderr and re.search(r"resumed \(already done\) +21\n", r.stderr)
    assert out.read_bytes() == before


def test_the_driver_puts_batches_as_it_reads_and_holds_at_most_a_window():
    """A big input goes to Ray a batch at a time while it is read: the driver never holds more
    than the window, the batches are whole and in input order."""
    from edgeds.ray.job import Batches

    puts, held = [], []
    b = Batches(lambda rows: puts.append(rows) or len(puts), full=8, min_batches=4, window=32)
    for i in range(1000):
        b.add({"line": i, "request": str(i)})
        held.append(len(b.rows))
    assert len(puts) == 125 and max(held) < 32  # all put before the input's end
    b.close()
    assert len(puts) == 125 and b.size == 8 and b.refs == list(range(1, 126))
    assert [r["line"] for rows in puts for r in rows] == list(range(1000))


def test_a_job_smaller_than_the_window_is_cut_so_that_every_worker_gets_some():
    from edgeds.ray.job import Batches

    puts = []
    b = Batches(puts.append, full=8, min_batches=4, window=32)
    for i in range(10):
        b.add({"line": i, "request": str(i)})
    assert puts == []  # the batch size is not known until the input ends or fills the window
    b.close()
    assert [len(rows) for rows in puts] == [3, 3, 3, 1] and b.size == 3
    empty = Batches(puts.append, full=8, min_batches=4, window=32)
    empty.close()
    assert empty.refs == []


def test_infer_ray_publishes_prometheus_metrics_and_the_prefix_cache_summary(
        cluster, art, tmp_path):
    """--prometheus-file with --ray: the local job's counters from the driver, the workers'
    prefix-cache counters summed, no KV-cache gauges (the caches are in the workers); the
    summary's prefix cache line is there too."""
    from test_batch_metrics import samples

    shared = "# a careful helper, one line\n" * 3  # over one 64-token block (the native cache's)
    objs = [{"id": f"r{i}", "prompt": f"{shared}def f{i}(x):"} for i in range(12)]
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    prom, summary_file = tmp_path / "job.prom", tmp_path / "summary.json"
    write_lines(inp, objs, b"{not json\n")
    r = joined(art, inp, out, "--max-new-tokens", TOKENS, "--ray", "--ray-address", cluster,
               "--workers", 2, "--threads", 1, "--prometheus-file", prom,
               "--metrics", summary_file)
    assert r.returncode == 1, r.stderr  # the bad line is an error record
    m = samples(prom.read_text())
    ok = [x for x in read_out(out) if "error" not in x]
    assert len(ok) == 12, (read_out(out)[:2], r.stderr)
    assert m["edgeds_records_done_total"] == 12
    assert m["edgeds_records_failed_total"] == 1
    assert m["edgeds_records_pending"] == 0 and m["edgeds_records_running"] == 0
    assert m["edgeds_prompt_tokens_total"] == sum(x["usage"]["prompt_tokens"] for x in ok)
    assert m["edgeds_generated_tokens_total"] == sum(x["usage"]["completion_tokens"] for x in ok)
    assert m["edgeds_request_latency_seconds_count"] == 12
    assert m["edgeds_job_running"] == 0
    assert not any(k.startswith("edgeds_kv_cache") for k in m)
    summary = json.loads(summary_file.read_text())
    p = summary["prefix_cache"]
    assert p["lookups"] == 12
    assert p["tokens_reused"] + p["tokens_prefilled"] == summary["prompt_tokens"]
    assert p["hits"] > 0  # a worker's second batch reuses the prefix its first one cached
    assert m["edgeds_prefix_cache_hits_total"] == p["hits"]
    assert m["edgeds_prefix_cache_hit_tokens_total"] == p["tokens_reused"]
    assert f"{p['hits']} / 12" in r.stderr


def test_kill_9_of_a_worker_then_of_the_driver_then_a_rerun_gives_each_id_once(
        cluster, art, tmp_path):
    n = 48
    inp, straight, out = tmp_path / "in.jsonl", tmp_path / "straight.jsonl", tmp_path / "out.jsonl"
    write_lines(inp, prompts(n))
    args = ("--max-new-tokens", 16, "--no-timings", "--batch-size", 1)
    assert infer(art, inp, straight, *args).returncode == 0
    cmd = infer_cmd(art, inp, out, *args, "--ray", "--ray-address", cluster,
                    "--workers", 2, "--threads", 1)
    log = tmp_path / "driver.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": ENV["PYTHONPATH"]},
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        assert wait_for_lines(out, 1, proc), f"no record came back: {log.read_text()}"
        victim = next(p for p in psutil.process_iter(["cmdline"])
                      if "MapWorker" in " ".join(p.info["cmdline"] or []))
        victim.kill()
        have = out.read_bytes().count(b"\n")
        assert wait_for_lines(out, have + 1, proc), "the job did not go on without its worker"
        assert proc.poll() is None, "the job ended before its driver could be killed"
        proc.kill()
        assert proc.wait() == -signal.SIGKILL
    finally:
        proc.kill()
    assert out.read_bytes().count(b"\n") < n
    with open(out, "ab") as f:  # the worst a crash leaves: half a record
        f.write(b'{"id": "r9", "text": "cut he')
    r = joined(art, inp, out, *args, "--ray", "--ray-address", cluster)
    assert r.returncode == 0, r.stderr
    done = read_out(out)
    assert sorted(rec["id"] for rec in done) == sorted(o["id"] for o in prompts(n))
    assert {rec["id"]: rec["text"] for rec in done} == {
        rec["id"]: rec["text"] for rec in read_out(straight)}


def joined(art, inp, out, *extra):
    """`edgeds infer` in a process that joins the module's Ray (its auth token is in the
    environment ray.init left)."""
    env = {**os.environ, "PYTHONPATH": ENV["PYTHONPATH"]}
    return subprocess.run(infer_cmd(art, inp, out, *extra), capture_output=True, text=True,
                          env=env, timeout=300)


def wait_for_lines(path, count: int, proc, timeout_s: float = 120) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return True
        time.sleep(0.01)
    return False


def test_the_local_ray_runs_its_workers_at_the_local_jobs_priority(tmp_path):
    """Ray's default starts workers at nice 15, below its own processes and the driver."""
    code = ("import os; from edgeds.ray.cluster import connect; ray = connect(None); "
            "f = ray.remote(num_cpus=1)(lambda: os.nice(0)); "
            "print('nice', ray.get(f.remote()) - os.nice(0))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV,
                       timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "nice 0" in r.stdout.splitlines(), r.stdout


def test_without_ray_the_flag_is_refused_in_one_line(art, tmp_path):
    inp = tmp_path / "in.jsonl"
    write_lines(inp, prompts(1))
    code = ("import sys; sys.modules['ray'] = None; from edgeds.cli.main import app; "
            "sys.argv[0] = 'edgeds'; app()")
    r = subprocess.run([sys.executable, "-c", code, "infer", str(art), "-i", str(inp), "-o",
                        str(tmp_path / "out.jsonl"), "--ray"], capture_output=True, text=True,
                       env=ENV, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == ("edgeds: error: --ray needs Ray Data, which is not installed: "
                                "pip install 'edgeds[ray]'")
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("flags, message", [
    (("--workers", 2), "--workers needs --ray"),
    (("--ray-address", "auto"), "--ray-address needs --ray"),
    (("--ray", "--workers", 3, "--threads", 1), "holds 2 such workers"),
    (("--ray", "--threads", 64), "no node of the Ray cluster has that many CPUs"),
])
def test_bad_ray_flags_are_refused_in_one_line(cluster, art, tmp_path, flags, message):
    inp = tmp_path / "in.jsonl"
    write_lines(inp, prompts(1))
    if "--ray" in flags:
        flags = (*flags, "--ray-address", cluster)
    r = joined(art, inp, tmp_path / "out.jsonl", *flags)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
