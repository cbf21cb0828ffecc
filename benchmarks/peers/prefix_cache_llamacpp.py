"""Time to first token from a persisted prefix, edgeds beside llama.cpp's prompt cache, on the
same dense model and the same token ids (issue 24's second-run target, side by side).

    python -m benchmarks.peers.prefix_cache_llamacpp --llama-src SRC --llama-build BUILD
        [--questions 10] [--prefix 1500] [--question 100] [--threads 2]
        [--work /tmp/prefix-peers] [--out benchmarks/results/prefix-cache-llamacpp.json]

SRC: a llama.cpp source tree (its include/ and ggml/include/), BUILD: a build of it with
libllama.a and the ggml libraries (benchmarks/peers/build_peers.sh makes one). The harness
benchmarks/peers/prompt_cache_ttft.cpp is compiled against them: it saves the state of
yesterday's prompt to a file (as `llama-completion --prompt-cache FILE` does) and times each
new prompt computed in full and from the file (as `--prompt-cache-ro`: load the state, keep
the shared tokens, decode the rest). The model: the embedded model's checkpoint
(benchmarks/reference_models/r1-distill-tiny-python), INT8 for edgeds (the embedded artifact),
Q8_0 for llama.cpp (benchmarks/peers/gguf_writer.py; needs the `gguf` package, e.g. SRC/gguf-py
on PYTHONPATH). edgeds' side is prefix_cache.py's cold path: each question from a cold memory
cache on DIR, against the same question uncached. Prompts are prefix_cache.py's (random ids).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import edgeds
from benchmarks.design.prefix_cache import job, prompts
from edgeds.hardware import detect

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT = ROOT / "benchmarks/reference_models/r1-distill-tiny-python"


def build_harness(src: Path, build: Path, out: Path) -> Path:
    libs = [build / "src", build / "ggml/src"]
    cmd = ["g++", "-O2", "-std=c++17", str(Path(__file__).with_name("prompt_cache_ttft.cpp")),
           f"-I{src / 'include'}", f"-I{src / 'ggml/include'}", *(f"-L{d}" for d in libs),
           "-lllama", "-lggml", "-lggml-cpu", "-lggml-base", "-fopenmp", "-lpthread",
           "-o", str(out)]
    subprocess.run(cmd, check=True)
    return out


def edgeds_side(questions: list[np.ndarray], saved: list[np.ndarray], threads: int) -> dict:
    off = edgeds.load(None, threads=threads, prefix_cache=False)
    with tempfile.TemporaryDirectory() as folder:
        disk = edgeds.load(None, threads=threads, prefix_cache=folder)
        job(disk, saved, 1, None)  # yesterday's run fills DIR
        cold, plain, load = [], [], os.getloadavg()[0]
        for p in questions:
            disk.prefix.store.close()
            disk.enable_prefix_cache(folder)  # a cold memory cache: every block from DIR
            cold.append(job(disk, [p], 1, 1)["ttft_p50_s"])
            plain.append(job(off, [p], 1, 1)["ttft_p50_s"])
    return {"backend": off.choice.backend, "cache_layout": off.backend.cache_layout,
            "threads": off.choice.threads, "load_avg": round(load, 1),
            "ttft_uncached_s": plain, "ttft_from_dir_s": cold,
            "ttft_uncached_p50_s": float(np.median(plain)),
            "ttft_from_dir_p50_s": float(np.median(cold)),
            "ttft_ratio": round(float(np.median(cold) / np.median(plain)), 3)}


def llamacpp_side(harness: Path, gguf: Path, questions: list[np.ndarray], saved: np.ndarray,
                  threads: int, work: Path) -> dict:
    tokens = work / "tokens.txt"
    tokens.write_text("".join(" ".join(map(str, p.tolist())) + "\n" for p in [saved, *questions]))
    load = os.getloadavg()[0]
    out = subprocess.run([str(harness), str(gguf), str(tokens), str(work / "state.bin"),
                          str(threads)], capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    plain = [r["ttft_uncached_s"] for r in rows]
    cold = [r["ttft_from_file_s"] for r in rows]
    return {"threads": threads, "load_avg": round(load, 1), "weights": "Q8_0",
            "state_file_bytes": (work / "state.bin").stat().st_size,
            "tokens_reused": [r["reused"] for r in rows],
            "same_greedy_token": all(r["same_token"] for r in rows),
            "ttft_uncached_s": plain, "ttft_from_file_s": cold,
            "ttft_uncached_p50_s": float(np.median(plain)),
            "ttft_from_file_p50_s": float(np.median(cold)),
            "ttft_ratio": round(float(np.median(cold) / np.median(plain)), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-src", type=Path, required=True)
    ap.add_argument("--llama-build", type=Path, required=True)
    ap.add_argument("--questions", type=int, default=10)
    ap.add_argument("--prefix", type=int, default=1500)
    ap.add_argument("--question", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/prefix-peers"))
    ap.add_argument("--out", default="benchmarks/results/prefix-cache-llamacpp.json")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    gguf = a.work / "r1-distill-tiny-python-q8_0.gguf"
    if not gguf.exists():
        subprocess.run([sys.executable, "-m", "benchmarks.peers.gguf_writer", str(CHECKPOINT),
                        str(gguf), "--type", "q8_0"], check=True, cwd=ROOT)
    harness = build_harness(a.llama_src, a.llama_build, a.work / "prompt_cache_ttft")
    vocab = 4096  # the embedded model's
    saved = prompts(vocab, 8, a.prefix, a.question, seed=2)
    questions = prompts(vocab, a.questions, a.prefix, a.question, seed=3)
    t0 = time.time()
    result = {"machine": detect().cpu_model, "prefix": a.prefix, "question": a.question,
              "questions": a.questions, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                                 time.gmtime(t0))}
    result["edgeds"] = edgeds_side(questions, saved, a.threads)
    result["llama.cpp"] = llamacpp_side(harness, gguf, questions, saved[0], a.threads, a.work)
    result["seconds"] = round(time.time() - t0, 1)
    text = json.dumps(result, indent=2)
    print(text)
    Path(a.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
