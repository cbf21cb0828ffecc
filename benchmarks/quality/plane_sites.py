"""Which matmul inputs need `--activations int16`'s second plane on the native MLA + MoE decoder:
the reference MoE model exported `--weights int8 --activations int16` (with and without
`--embedding float16`), scored with the second plane on each subset of sites (the rest rounded
as int8 rows; mla_moe.c's em_set_plane_sites) against transformers fp32 on the held-out text.

    python -m benchmarks.quality.plane_sites [--sites 0,63,24,...] [--windows 60]

Sites, a bit each: 1 attention input (q_a or q, kv_a), 2 q_b, 4 o_proj, 8 MLP / experts' input
(gate, up), 16 the experts' down projections, 32 the LM head. Writes
results/quality-plane-sites.md and .json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from benchmarks import REFERENCE_MODELS, RESULTS
from benchmarks.quality.perplexity import nll_and_top1, reference_scores, windows_of

SITES = {1: "attention input", 2: "q_b", 4: "o_proj", 8: "MLP input", 16: "down", 32: "LM head"}
DEFAULT = (0, 63, 7, 32, 39, 24, 47, 55, 59, 61, 62, 56)


def named(mask: int) -> str:
    if mask == 63:
        return "all"
    return ", ".join(n for bit, n in SITES.items() if mask & bit) or "none"


def main() -> None:
    from edgeds_export import export_checkpoint

    from edgeds.artifact import load_artifact
    from edgeds.backends.native_mla import NativeMlaBackend

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="deepseek-v3-tiny-python")
    ap.add_argument("--sites", default=",".join(map(str, DEFAULT)))
    ap.add_argument("--windows", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    ck = REFERENCE_MODELS / a.model
    wins = windows_of(ck, a.windows, 256, ["jinja2", "click"])
    ref_nll, ref_top1 = reference_scores(ck, wins)
    ref_ppl = float(np.exp(ref_nll.mean()))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for embedding in ("int8", "float16"):
            art = Path(tmp) / embedding
            export_checkpoint(ck, art, formats=("onnx",), weights="int8", context=264,
                              activations="int16",
                              **({"embedding": "float16"} if embedding == "float16" else {}))
            backend = NativeMlaBackend(load_artifact(art, verify=False), a.threads)
            for mask in map(int, a.sites.split(",")):
                backend.lib.em_set_plane_sites(backend._model, mask)
                nll, top1 = [], []
                for w in wins:
                    backend.start(1, len(w) + 1)
                    n, t = nll_and_top1(backend.prefill([0], [w], every_position=True)[0], w)
                    nll.append(n)
                    top1.append(t)
                nll, top1 = np.concatenate(nll), np.concatenate(top1)
                ppl = float(np.exp(nll.mean()))
                rows.append({"embedding": embedding, "sites": mask, "two_planes_on": named(mask),
                             "ppl_change_pct": 100 * (ppl / ref_ppl - 1),
                             "top1_agreement_pct": 100 * float((top1 == ref_top1).mean()),
                             "tokens": int(nll.size)})
                print(json.dumps(rows[-1]), flush=True)
    lines = [f"# Second activation plane by site ({a.model}, native, `--weights int8 "
             "--activations int16`)", "",
             "`python -m benchmarks.quality.plane_sites` (target: <= +0.1% perplexity and >= "
             "98.5% top-1 against transformers fp32)", "",
             "| embedding | second plane on | ppl change | top-1 | tokens | target |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        met = r["ppl_change_pct"] <= 0.1 and r["top1_agreement_pct"] >= 98.5
        lines.append(f"| {r['embedding']} | {r['two_planes_on']} | {r['ppl_change_pct']:+.3f}% | "
                     f"{r['top1_agreement_pct']:.2f}% | {r['tokens']} | "
                     f"{'met' if met else 'missed'} |")
    (RESULTS / "quality-plane-sites.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "quality-plane-sites.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
