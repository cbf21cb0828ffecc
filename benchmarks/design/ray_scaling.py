"""Does `edgeds infer --ray` scale, and what does Ray cost? (issue 26)

One job of P prompts, run in turns, R rounds, each a process of its own:
- local: `edgeds infer` with --threads C (the whole machine);
- ray N: `edgeds infer --ray --workers N --threads C/N` on a local Ray (N x C/N = C);
- nodes n: a simulated cluster of n Ray nodes of K CPUs each on this machine (one raylet per
  node, as `ray start` makes: ray.cluster_utils.Cluster), `--workers n --threads K`.
Throughput is the job's own generated tokens/s (its summary, --metrics: from the job's start,
which for Ray includes the actors' engine loads) and the command's wall time. Ray overhead at N
= 1 - tok/s(ray N) / tok/s(local); efficiency at n nodes = tok/s(n) / (n * tok/s(1 node)).

    python -m benchmarks.design.ray_scaling ART --prompts 512 --new-tokens 64 --cpus 16 \\
        --workers 1,2,4,8 --nodes 1,2,4 --node-cpus 4 --rounds 3

Needs edgeds[ray]. ART omitted: the embedded default model. Prints a line per job as it ends
and a markdown table at the end, and rewrites the rows as JSON (--out) after every job, so a run
stopped at a time limit keeps what it measured. --runs orders the jobs of a round (local, rayN,
nodesN: e.g. local,ray4,nodes4,nodes1) where not all may fit; --deadline-s starts no job past
that many seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def job(art: str | None, prompts: Path, tokens: int, work: Path, *flags) -> dict:
    out, metrics = work / "out.jsonl", work / "metrics.json"
    cmd = [sys.executable, "-m", "edgeds.cli", "infer", *([art] if art else []), "-i",
           str(prompts), "-o", str(out), "--overwrite", "--max-new-tokens", str(tokens),
           "--metrics", str(metrics), *map(str, flags)]
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    wall = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr[-2000:]}")
    summary = json.loads(metrics.read_text())
    return {"wall_s": wall, "tok_s": summary["generated_tokens_per_s"],
            "job_s": summary["elapsed_s"], "records": summary["records_ok"]}


def simulated_cluster(nodes: int, node_cpus: int):
    from ray.cluster_utils import Cluster

    # Workers at the priority of a local job, as the local Ray edgeds starts has them
    # (edgeds/ray/cluster.py); the nodes' raylets read it from this process's environment.
    os.environ.setdefault("RAY_worker_niceness", "0")
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": node_cpus, "include_dashboard": False})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=node_cpus)
    cluster.wait_for_nodes()
    return cluster


def plan(runs: str | None, cpus: int, workers: str, nodes: str, node_cpus: int) -> list[tuple]:
    """(name, flags or None, nodes) per job of a round; flags None: a simulated cluster's job."""
    tokens = runs.split(",") if runs else ["local", *(f"ray{n}" for n in workers.split(",")),
                                           *(f"nodes{n}" for n in nodes.split(",") if n)]
    out = []
    for t in tokens:
        if t == "local":
            out.append(("local", ("--threads", cpus), 0))
        elif t.startswith("ray"):
            n = int(t[3:])
            out.append((f"ray N={n} K={cpus // n}",
                        ("--ray", "--workers", n, "--threads", cpus // n), 0))
        elif t.startswith("nodes"):
            out.append((f"nodes={int(t[5:])} K={node_cpus}", None, int(t[5:])))
        else:
            raise SystemExit(f"--runs: {t!r} is not local, rayN or nodesN")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", nargs="?")
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    ap.add_argument("--workers", default="1,2,4,8")
    ap.add_argument("--nodes", default="1,2,4")
    ap.add_argument("--node-cpus", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", help="the jobs of a round, in order: local,rayN,nodesN,...")
    ap.add_argument("--deadline-s", type=float, help="start no job past this many seconds")
    ap.add_argument("--out", default="ray-scaling.json")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgeds-ray-scaling-"))
    prompts = work / "prompts.jsonl"
    with open(prompts, "w") as f:
        for i in range(a.prompts):
            f.write(json.dumps({"id": i, "prompt": f"def function_{i}(values, limit):"}) + "\n")
    runs = plan(a.runs, a.cpus, a.workers, a.nodes, a.node_cpus)
    rows: dict[str, list[dict]] = {name: [] for name, _, _ in runs}
    started = time.perf_counter()
    for _ in range(a.rounds):  # in turns: a shared machine's drift spreads over every run
        for name, flags, nodes in runs:
            if a.deadline_s and time.perf_counter() - started > a.deadline_s:
                break
            if flags is not None:
                row = job(a.artifact, prompts, a.new_tokens, work, *flags)
            else:
                cluster = simulated_cluster(nodes, a.node_cpus)
                try:
                    row = job(a.artifact, prompts, a.new_tokens, work, "--ray", "--ray-address",
                              cluster.address, "--workers", nodes, "--threads", a.node_cpus)
                finally:
                    cluster.shutdown()
            rows[name].append(row)
            print(f"{name}: {row['tok_s']:.1f} tok/s, job {row['job_s']:.1f} s, wall "
                  f"{row['wall_s']:.1f} s, {row['records']} records "
                  f"(at {time.perf_counter() - started:.0f} s)", flush=True)
            Path(a.out).write_text(json.dumps({"args": vars(a), "rows": rows}, indent=2) + "\n")
    rows = {name: rs for name, rs in rows.items() if rs}
    median = {name: {k: statistics.median(r[k] for r in rs) for k in ("tok_s", "wall_s")}
              for name, rs in rows.items()}
    local = median.get("local", {}).get("tok_s")
    one_node = median.get(f"nodes=1 K={a.node_cpus}", {}).get("tok_s")
    print(f"\n{a.prompts} prompts x {a.new_tokens} new tokens, {a.rounds} rounds, medians "
          f"(range over rounds); {os.cpu_count()} CPUs here\n")
    print("| run | job tok/s | range | wall s | vs local | vs linear in nodes |")
    print("|---|---|---|---|---|---|")
    for name, rs in rows.items():
        m, toks = median[name], [r["tok_s"] for r in rs]
        vs_local = f"{m['tok_s'] / local:.2f}x" if local else ""
        linear = ""
        if name.startswith("nodes=") and one_node:
            n = int(name.split("=")[1].split()[0])
            linear = f"{m['tok_s'] / (n * one_node):.2f}"
        print(f"| {name} | {m['tok_s']:.1f} | {min(toks):.1f}-{max(toks):.1f} | "
              f"{m['wall_s']:.1f} | {vs_local} | {linear} |")
    Path(a.out).write_text(json.dumps({"args": vars(a), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
