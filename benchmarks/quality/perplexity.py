"""Held-out perplexity and top-1 agreement: transformers fp32 against every export.

    python -m benchmarks.quality.perplexity                  # both reference models, full sample
    python -m benchmarks.quality.perplexity --windows 4 --seq 128  # a short slice (what CI runs)
    python -m benchmarks.quality.perplexity --text jinja2 click --windows 60 --out quality-spread

For each reference model in benchmarks/reference_models/, the held-out sample (files of the
standard library never trained on) is cut into windows; with --text, the sources of the
installed packages named (nobody here chose or trained on them) are, with the windows spread
evenly over all their files; transformers fp32 and each exported
graph (ONNX Runtime and OpenVINO; fp32, INT8, INT4; "onnx native": an int8 export through the
native backend, where this CPU runs it) score every position. Writes
benchmarks/results/quality.md and quality.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks import REFERENCE_MODELS, RESULTS

MODELS = REFERENCE_MODELS


def windows_of(checkpoint: Path, count: int, seq: int,
               packages: list[str] | None = None) -> np.ndarray:
    """`count` windows of `seq` tokens: the first ones of the model's held-out sample, or with
    `packages` spread evenly over those packages' sources (every .py file, in path order, one
    token stream), so that no one file or region decides the score."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    if not packages:
        text = (checkpoint / "heldout_sample.txt").read_text(encoding="utf-8")
        ids = np.asarray([0, *tok.encode(text, add_special_tokens=False).ids], np.int64)
        count = min(count, len(ids) // seq)
        return ids[: count * seq].reshape(count, seq)
    ids = np.concatenate([np.asarray(tok.encode(f.read_text(encoding="utf-8"),
                                                add_special_tokens=False).ids,
                                     np.int64) for f in source_files(packages)])
    if len(ids) < count * seq:
        raise SystemExit(f"perplexity: {', '.join(packages)} hold {len(ids)} tokens, fewer than "
                         f"{count} windows of {seq}")
    starts = np.linspace(0, len(ids) - seq, count).astype(np.int64)
    return np.stack([ids[s : s + seq] for s in starts])


def source_files(packages: list[str]) -> list[Path]:
    import importlib.util

    files = []
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(f"perplexity: --text {name}: no installed package of that name")
        files += sorted(Path(next(iter(spec.submodule_search_locations))).rglob("*.py"))
    return files


def text_note(packages: list[str] | None) -> str:
    if not packages:
        return "held-out stdlib files"
    from importlib.metadata import version

    return ("sources of " + ", ".join(f"{p} {version(p)}" for p in packages)
            + ", windows spread evenly")


def nll_and_top1(logits: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-position negative log-likelihood of the next token, and the argmax predictions."""
    z = logits[:-1].astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return -logp[np.arange(len(ids) - 1), ids[1:]], logits[:-1].argmax(-1)


def reference_scores(checkpoint: Path, wins: np.ndarray):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    nll, top1 = [], []
    with torch.no_grad():
        for w in wins:
            logits = model(torch.from_numpy(w[None])).logits[0].numpy()
            n, t = nll_and_top1(logits, w)
            nll.append(n)
            top1.append(t)
    return np.concatenate(nll), np.concatenate(top1)


def export_scores(artifact: Path, fmt: str, wins: np.ndarray, stepwise: bool = False):
    """`stepwise`: one token per call after the first (teacher-forced decode steps), so that
    every position attends over the cache as generation does; an int8 cache is only read that
    way (a fresh prompt attends in float32)."""
    from edgeds_export.verify import open_backends

    backend = dict(open_backends(artifact))[fmt]
    nll, top1 = [], []
    for w in wins:
        backend.start(1, len(w) + 1)
        if stepwise:
            rows = [backend.prefill([0], [w[:1]])[0].copy()]
            rows += [backend.decode(np.array([t], np.int64))[0].copy() for t in w[1:]]
            logits = np.stack(rows)
        else:
            logits = backend.prefill([0], [w], every_position=True)[0]
        n, t = nll_and_top1(logits, w)
        nll.append(n)
        top1.append(t)
    return np.concatenate(nll), np.concatenate(top1)


# --int8-options: int8 (and int8-wo) exported again with each of these options (export/api.py)
INT8_OPTIONS = {
    "activations int16": {"activations": "int16"},
    "embedding float16": {"embedding": "float16"},
    "activations int16, embedding float16": {"activations": "int16", "embedding": "float16"},
}
INT8_WO_OPTIONS = {
    "activations float": {"activations": "float"},
    "activations float, embedding float16": {"activations": "float", "embedding": "float16"},
}


def evaluate(checkpoint: Path, weights=("fp32", "int8", "int4"), formats=("onnx", "openvino"),
             windows: int = 32, seq: int = 256, kv_caches=("float32",), small_batch: bool = False,
             packages: list[str] | None = None, int8_options: bool = False) -> list[dict]:
    """`kv_caches`: each weight scheme is exported once per KV cache type; an int8 cache is an
    ONNX graph of a dense model only (MLA models are skipped for it). `small_batch`: int8 is
    exported with its small-batch graph, and scored in decode steps on both graphs as well.
    `int8_options`: int8 also exported with each of INT8_OPTIONS (activations int16 changes the
    native decoders alone: ONNX Runtime's and OpenVINO's graphs keep their own rounding)."""
    from edgeds_export import export_checkpoint
    from edgeds_export.verify import native_runs_here

    from edgeds.artifact import load_artifact

    wins = windows_of(checkpoint, windows, seq, packages)
    ref_nll, ref_top1 = reference_scores(checkpoint, wins)
    ref_ppl = float(np.exp(ref_nll.mean()))
    rows = [{"model": checkpoint.name, "graph": "transformers", "weights": "fp32",
             "perplexity": ref_ppl,
             "ppl_change_pct": 0.0, "top1_agreement_pct": 100.0, "tokens": int(ref_nll.size)}]
    with tempfile.TemporaryDirectory() as tmp:
        mla = "kv_lora_rank" in json.loads((checkpoint / "config.json").read_text())
        runs_of = [(w, kv, "") for kv in kv_caches for w in weights]
        if int8_options and "int8" in weights:
            runs_of += [("int8", "float32", o) for o in INT8_OPTIONS]
        if int8_options and "int8-wo" in weights:
            runs_of += [("int8-wo", "float32", o) for o in INT8_WO_OPTIONS]
        for i, (w, kv, option) in enumerate(runs_of):
            if kv != "float32" and mla:
                continue
            art = Path(tmp) / f"{i}-{w}-{kv}"
            fmts = formats if kv == "float32" else ("onnx",)
            small = small_batch and w == "int8" and kv != "int8" and not option
            export_checkpoint(checkpoint, art, formats=tuple(fmts), weights=w, context=seq + 8,
                              kv_cache=kv, small_batch_graph=small,
                              **(INT8_OPTIONS | INT8_WO_OPTIONS).get(option, {}))
            label = w if kv == "float32" else f"{w}, {kv} KV (decode steps)"
            label += f", {option}" if option else ""
            runs = [(fmt, label, kv != "float32") for fmt in fmts]
            if "onnx" in fmts and native_runs_here(load_artifact(art, verify=False)):
                # the same weights, edgeds' own decoder
                runs.append(("onnx native", label, kv != "float32"))
            if small:  # the main graph's decode steps against the small-batch graph's
                runs += [("onnx", f"{label} (decode steps)", True),
                         ("onnx small-batch", f"{label} (decode steps)", True)]
            for fmt, row_label, stepwise in runs:
                nll, top1 = export_scores(art, fmt, wins, stepwise=stepwise)
                ppl = float(np.exp(nll.mean()))
                rows.append({"model": checkpoint.name, "graph": fmt, "weights": row_label,
                             "perplexity": ppl, "ppl_change_pct": 100 * (ppl / ref_ppl - 1),
                             "top1_agreement_pct": 100 * float((top1 == ref_top1).mean()),
                             "tokens": int(nll.size)})
    return rows


def to_markdown(rows: list[dict], note: str) -> str:
    lines = [f"# Quality: held-out perplexity and top-1 agreement vs transformers fp32 ({note})",
             "", "| model | graph | weights | perplexity | change | top-1 agreement | tokens |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['graph']} | {r['weights']} | {r['perplexity']:.4f} | "
                     f"{r['ppl_change_pct']:+.3f}% | {r['top1_agreement_pct']:.2f}% | "
                     f"{r['tokens']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+",
                    default=["r1-distill-tiny-python", "deepseek-v3-tiny-python"])
    ap.add_argument("--windows", type=int, default=32)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--weights", nargs="+", default=["fp32", "int8", "int4"])
    ap.add_argument("--kv-caches", nargs="+", default=["float32"],
                    help="float32, int8 and/or float16 (dense models)")
    ap.add_argument("--small-batch-graph", action="store_true",
                    help="int8 with its small-batch graph, scored in decode steps on both graphs "
                         "too")
    ap.add_argument("--text", nargs="+", default=None, metavar="PACKAGE",
                    help="score the sources of these installed packages (e.g. jinja2 click)")
    ap.add_argument("--int8-options", action="store_true",
                    help="int8 also exported with --activations int16 and/or --embedding float16")
    ap.add_argument("--out", default="quality", help="results/OUT.md and .json")
    args = ap.parse_args()
    rows = []
    for name in args.models:
        rows += evaluate(MODELS / name, args.weights, windows=args.windows, seq=args.seq,
                         kv_caches=args.kv_caches,
                         small_batch=args.small_batch_graph, packages=args.text,
                         int8_options=args.int8_options)
    note = (f"`python -m benchmarks.quality.perplexity {' '.join(sys.argv[1:])}`; "
            f"{text_note(args.text)}")
    out = RESULTS
    out.mkdir(exist_ok=True)
    (out / f"{args.out}.md").write_text(to_markdown(rows, note))
    (out / f"{args.out}.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(to_markdown(rows, note))


if __name__ == "__main__":
    main()
