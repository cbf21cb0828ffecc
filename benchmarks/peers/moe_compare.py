"""edgeds' MLA+MoE path beside llama.cpp and ik_llama.cpp, on one random checkpoint.

    python -m benchmarks.peers.moe_compare --layers 8 --threads 16 --peers-src .moebench \
        --peers-build /tmp/peerbuild --work /tmp/moe --machine xeon-amx-16t
    ... --prepare-only                          # checkpoint, edgeds export and GGUFs only
    ... --engines llama.cpp,edgeds-native --no-report   # some rows; their JSON stays in --work
    ... --engines none --reuse llama.cpp,ik_llama.cpp   # a report from results in --work
    ... --engines none --collect ENGINES --bandwidth 79.6 # rows of this call's --no-report runs
                                            # (ENGINE-r1.json, -r2.json ...: rounds, merged)
    ... --engines ik_llama.cpp,edgeds-native --depths 16384 --depth-only --no-report
                                            # batch 1 after 16,384 tokens alone, into
                                            # ENGINE-depth.json, which later reports join

The checkpoint has DeepSeek-V2-Lite's widths cut to --layers layers (1 dense + the rest MoE: 64
experts top-6 + 2 shared; benchmarks/random_checkpoint.py), random bf16 weights. edgeds
exports it int8; each peer's own converter (its convert_hf_to_gguf.py, run from its source
tarball: llama.cpp's is the llama-cpp-python sdist's vendored tree) writes a bf16 GGUF that the
peer's llama-quantize turns into Q8_0. The peers come from benchmarks/peers/build_peers.sh
(sources, then build). Every engine runs alone, one after another, on the
same threads: the peers as llama-batched-bench (llama.cpp with -nr: its weight repacking aborts
the deepseek2 graph; ik_llama.cpp with -mla 3 -fa on, fused MoE being its default), edgeds as the
backend it loads (prefill and decode calls, no sampling: batched-bench samples nothing either),
each on random tokens. Rows: prefill of a 512-token prompt; decode at batch 1 after 128 and after
4,096 tokens; decode at batch 16 and 64 (each sequence 128 tokens, the whole batch's tokens/s);
with --depths, prefill of and decode after longer single prompts (issue 23's depths: the peers'
batched-bench prompt of that length then 32 steps, as llama-bench's -gp DEPTH,32 / -d DEPTH).
Writes benchmarks/results/moe-<machine>.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

from benchmarks import RESULTS, SHARED_REFERENCE

CONFIGS = Path(os.environ.get("EDGEDS_CONFIGS", SHARED_REFERENCE / "configs"))

PROMPT, DECODE_STEPS, BATCHES = 128, 32, (1, 16, 64)  # batched-bench's -npp, -ntg, -npl
PREFILLS = (512, 4096)  # one sequence each, then DECODE_STEPS steps after it
EXPORT_CONTEXT = 32768 + DECODE_STEPS + 64  # the deepest --depths row the export serves
ROWS = {  # metric key: what the table calls it
    "prefill_512": "prefill 512 tok/s",
    "decode_b1_128": "decode batch 1 after 128 tokens, tok/s",
    "decode_b1_4096": "decode batch 1 after 4,096 tokens, tok/s",
    "decode_b16_128": "decode batch 16 (whole batch), tok/s",
    "decode_b64_128": "decode batch 64 (whole batch), tok/s",
}
DEPTH_TARGET = 1.2  # issue 23: batch 1 after each depth, over the best peer
RSS_MARGIN_MIB = 300  # issue 22: edgeds' peak RSS at most its artifact + KV cache + this


def row_shapes(rows) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The batches (of PROMPT-token sequences) and the single long prompts that measure `rows`
    (ROWS keys): prefill_512 and decode_b1_4096 each come from a PREFILLS prompt."""
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        raise SystemExit(f"moe_compare: unknown row(s) {', '.join(unknown)}; known: "
                         + ", ".join(ROWS))
    batches = tuple(b for b in BATCHES if f"decode_b{b}_{PROMPT}" in rows)
    prefills = tuple(p for p in PREFILLS if f"prefill_{p}" in rows or f"decode_b1_{p}" in rows)
    return batches, prefills


def depth_rows(depths) -> dict[str, str]:
    """The table's rows for --depths (decode after, prefill of, each)."""
    rows = {}
    for d in depths:
        rows[f"decode_b1_{d}"] = f"decode batch 1 after {d:,} tokens, tok/s"
        rows[f"prefill_{d}"] = f"prefill {d:,} tok/s"
    return rows
# Issue 22's targets, edgeds over the best peer of each row (TARGETS[--targets]).
TARGETS = {
    "xeon-amx-16t": {"prefill_512": 1.5, "decode_b1_128": 1.2, "decode_b1_4096": 1.2,
                 "decode_b16_128": 1.5, "decode_b64_128": 2.0},
    "2-core": {"decode_b1_128": 1.5, "decode_b16_128": 2.0},  # 4 layers, against llama.cpp
    "none": {},
}
EDGEDS = {"edgeds-native": "native", "edgeds-onnxruntime": "onnxruntime"}
PEERS = ("llama.cpp", "ik_llama.cpp")
PEER_FLAGS = {"llama.cpp": ["-nr"], "ik_llama.cpp": ["-mla", "3", "-fa", "on"]}
# Mainline prints its load time only with its timings on and info logs shown; ik_llama.cpp always.
LOAD_FLAGS = {"llama.cpp": ["--perf", "-lv", "4"], "ik_llama.cpp": []}


def prepare(
    work: Path,
    config: Path,
    layers: int,
    engines: list[str],
    peers_src: Path | None,
    peers_build: Path,
    threads: int,
    direct_q8: bool = False,
    drop_checkpoint: bool = False,
    checkpoint_threads: int = 1,
) -> dict[str, Path]:
    """The checkpoint and every engine's model (each step skipped where its output exists; the
    checkpoint written only where a step needs it: the same seed gives the same weights).
    `direct_q8`: each peer's converter writes Q8_0 itself (no bf16 GGUF of twice the size, no
    llama-quantize), one job after another; `drop_checkpoint`: the checkpoint deleted once the
    models are made. Together they keep a full-depth model within a small disk."""
    from benchmarks.random_checkpoint import write_checkpoint

    src = work / f"v2-lite-{layers}l-src"
    paths = {"checkpoint": src}
    art = work / f"v2-lite-{layers}l-edgeds-int8"
    jobs = []  # the export and each peer's conversion at once: each is mostly one core
    if any(e in EDGEDS for e in engines) and not (art / "edgeds.json").exists():
        jobs.append(lambda: export_edgeds(src, art))
    paths |= {e: art for e in EDGEDS}
    for peer in (e for e in engines if e in PEERS):
        paths[peer] = work / f"v2-lite-{layers}l-{peer}-q8_0.gguf"
        if paths[peer].exists():
            continue
        if direct_q8:
            jobs.append(partial(convert_to_gguf, peer, src, paths[peer], peers_src, work, "q8_0"))
        else:
            jobs.append(partial(peer_gguf, peer, src, paths[peer], peers_src, peers_build, threads))
    if jobs and not (src / "model.safetensors.index.json").exists():
        (work / "config.json").write_text(json.dumps(checkpoint_config(config), indent=2))
        write_checkpoint(work / "config.json", src, CONFIGS.parent / "deepseek-v3-tokenizer",
                         layers=layers, **({"threads": checkpoint_threads}
                                           if checkpoint_threads > 1 else {}))
    with ThreadPoolExecutor(1 if direct_q8 else max(1, len(jobs))) as pool:
        for job in [pool.submit(j) for j in jobs]:
            job.result()
    if drop_checkpoint and src.exists():
        import shutil

        shutil.rmtree(src)
    return paths


def checkpoint_config(config: Path, layers: int | None = None) -> dict:
    """The widths of --config with V3's vocabulary: the only tokenizer here is V3's (129,280
    ids, more than V2's 102,400), so the embedding and LM head are V3's, which llama.cpp's
    converter checks. `layers`: the cut depth, as the checkpoint's own config.json says."""
    widths = json.loads(config.read_text())
    v3 = json.loads((CONFIGS / "deepseek-v3.json").read_text())
    widths |= {k: v3[k] for k in ("vocab_size", "bos_token_id", "eos_token_id")}
    return widths | ({"num_hidden_layers": layers} if layers else {})


def export_edgeds(src: Path, art: Path) -> None:
    context = EXPORT_CONTEXT
    run([sys.executable, "-m", "edgeds.cli", "export", str(src), "-o", str(art), "--format", "onnx",
         "--weights", "int8", "--context", str(context), "--overwrite"])


def peer_gguf(
    peer: str, src: Path, gguf: Path, peers_src: Path | None, peers_build: Path, threads: int
) -> None:
    """The peer's bf16 GGUF from its own converter, then its llama-quantize's Q8_0."""
    bf16 = gguf.with_name(gguf.name.replace("-q8_0", "-bf16"))
    if not bf16.exists():
        convert_to_gguf(peer, src, bf16, peers_src, gguf.parent)
    quantize = peers_build / peer / "bin" / "llama-quantize"
    if not quantize.exists():
        print(f"{peer}: {quantize} not built yet; its Q8_0 GGUF waits", flush=True)
        return
    # Mainline reads q_lora_rank unless the model has 26 or 27 layers; V2-Lite has none (0).
    extra = []
    if peer == "llama.cpp":
        extra = ["--override-kv", "deepseek2.attention.q_lora_rank=int:0"]
    run([str(quantize), *extra, str(bf16), str(gguf), "Q8_0", str(threads)], quiet=True)
    bf16.unlink()


def convert_to_gguf(
    peer: str, src: Path, out: Path, peers_src: Path | None, work: Path, outtype: str = "bf16"
) -> None:
    """The peer's own converter from its source tarball: ik_llama.cpp's keeps kv_b_proj whole
    beside the split K/V halves (it reads llama.cpp's split-only GGUF as an "incompatible
    mainline model"). `outtype` q8_0: the converter's own Q8_0 (gguf-py's), in place of a bf16
    GGUF for llama-quantize."""
    tree = work / f"{peer}-convert"
    if not (tree / "convert_hf_to_gguf.py").exists():
        if peers_src is None:
            raise SystemExit(
                f"moe_compare: --peers-src ({peer}.tar.xz) is needed to convert to GGUF"
            )
        with tarfile.open(peers_src / f"{peer}.tar.xz") as t:
            top = ("convert_hf_to_gguf.py", "conversion", "gguf-py")
            members = [
                m for m in t.getmembers() if m.name.split("/")[1:2] and m.name.split("/")[1] in top
            ]
            t.extractall(work / f"{peer}-convert-tmp", members=members, filter="data")
        (work / f"{peer}-convert-tmp" / peer).rename(tree)
    env = {**os.environ, "PYTHONPATH": f"{tree / 'gguf-py'}:{os.environ.get('PYTHONPATH', '')}"}
    part = out.with_name(out.name + ".part")  # a conversion cut short is not taken as made
    run(
        [
            sys.executable,
            str(tree / "convert_hf_to_gguf.py"),
            str(src),
            "--outtype",
            outtype,
            "--outfile",
            str(part),
        ],
        env=env,
        quiet=True,
    )
    part.rename(out)


def run(cmd: list[str], env: dict | None = None, quiet: bool = False) -> str:
    t0 = time.perf_counter()
    # The peers' tools print bytes that are not UTF-8 (cut multi-byte progress characters).
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, errors="replace", check=False)
    if r.returncode != 0:
        print((r.stdout + r.stderr)[-3000:], file=sys.stderr)
        raise SystemExit(f"moe_compare: failed ({r.returncode}): {' '.join(cmd[:3])} ...")
    print(
        f"{' '.join(Path(c).name for c in cmd[:4])}: {time.perf_counter() - t0:.0f} s", flush=True
    )
    return r.stdout + ("" if quiet else r.stderr)


# Runs argv[2:] and writes its peak RSS (KiB) to argv[1]. Linux counts, in a process's peak,
# the memory of the process it was forked from as it was at the fork: a command started by
# this harness, whose RSS is a checkpoint's, would report that. Started from this small
# launcher, the command's peak is its own.
LAUNCHER = """import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(cmd: list[str]) -> tuple[str, float]:
    """A command's output and its own peak RSS (MiB, not the harness's: LAUNCHER)."""
    with tempfile.TemporaryDirectory() as tmp:
        peak = Path(tmp) / "maxrss"
        p = subprocess.run([sys.executable, "-c", LAUNCHER, str(peak), *cmd],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           errors="replace")
        if p.returncode != 0:
            print(p.stdout[-3000:], file=sys.stderr)
            raise RuntimeError(f"{' '.join(cmd[:2])} failed ({p.returncode})")
        return p.stdout, int(peak.read_text()) / 1024


def parse_batched_bench(text: str) -> list[dict]:
    """Rows of llama-batched-bench's table (the same in both peers)."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and re.fullmatch(r"\d+", cells[0]):
            pp, tg, b, _, t_pp, s_pp, t_tg, s_tg, _, _ = cells
            rows.append(
                {
                    "pp": int(pp),
                    "tg": int(tg),
                    "batch": int(b),
                    "prefill_tok_s": float(s_pp),
                    "decode_tok_s": float(s_tg),
                    "prefill_s": float(t_pp),
                    "decode_s": float(t_tg),
                }
            )
    return rows


def metrics_from_rows(rows: list[dict]) -> dict:
    m = {}
    for r in rows:
        if r["batch"] == 1 and r["pp"] != PROMPT:
            m[f"prefill_{r['pp']}"] = r["prefill_tok_s"]
        m[f"decode_b{r['batch']}_{r['pp']}"] = r["decode_tok_s"]
    return m


def peer_load_s(text: str) -> float | None:
    """The load time a peer prints at its end (llama.cpp's llama_perf_context_print,
    ik_llama.cpp's llama_print_timings): from the model's load to the end of its first
    evaluation, which in batched-bench is a warm-up batch of a few tokens."""
    m = re.search(r"load time\s*=\s*([\d.]+) ms", text)
    return float(m.group(1)) / 1e3 if m else None


def measure_peer(peer: str, gguf: Path, build: Path, threads: int, depths=(),
                 depth_only: bool = False, rows=tuple(ROWS)) -> dict:
    """Two batched-bench runs: the batches (each sequence its own slots: -c is the sum), then the
    single long sequences; a third for --depths (or that alone: depth_only). `rows`: only the
    runs and sizes those rows need."""
    batches, prefills = row_shapes(rows)
    exe = str(build / peer / "bin" / "llama-batched-bench")
    common = [
        "-m",
        str(gguf),
        "-t",
        str(threads),
        "-tb",
        str(threads),
        "-b",
        "2048",
        "-ub",
        "512",
        *PEER_FLAGS[peer],
    ]
    calls = []
    if batches:
        calls.append(["-c", str(max(batches) * (PROMPT + DECODE_STEPS)), "-npp", str(PROMPT),
                      "-ntg", str(DECODE_STEPS), "-npl", ",".join(map(str, batches))])
    if prefills:
        calls.append(["-c", str(max(prefills) + DECODE_STEPS + 64), "-npp",
                      ",".join(map(str, prefills)), "-ntg", str(DECODE_STEPS), "-npl", "1"])
    if depth_only:
        calls = []
    if depths:
        calls.append(["-c", str(max(depths) + DECODE_STEPS + 64), "-npp",
                      ",".join(map(str, depths)), "-ntg", str(DECODE_STEPS), "-npl", "1"])
    # A short run first, for the load time alone (the measured runs keep their usual output);
    # its own first evaluation is the batched-bench warm-up of a few tokens.
    out, rss = run_measured([exe, *common, "-c", "64", "-npp", "16", "-ntg", "1", "-npl", "1",
                             *LOAD_FLAGS[peer]])
    table, loads = [], [peer_load_s(out)]
    for args in calls:
        out, peak = run_measured([exe, *common, *args])
        table += parse_batched_bench(out)
        rss = max(rss, peak)
    res = {
        "engine": peer,
        "metrics": metrics_from_rows(table),
        "rows": table,
        "peak_rss_mib": rss,
        "flags": " ".join(common[2:]),
    }
    if loads[0] is not None:
        res["load_s"] = loads[0]
    return res


def measure_edgeds(artifact: Path, backend: str, threads: int, depths=(),
                   depth_only: bool = False, rows=tuple(ROWS)) -> dict:
    """The backend edgeds.load gives, driven as batched-bench drives a peer: random prompts into
    fresh slots, then DECODE_STEPS decode calls of random tokens; the first call of each shape
    warms it up untimed. Records the artifact's bytes and the largest KV cache it allocated,
    against which issue 22 bounds its peak RSS."""
    import edgeds
    from edgeds.batch.progress import peak_rss_bytes

    t0 = time.perf_counter()
    engine = edgeds.load(artifact, threads=threads, backend=backend, prefix_cache=False)
    load_s = time.perf_counter() - t0
    be, rng = engine.backend, np.random.default_rng(0)
    vocab = be.vocab_size
    kv_per_token = engine.artifact.manifest.kv_layout(engine.choice.artifact_format).bytes_per_token
    kv_bytes = 0

    def tokens(n: int) -> np.ndarray:
        return rng.integers(0, vocab, n).astype(np.int64)

    def run_batch(batch: int, prompt: int) -> tuple[float, float]:
        nonlocal kv_bytes
        be.start(batch, prompt + DECODE_STEPS + 8)
        kv_bytes = max(kv_bytes, kv_per_token * batch * (prompt + DECODE_STEPS + 8))
        t = time.perf_counter()
        be.prefill(list(range(batch)), [tokens(prompt) for _ in range(batch)])
        t_prefill = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(DECODE_STEPS):
            be.decode(tokens(batch))
        return batch * prompt / t_prefill, batch * DECODE_STEPS / (time.perf_counter() - t)

    batches, prefills = row_shapes(rows)
    table = []
    shapes = [*((b, PROMPT) for b in batches), *((1, p) for p in prefills)]
    shapes = [*([] if depth_only else shapes), *((1, d) for d in depths)]
    for batch, prompt in shapes:
        run_batch(min(batch, 2), 16)  # warm-up
        s_pp, s_tg = run_batch(batch, prompt)
        table.append(
            {
                "pp": prompt,
                "tg": DECODE_STEPS,
                "batch": batch,
                "prefill_tok_s": s_pp,
                "decode_tok_s": s_tg,
            }
        )
    files = [f for f in Path(artifact).rglob("*") if f.is_file()]
    return {
        "engine": f"edgeds-{be.name}",
        "metrics": metrics_from_rows(table),
        "rows": table,
        "load_s": load_s,
        "peak_rss_mib": peak_rss_bytes() / 2**20,
        "artifact_mib": sum(f.stat().st_size for f in files) / 2**20,
        "kv_mib": kv_bytes / 2**20,
        "profile": engine.profile.name,
        "backend": be.name,
    }


def decode_read_gb(config: dict) -> float:
    """The int8 weight bytes a batch-1 decode step reads: every attention projection, the dense
    layers' MLP, the active experts (top-k routed + shared) of each MoE layer, the LM head."""
    h, heads = config["hidden_size"], config["num_attention_heads"]
    dn, dr, dv, lat = (
        config[k] for k in ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "kv_lora_rank")
    )
    q = heads * (dn + dr) * (config["q_lora_rank"] + h if config.get("q_lora_rank") else h)
    attn = q + (lat + dr) * h + heads * (dn + dv) * lat + h * heads * dv
    dense = config.get("first_k_dense_replace", 0)
    active = config["num_experts_per_tok"] + config.get("n_shared_experts", 0)
    moe = 3 * h * config["moe_intermediate_size"] * active + config["n_routed_experts"] * h
    layers = config["num_hidden_layers"]
    total = layers * attn + dense * 3 * h * config["intermediate_size"] + (layers - dense) * moe
    return (total + config["vocab_size"] * h) / 1e9


def measure(engine: str, paths: dict, args) -> dict | None:
    """One engine's rows, in a process of its own (its peak RSS its own; nothing else running)."""
    out = Path(args.work) / f"{engine}{'-depth' if args.depth_only else ''}.json"
    if engine in PEERS:
        try:
            res = measure_peer(engine, paths[engine], Path(args.peers_build), args.threads,
                               args.depths, args.depth_only, args.rows)
        except RuntimeError as exc:
            print(f"{engine}: {exc}", flush=True)
            return None
    else:
        child = [sys.executable, "-m", __spec__.name, "--edgeds-child", EDGEDS[engine]]
        child.append(str(paths[engine]))
        extra = ["--depths", ",".join(map(str, args.depths))] if args.depths else []
        r = subprocess.run(
            [*child, "--threads", str(args.threads), "--work", args.work, *extra,
             "--rows", ",".join(args.rows), *(["--depth-only"] if args.depth_only else [])],
            check=False
        )
        if r.returncode != 0:
            print(f"{engine}: failed ({r.returncode})", flush=True)
            return None
        res = json.loads(out.read_text())
    out.write_text(json.dumps(res, indent=2))
    print(f"{engine}: " + ", ".join(f"{k} {v:.1f}" for k, v in res["metrics"].items()), flush=True)
    return res


def merge_rounds(runs: list[dict]) -> dict:
    """Each metric's median over an engine's rounds, its range under "spread"."""
    row = dict(runs[-1], rounds=len(runs))
    row["metrics"] = {
        k: float(np.median([r["metrics"][k] for r in runs if k in r["metrics"]]))
        for k in runs[-1]["metrics"]
    }
    row["spread"] = {
        k: (min(r["metrics"][k] for r in runs), max(r["metrics"][k] for r in runs))
        for k in row["metrics"]
        if len(runs) > 1
    }
    return row


def collected(work: Path, engine: str) -> dict:
    """An engine's rows measured by earlier invocations: its rounds (ENGINE-rN.json, one per
    call of moe_device.sh's measure) merged, else its one ENGINE.json; with its --depth-only
    rows (ENGINE-depth.json) where there are some."""
    rounds = sorted(work.glob(f"{engine}-r*.json"))
    if rounds:
        res = merge_rounds([json.loads(r.read_text()) for r in rounds])
    else:
        res = json.loads((work / f"{engine}.json").read_text())
    return with_depths(work, res)


def with_depths(work: Path, res: dict) -> dict:
    depth = work / f"{res['engine']}-depth.json"
    if depth.exists():
        extra = json.loads(depth.read_text())
        res = dict(res, metrics={**res["metrics"], **extra["metrics"]},
                   rows=[*res.get("rows", []), *extra.get("rows", [])])
    return res


def report(
    results: list[dict],
    machine: str,
    threads: int,
    layers: int,
    bandwidth: float | None,
    read_gb: float,
    note: str,
    targets: dict[str, float],
) -> str:
    peers = [r for r in results if r["engine"] in PEERS]
    ours = [r for r in results if r["engine"].startswith("edgeds")]
    cols = [r["engine"] for r in ours] + [r["engine"] for r in peers]
    head = (
        "| metric | "
        + " | ".join(cols)
        + " | "
        + " | ".join(f"{r['engine']} / best peer" for r in ours)
        + " | target |"
    )
    lines = [
        f"# MLA+MoE: edgeds against llama.cpp and ik_llama.cpp ({machine}, {threads} threads)",
        "",
        note,
        "",
        head,
        "|" + "---|" * (2 + len(cols) + len(ours)),
    ]

    def cell(r: dict, key: str) -> str:
        v = r["metrics"].get(key)
        if v is None:
            return "-"
        lo_hi = r.get("spread", {}).get(key)
        return f"{v:.1f}" + (f" ({lo_hi[0]:.1f}-{lo_hi[1]:.1f})" if lo_hi else "")

    deep = sorted({int(k.split("_")[-1]) for r in results for k in r["metrics"]
                   if k.startswith("decode_b1_")} - {PROMPT, *PREFILLS})
    for key, label in {**ROWS, **depth_rows(deep)}.items():
        if not any(key in r["metrics"] for r in results):
            continue  # a row no engine measured (--rows)
        best = max((p["metrics"][key] for p in peers if key in p["metrics"]), default=None)
        target = targets.get(key, DEPTH_TARGET if key.startswith("decode_b1_") and targets
                             else None)
        ratios = [
            ratio_cell(o["metrics"][key] / best, target) if best and key in o["metrics"] else "-"
            for o in ours
        ]
        lines.append(
            f"| {label} | "
            + " | ".join(cell(r, key) for r in ours + peers)
            + " | "
            + " | ".join(ratios)
            + f" | {f'>= {target}x' if target else '-'} |"
        )
    lines += [
        "",
        (
            f"A batch-1 decode step reads {read_gb:.3f} GB of int8 weights ({layers} layers' "
            "attention, the dense layer's MLP, the routed and shared experts active in each MoE "
            "layer, its router, the LM head)."
        ),
    ]
    if bandwidth:
        limit = bandwidth / read_gb
        lines.append(
            f"Read bandwidth here ({threads} threads, numpy): {bandwidth:.1f} GB/s, so batch 1 "
            f"is bounded near {limit:.0f} tok/s; after 128 tokens: "
            + ", ".join(
                f"{r['engine']} {100 * r['metrics']['decode_b1_128'] / limit:.0f}%"
                for r in ours + peers
                if "decode_b1_128" in r["metrics"]
            )
            + " of it."
        )
    for r in ours:
        if "artifact_mib" in r:
            bound = r["artifact_mib"] + r["kv_mib"] + RSS_MARGIN_MIB
            lines.append(
                f"{r['engine']} peak RSS {r['peak_rss_mib']:.0f} MiB against artifact "
                f"{r['artifact_mib']:.0f} + KV cache {r['kv_mib']:.0f} + {RSS_MARGIN_MIB} = "
                f"{bound:.0f} MiB: **{'met' if r['peak_rss_mib'] <= bound else 'missed'}**."
            )
    ref = next((p for p in peers if p["engine"] == "llama.cpp" and p.get("load_s")), None)
    for r in ours:  # issue 22: load time at most 1.2x llama.cpp's
        if ref and "load_s" in r:
            lines.append(
                f"{r['engine']} load {r['load_s']:.2f} s against llama.cpp's {ref['load_s']:.2f} s"
                f": {r['load_s'] / ref['load_s']:.2f}x (target <= 1.2x: "
                f"**{'met' if r['load_s'] <= 1.2 * ref['load_s'] else 'missed'}**)."
            )
    lines += ["", "| engine | peak RSS (MiB) | load (s) | settings |", "|---|---|---|---|"]
    for r in ours + peers:
        load = f"{r['load_s']:.2f}" if "load_s" in r else "-"
        setting = (
            f"{r['profile']} profile, {r['backend']} backend"
            if "backend" in r
            else r.get("flags", "")
        )
        rounds = f", median of {r['rounds']} rounds" if r.get("rounds", 1) > 1 else ""
        rounds += ", from an earlier call" if r.get("reused") else ""
        lines.append(f"| {r['engine']} | {r['peak_rss_mib']:.0f} | {load} | {setting}{rounds} |")
    return "\n".join(lines) + "\n"


def ratio_cell(ratio: float, target: float | None) -> str:
    if target is None:
        return f"{ratio:.2f}x"
    return f"**{ratio:.2f}x** ({'met' if ratio >= target else 'missed'})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--layers",
        type=int,
        default=8,
        help="decoder layers of the V2-Lite cut (1 dense + the rest MoE)",
    )
    ap.add_argument(
        "--config",
        default=str(CONFIGS / "deepseek-v2-lite.json"),
        help="the widths (a DeepSeek-V2/V3 config.json)",
    )
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--engines", default="edgeds-native,edgeds-onnxruntime,llama.cpp,ik_llama.cpp")
    ap.add_argument(
        "--peers-src", default=None, help="folder with llama.cpp.tar.xz (build_peers.sh sources)"
    )
    ap.add_argument("--peers-build", default="/tmp/peerbuild", help="build_peers.sh's BUILDDIR")
    ap.add_argument("--work", default="/tmp/edgeds-moe")
    ap.add_argument("--machine", default=None)
    ap.add_argument(
        "--rounds", type=int, default=1, help="every engine this many times, taking turns"
    )
    ap.add_argument(
        "--reuse",
        default="",
        help="engines whose results in --work (earlier calls) join the report",
    )
    ap.add_argument(
        "--targets",
        choices=sorted(TARGETS),
        default="xeon-amx-16t",
        help="issue 22's ratios to meet",
    )
    ap.add_argument(
        "--bandwidth",
        type=float,
        default=None,
        help="the machine's read GB/s, measured earlier (else measured now, numpy)",
    )
    ap.add_argument(
        "--collect",
        default="",
        help="engines measured in this call by earlier invocations (--no-report), in --work",
    )
    ap.add_argument(
        "--command",
        default=None,
        help="the command that measured the rows, for the report (default: this one)",
    )
    ap.add_argument("--depths", default="", help="batch-1 rows after these prompt lengths too")
    ap.add_argument("--depth-only", action="store_true", help="only the --depths rows")
    ap.add_argument(
        "--rows",
        default=",".join(ROWS),
        help=f"the rows to measure, of {','.join(ROWS)} (each engine runs only what they need)",
    )
    ap.add_argument(
        "--checkpoint-threads",
        type=int,
        default=1,
        help="draw the random checkpoint's tensors on this many threads (other weights than 1's)",
    )
    ap.add_argument("--prepare-only", action="store_true")
    ap.add_argument(
        "--direct-q8",
        action="store_true",
        help="the peers' converters write Q8_0 themselves, one after another (no bf16 GGUF)",
    )
    ap.add_argument(
        "--drop-checkpoint",
        action="store_true",
        help="delete the checkpoint once the models are made (rewritten, same seed, if needed)",
    )
    ap.add_argument("--no-report", action="store_true")
    ap.add_argument(
        "--edgeds-child", nargs=2, metavar=("BACKEND", "ARTIFACT"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    args.depths = [int(d) for d in args.depths.split(",") if d]
    args.rows = tuple(r for r in args.rows.split(",") if r)
    row_shapes(args.rows)  # unknown rows: one line, before anything runs
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.edgeds_child:
        backend, art = args.edgeds_child
        res = measure_edgeds(Path(art), backend, args.threads, args.depths, args.depth_only,
                             args.rows)
        name = next(e for e, b in EDGEDS.items() if b == backend)
        out = work / f"{name}{'-depth' if args.depth_only else ''}.json"
        out.write_text(json.dumps(res | {"engine": name}, indent=2))
        return
    engines = [e for e in args.engines.split(",") if e and e != "none"]
    unknown = [e for e in engines if e not in EDGEDS and e not in PEERS]
    if unknown:
        known = ", ".join([*EDGEDS, *PEERS])
        raise SystemExit(f"moe_compare: unknown engine(s) {', '.join(unknown)}; known: {known}")
    paths = {} if not engines else prepare(
        work,
        Path(args.config),
        args.layers,
        engines,
        Path(args.peers_src) if args.peers_src else None,
        Path(args.peers_build),
        args.threads,
        args.direct_q8,
        args.drop_checkpoint,
        args.checkpoint_threads,
    )
    if args.prepare_only:
        return
    runs: dict[str, list[dict]] = {}
    for _ in range(args.rounds):  # in turns, so that a slow spell of the machine hits every engine
        for engine in engines:
            res = measure(engine, paths, args)
            if res:
                runs.setdefault(engine, []).append(res)
    results = [merge_rounds(r) for r in runs.values()]
    for engine in filter(None, args.collect.split(",")):
        results.append(collected(work, engine))
    for engine in filter(None, args.reuse.split(",")):
        reused = json.loads((work / f"{engine}.json").read_text()) | {"reused": True}
        results.append(with_depths(work, reused))
    if args.depth_only:  # their rows are in ENGINE-depth.json (measure); the rest stays
        return
    for r in results:
        (work / f"{r['engine']}.json").write_text(json.dumps(r, indent=2))
    if args.no_report:
        return
    from benchmarks.peers.compare import read_bandwidth_gb_s

    config = checkpoint_config(Path(args.config), args.layers)
    machine = args.machine or f"{os.uname().machine}-{args.threads}t"
    note = (
        f"`{args.command or 'python -m benchmarks.peers.moe_compare ' + ' '.join(sys.argv[1:])}`: "
        "DeepSeek-V2-Lite "
        f"widths, {args.layers} layers (1 dense + {args.layers - 1} MoE), random weights; edgeds "
        f"int8, the peers Q8_0; prompts of {PROMPT} tokens per sequence and {DECODE_STEPS} decode "
        "steps per row, random tokens."
    )
    bandwidth = args.bandwidth or read_bandwidth_gb_s(args.threads)
    text = report(
        results,
        machine,
        args.threads,
        args.layers,
        bandwidth,
        decode_read_gb(config),
        note,
        TARGETS[args.targets],
    )
    out = RESULTS / f"moe-{machine}"
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(
        json.dumps(
            {
                "machine": machine,
                "threads": args.threads,
                "layers": args.layers,
                "bandwidth_gb_s": bandwidth,
                "decode_read_gb": decode_read_gb(config),
                "targets": TARGETS[args.targets],
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(text)


if __name__ == "__main__":
    main()
