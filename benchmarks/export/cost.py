"""Peak RSS, time and artifact size of `edgeds export` at real model shapes (random weights).

    python -m benchmarks.export.cost            # 1.5B and 7B shapes, INT8, both formats
    python -m benchmarks.export.cost --shapes deepseek-r1-distill-qwen-1.5b

Each export runs in a child process; its peak RSS is the child's ru_maxrss. Results are written
to benchmarks/results/export_cost.md and .json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import RESULTS, SHARED_REFERENCE
from benchmarks.random_checkpoint import write_checkpoint
from edgeds.artifact import load_artifact

CONFIGS = SHARED_REFERENCE / "configs"


def folder_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def measure(shape: str, work: Path, weights: str, formats: str) -> dict:
    src, out = work / f"{shape}-src", work / f"{shape}-{weights}"
    if not (src / "model.safetensors.index.json").exists():
        write_checkpoint(CONFIGS / f"{shape}.json", src, CONFIGS.parent / "deepseek-v3-tokenizer")
    shutil.rmtree(out, ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "edgeds.cli", "export", str(src), "-o", str(out),
                    "--weights", weights, "--format", formats], check=True)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    manifest = load_artifact(out, verify=False).manifest
    result = {
        "shape": shape, "weights": weights, "formats": formats, "seconds": round(seconds, 1),
        "peak_rss_gib": round(max(peak, before) / 2**20, 2),
        "source_gib": round(folder_bytes(src) / 2**30, 2),
        "artifact_gib": round(folder_bytes(out) / 2**30, 2),
        "kv_bytes_per_token": manifest.kv_layout(manifest.formats[0]).bytes_per_token,
        "per_format_gib": {
            fmt: round(sum(manifest.file_size(f) for f in (g.file, g.data_file)) / 2**30, 2)
            for fmt, g in manifest.graphs.items()
        },
    }
    shutil.rmtree(out, ignore_errors=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+",
                    default=["deepseek-r1-distill-qwen-1.5b", "deepseek-r1-distill-qwen-7b"])
    ap.add_argument("--weights", default="int8")
    ap.add_argument("--formats", default="onnx,openvino")
    ap.add_argument("--work", default="/tmp/edgeds-export-cost")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for shape in args.shapes:  # one child per shape, so ru_maxrss of children is per shape
        out = subprocess.run([sys.executable, "-m", __spec__.name, "--one", shape, args.weights,
                              args.formats, str(work)],
                             check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(results[-1], flush=True)
    previous = RESULTS / "export_cost.json"
    if previous.exists():  # keep rows of other shapes measured earlier
        done = {(r["shape"], r["weights"], r["formats"]) for r in results}
        results = [r for r in json.loads(previous.read_text())
                   if (r["shape"], r["weights"], r["formats"]) not in done] + results
    machine = f"{platform.machine()}, {__import__('os').cpu_count()} CPUs"
    lines = [f"# Export cost ({machine}, `python -m benchmarks.export.cost`)", "",
             ("| shape | weights | formats | time (s) | peak RSS (GiB) | source bf16 (GiB) | "
              "artifact (GiB) | per format (GiB) | KV bytes/token (fp32) |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['shape']} | {r['weights']} | {r['formats']} | {r['seconds']} | "
                     f"{r['peak_rss_gib']} | "
                     f"{r['source_gib']} | {r['artifact_gib']} | {r['per_format_gib']} | "
                     f"{r.get('kv_bytes_per_token', '')} |")
    RESULTS.mkdir(exist_ok=True)
    md = RESULTS / "export_cost.md"
    old = md.read_text() if md.exists() else ""
    # other scripts' sections (fp8_cost)
    later = old[old.index("\n## ") :] if "\n## " in old else ""
    md.write_text("\n".join(lines) + "\n" + later)
    (RESULTS / "export_cost.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        print(json.dumps(measure(sys.argv[2], Path(sys.argv[5]), sys.argv[3], sys.argv[4])))
    else:
        main()
