"""edgeds beside the runtimes users would pick instead, in one run, on one model.

    python -m benchmarks.peers.compare --peer-python /tmp/peers/bin/python  # R1-Distill-Qwen-1.5B
    python -m benchmarks.peers.compare --quick                              # a smoke run

Peers (optional; install them in their own environment, never with edgeds): OpenVINO GenAI on
an optimum-intel INT8 export, onnxruntime-genai (its model builder, int8), llama.cpp Q8_0
through llama-cpp-python, transformers fp32. Each runs in its own process, on token ids, EOS
ignored. Writes benchmarks/results/<machine>.md (ratios to the best peer) and a PNG of offline
throughput against batch size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks import REPO, RESULTS, SHARED_REFERENCE

CONFIGS = Path(os.environ.get("EDGEDS_CONFIGS", SHARED_REFERENCE / "configs"))


def read_bandwidth_gb_s(threads: int, size_mb: int = 1024) -> float:
    """Sustained read bandwidth: `threads` threads summing disjoint slices of a large array."""
    data = np.ones(size_mb * (1 << 20) // 8)
    parts = np.array_split(data, threads)
    best = 0.0
    # best of many: a shared machine's neighbours take whole passes (42 vs 78 GB/s seen)
    for _ in range(10):
        workers = [threading.Thread(target=np.sum, args=(p,)) for p in parts]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, data.nbytes / (time.perf_counter() - t0) / 1e9)
    return best


def export_suffix(kv_cache: str, small_batch: bool = False) -> str:
    """What an edgeds export has besides its weights: "-kv-float16", "-small-batch", ..."""
    kv = "" if kv_cache == "float32" else f"-kv-{kv_cache}"
    return kv + ("-small-batch" if small_batch else "")


def variant_tag(weights: str, kv_cache: str, small_batch: bool = False) -> str:
    """What names an edgeds export other than the default: "-int8-wo", "-kv-float16",
    "-small-batch", ..."""
    return ("" if weights == "int8" else f"-{weights}") + export_suffix(kv_cache, small_batch)


def prepare(shape: str, work: Path, peer_python: str | None, peers: list[str],
            weights: str = "int8",
            kv_caches: tuple[str, ...] = ("float32",), small_batch: bool = False) -> dict[str, str]:
    """Source checkpoint and every runtime's model; edgeds exports under "edgeds" + their tag."""
    from benchmarks.random_checkpoint import write_checkpoint

    src = Path(shape) if Path(shape).is_dir() else work / f"{shape}-src"
    shape = src.name if Path(shape).is_dir() else shape
    if not (src / "config.json").exists():
        write_checkpoint(CONFIGS / f"{shape}.json", src, CONFIGS.parent / "deepseek-v3-tokenizer")
    paths = {"transformers-fp32": str(src)}
    for kv_cache in kv_caches:
        edg = work / f"{shape}-edgeds-{weights}{export_suffix(kv_cache, small_batch)}"
        if not (edg / "edgeds.json").exists():
            from importlib.util import find_spec

            formats = "onnx,openvino" if find_spec("openvino") else "onnx"
            subprocess.run([sys.executable, "-m", "edgeds.cli", "export", str(src), "-o", str(edg),
                            "--format", formats,
                            "--weights", weights, "--kv-cache", kv_cache, "--context", "2048",
                            "--overwrite",
                            *(["--small-batch-graph"] if small_batch else [])], check=True)
        for name in ("edgeds", "edgeds-onnxruntime", "edgeds-openvino"):
            paths[name + variant_tag(weights, kv_cache, small_batch)] = str(edg)
    py = peer_python or sys.executable
    ov = work / f"{shape}-optimum-ov-int8"
    if "openvino-genai" in peers and not (ov / "openvino_model.xml").exists():
        subprocess.run([py, "-m", "optimum.commands.optimum_cli", "export", "openvino", "--model",
                        str(src), "--task",
                        "text-generation-with-past", "--weight-format", "int8", str(ov)],
                       check=True)
    paths["openvino-genai"] = str(ov)
    og = work / f"{shape}-ortgenai-int8"
    if "onnxruntime-genai" in peers and not (og / "genai_config.json").exists():
        subprocess.run([py, "-m", "onnxruntime_genai.models.builder", "-i", str(src), "-o", str(og),
                        "-p", "int8", "-e", "cpu", "-c", str(work / "ortgenai-cache")], check=True)
    paths["onnxruntime-genai"] = str(og)
    gguf = work / f"{shape}-q8_0.gguf"
    if "llama.cpp-q8_0" in peers and not gguf.exists():
        subprocess.run([py, str(Path(__file__).with_name("gguf_writer.py")), str(src), str(gguf),
                        "--type", "q8_0"], check=True)
    paths["llama.cpp-q8_0"] = str(gguf)
    return paths


def run_peer(name: str, path: str, python: str, threads: int, vocab: int, batches: list[int],
             jobs: int, quick: bool, out: Path) -> dict | None:
    path_before = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": ":".join(filter(None, [str(REPO), path_before])),
           "OMP_NUM_THREADS": str(threads)}
    cmd = [python, "-m", "benchmarks.peers.runners", name, path, str(threads), str(vocab),
           ",".join(map(str, batches)) or "none", str(jobs), "1" if quick else "0", str(out)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        print(f"{name}: failed: "
              f"{r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}",
              flush=True)
        return None
    return json.loads(out.read_text())


def merge_rounds(runs: list[dict]) -> dict:
    """One row from a runtime's rounds: each metric's median, and its range under "spread"
    (a shared machine moves a single run by 10-30%, enough to flip a ratio)."""
    if len(runs) == 1:
        return runs[0]
    row = dict(runs[0])
    spread = {}
    for key in ("load_s", "ttft_s", "decode_tok_s_batch1", "peak_rss_mib"):
        vals = [r[key] for r in runs if r.get(key) is not None]
        row[key], spread[key] = float(np.median(vals)), (min(vals), max(vals))
    row["offline_tok_s"] = {}
    row["offline_errors"] = {b: msg for r in runs for b, msg in r.get("offline_errors", {}).items()}
    for batch in sorted({b for r in runs for b in r["offline_tok_s"]}, key=int):
        vals = [r["offline_tok_s"][batch] for r in runs if batch in r["offline_tok_s"]]
        row["offline_tok_s"][batch] = float(np.median(vals))
        spread[f"offline@{batch}"] = (min(vals), max(vals))
    offline = row["offline_tok_s"]
    row["best_batch"] = max(offline, key=offline.get) if offline else None
    row["rounds"], row["spread"] = len(runs), spread
    return row


def _with_range(value: float, span: tuple[float, float] | None, fmt: str) -> str:
    return format(value, fmt) + (f" ({format(span[0], fmt)}-{format(span[1], fmt)})"
                                 if span else "")


def _cell(r: dict, key: str, fmt: str) -> str:
    """A metric, with its range over the rounds where there were several."""
    return _with_range(r[key], r.get("spread", {}).get(key), fmt)


def report(results: list[dict], machine: str, threads: int, bandwidth: float, weights_gb: float,
           out: Path, note: str) -> str:
    peers = [r for r in results if not r["runtime"].startswith("edgeds")]
    ours = [r for r in results if r["runtime"].startswith("edgeds")]

    def best(key, low=False, sub=None):
        vals = [(r[key] if sub is None else r[key][sub]) for r in peers if r.get(key) is not None]
        return (min(vals) if low else max(vals)) if vals else None

    lines = [f"# edgeds against its peers: {machine}, {threads} threads", "", note, "",
             (f"Machine read bandwidth ({threads} threads): {bandwidth:.1f} GB/s; a decode step "
              f"reads {weights_gb:.2f} GB of INT8 "
              f"weights (all but the embedding table), "
              f"so batch-1 decode is bounded near {bandwidth / weights_gb:.1f} tok/s."), "",
             ("| runtime | load (s) | TTFT 128 (s) | decode b1 (tok/s) | weights read b1 (GB/s) | "
              "offline best (tok/s @ batch) | peak RSS (MiB) |"),
             "|---|---|---|---|---|---|---|"]
    for r in results:
        off = "not run"
        if r["offline_tok_s"]:
            b = max(r["offline_tok_s"], key=r["offline_tok_s"].get)
            span = r.get("spread", {}).get(f"offline@{b}")
            off = f"{_with_range(r['offline_tok_s'][b], span, '.1f')} @ {b}"
        bw = r["decode_tok_s_batch1"] * weights_gb if r["decode_tok_s_batch1"] else 0
        name = (f"{r['runtime']} ({r['profile']} profile, {r['backend']})" if "backend" in r
                else r["runtime"])
        if r.get("rounds", 1) > 1:
            name += f", median of {r['rounds']} rounds"
        lines.append(f"| {name} | {_cell(r, 'load_s', '.2f')} | {_cell(r, 'ttft_s', '.3f')} | "
                     f"{_cell(r, 'decode_tok_s_batch1', '.1f')} | {bw:.1f} | {off} | "
                     f"{_cell(r, 'peak_rss_mib', '.0f')} |")
    failed = [f"{r['runtime']}: the offline job at batch {b} failed ({msg})"
              for r in results for b, msg in r.get("offline_errors", {}).items()]
    if failed:
        lines += ["", *[f"- {line}" for line in failed]]
    if ours and peers:
        b_dec = best("decode_tok_s_batch1")
        b_ttft, b_load = best("ttft_s", low=True), best("load_s", low=True)
        b_off = max(max(r["offline_tok_s"].values()) for r in peers if r["offline_tok_s"])
        lines += ["",
                  "Ratios to the best peer (higher is better for speed; lower for TTFT and load):",
                  "", "| runtime | batch-1 decode | offline throughput | TTFT | load |",
                  "|---|---|---|---|---|"]
        for edg in ours:
            off = (f"{max(edg['offline_tok_s'].values()) / b_off:.2f}x" if edg["offline_tok_s"]
                   else "not run")
            lines.append(f"| {edg['runtime']} | "
                         f"{edgeds_val(edg, 'decode_tok_s_batch1') / b_dec:.2f}x | "
                         f"{off} | {edg['ttft_s'] / b_ttft:.2f}x | {edg['load_s'] / b_load:.2f}x |")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for r in results:
            xs = sorted(int(b) for b in r["offline_tok_s"])
            ax.plot(xs,
                    [r["offline_tok_s"][str(b)] if str(b) in r["offline_tok_s"]
                     else r["offline_tok_s"][b] for b in xs],
                    marker="o", label=r["runtime"])
        ax.set_xlabel("batch size")
        ax.set_ylabel("offline throughput (tok/s)")
        ax.set_title(f"{machine}, {threads} threads")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out.with_suffix(".png"), dpi=100)
        lines += ["", f"![throughput against batch size]({out.with_suffix('.png').name})"]
    except ImportError:
        pass
    text = "\n".join(lines) + "\n"
    out.write_text(text)
    return text


def edgeds_val(r: dict, key: str) -> float:
    return r[key] or 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="deepseek-r1-distill-qwen-1.5b",
                    help="a config name in shared/reference/configs, or a checkpoint folder")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--peers",
                    default="edgeds,openvino-genai,onnxruntime-genai,llama.cpp-q8_0,"
                            "transformers-fp32")
    ap.add_argument("--peer-python", default=None,
                    help="python of the environment that has the peers")
    ap.add_argument("--batches", default="1,4,8,16",
                    help='batch settings of the offline job; "none" skips it')
    ap.add_argument("--jobs", type=int, default=64)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--weights", default="int8", help="edgeds export weights (int8, int8-wo, int4)")
    ap.add_argument("--kv-cache", default="float32",
                    help="edgeds export KV cache types, comma-separated (float32, float16, int8): "
                         "each is a row, in turns")
    ap.add_argument("--small-batch-graph", action="store_true",
                    help="export edgeds with its small-batch decode graph (edgeds export "
                         "--small-batch-graph)")
    ap.add_argument("--machine", default=None)
    ap.add_argument("--work", default="/tmp/edgeds-compare")
    ap.add_argument("--reuse", default="",
                    help="peers whose results from an earlier run (in --work) to reuse")
    ap.add_argument("--reuse-label", default="earlier run", help="how the report marks reused rows")
    ap.add_argument("--prepare-only", action="store_true", help="export the models, run nothing")
    ap.add_argument("--no-report", action="store_true",
                    help="run, keep each result's JSON in --work, write no report")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every runtime this many times, taking turns; the report gives "
                         "medians and ranges")
    args = ap.parse_args()
    peers = [p for p in args.peers.split(",") if p and p != "none"]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    kv_caches = tuple(args.kv_cache.split(","))
    paths = prepare(args.shape, work, args.peer_python, peers, args.weights, kv_caches,
                    args.small_batch_graph)
    # Each edgeds export is a row of its own, named by its tag ("edgeds-kv-float16").
    rows = [(name + variant_tag(args.weights, kv, args.small_batch_graph), name)
            if name.startswith("edgeds") else (name, name)
            for name in peers
            for kv in (kv_caches if name.startswith("edgeds") else ("",))]  # (row, runner)
    if args.prepare_only:
        return
    config = json.loads((Path(paths["transformers-fp32"]) / "config.json").read_text())
    vocab = min(100_000, config["vocab_size"])
    batches = [int(b) for b in args.batches.split(",") if b != "none"]
    results = []
    reused = [n for n in args.reuse.split(",") if n]
    for name in reused:
        results.append(json.loads((work / f"{name}.json").read_text()))
        results[-1]["runtime"] += f" ({args.reuse_label})" if args.reuse_label else ""
    runs: dict[str, list[dict]] = {}
    # taking turns, so that a slow spell of the machine hits every runtime
    for round_ in range(args.rounds):
        for name, runner in rows:
            ours = runner.startswith("edgeds")
            python = sys.executable if ours else (args.peer_python or sys.executable)
            if not Path(paths[name]).exists():
                print(f"{name}: no model at {paths[name]}; skipped", flush=True)
                continue
            out = work / f"{name}.json"
            res = run_peer(runner, paths[name], python, args.threads, vocab, batches, args.jobs,
                           args.quick, out)
            if res and ours:
                res["runtime"] = name
            if res:
                runs.setdefault(name, []).append(res)
                if args.rounds > 1:
                    round_file = out.with_suffix(f".round{round_ + 1}.json")
                    round_file.write_text(json.dumps(res, indent=2))
                out.write_text(json.dumps(merge_rounds(runs[name]), indent=2))
                print(json.dumps(res), flush=True)
    results += [merge_rounds(r) for r in runs.values()]
    if args.no_report:
        return
    machine = args.machine or f"{platform.machine()}-{args.threads}t"
    from edgeds.artifact import load_artifact
    from edgeds.memory_budget import decode_read_bytes

    # The typed manifest (decode_read_bytes reads its records, not the JSON)
    export = paths["edgeds" + variant_tag(args.weights, kv_caches[0], args.small_batch_graph)]
    manifest = load_artifact(export, verify=False).manifest
    weights_gb = decode_read_bytes(manifest, "onnx") / 1e9  # the 1.5B shape is dense
    note = (f"`python -m benchmarks.peers.compare {' '.join(sys.argv[1:])}`; shape {args.shape}, "
            "random weights; "
            f"TTFT on a 128-token prompt; decode over {16 if args.quick else 64} tokens; offline "
            f"job of {args.jobs} prompts "
            f"of 64-512 tokens, {16 if args.quick else 128} new tokens each, EOS ignored.")
    out = RESULTS / f"{machine}.md"
    print(report(results, machine, args.threads, read_bandwidth_gb_s(args.threads), weights_gb, out,
                 note))


if __name__ == "__main__":
    main()
