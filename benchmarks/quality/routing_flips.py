"""Does INT8 lose the MoE model's quality by flipping which experts are chosen?

    python -m benchmarks.quality.routing_flips --text jinja2 click --windows 60

The MoE reference model (deepseek-v3-tiny-python) in transformers fp32, and the same model with
the export's INT8 arithmetic simulated in torch: every linear layer's weights per output channel
and its input per row (token) rounded to 8 bits, symmetric, as the int8 export computes them
(the embedding per row; the router stays float, as in the export). Positions and windows are
perplexity.py's. Rows:

- which parts are INT8 (all of them; one part alone; all but one part), and
- "all, fp32 routing": every part INT8 but each MoE layer takes the experts fp32 chose (their
  weights still from the INT8 hidden state): if the flips are the cause, this row recovers.

For each: perplexity change and top-1 agreement against fp32, and the share of routing
decisions (token x MoE layer: the set of top-k experts) that differ from fp32's. Also the real
INT8 ONNX export's flips, read from its graph (the router's TopK indices as extra outputs).
Writes benchmarks/results/routing-flips.md and .json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from benchmarks import REFERENCE_MODELS, RESULTS
from benchmarks.quality.perplexity import nll_and_top1, text_note, windows_of

MODEL = REFERENCE_MODELS / "deepseek-v3-tiny-python"
PARTS = ("embedding", "attention", "dense_mlp", "experts", "shared_experts", "lm_head")


def fake_int8_rows(x, group: int | None = None):
    """Per-row symmetric 8-bit rounding (the export's activation quantization); `group`: one
    scale per `group` consecutive values of the row instead (the largest divisor of the row's
    length not above it)."""
    import torch

    if group:
        n = x.shape[-1]
        g = max(d for d in range(1, min(group, n) + 1) if n % d == 0)
        return fake_int8_rows(x.reshape(*x.shape[:-1], n // g, g)).reshape(x.shape)
    scale = x.abs().amax(-1, keepdim=True) / 127
    return torch.where(scale > 0, torch.round(x / torch.where(scale > 0, scale, 1)) * scale, x)


def fake_two_planes(x):
    """Per-row rounding to two int8 planes as the native decoder's "int16 per row" keeps them:
    the int8 value and what rounding left, at 254 x the resolution."""
    import torch

    scale = x.abs().amax(-1, keepdim=True) / 127
    v = x / torch.where(scale > 0, scale, 1)
    hi = torch.round(v)
    return torch.where(scale > 0, (hi + torch.round((v - hi) * 254) / 254) * scale, x)


# How the simulation rounds (--variants): weights per output channel or per group along the
# input, activations per row, per group, or left float (weight-only INT8).
SCHEMES = {
    "": {},
    "weights per group of 32": {"weight_group": 32},
    "activations per group of 32": {"act_group": 32},
    "weights and activations per group of 32": {"weight_group": 32, "act_group": 32},
    "float activations (weight-only)": {"act_float": True},
    "activations int16 per row (two int8 planes)": {"act_planes": True},
    "embedding float16": {"embedding_float16": True},
    "activations int16 per row, embedding float16": {"act_planes": True, "embedding_float16": True},
}


def part_of(name: str) -> str | None:
    if name == "lm_head":
        return "lm_head"
    if ".self_attn." in name:
        return "attention"
    if ".mlp.shared_experts." in name:
        return "shared_experts"
    if ".mlp." in name:  # the router is no Linear, the experts are 3-D tensors
        return "dense_mlp"
    return None


@contextmanager
def int8_model(model, parts: set[str], weight_group=None, act_group=None, act_float=False,
               act_planes=False, embedding_float16=False):
    """The model with `parts` in simulated INT8 (weights replaced, inputs rounded by hooks);
    restored on exit. The keywords: SCHEMES."""
    import torch

    def weights(w):
        return fake_int8_rows(w, weight_group)

    def inputs(x):
        if act_planes:
            return fake_two_planes(x)
        return x if act_float else fake_int8_rows(x, act_group)

    saved, hooks = {}, []
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and part_of(name) in parts:
                saved[name + ".weight"] = mod.weight.detach().clone()
                mod.weight.copy_(weights(mod.weight))
                hooks.append(mod.register_forward_pre_hook(lambda m, a: (inputs(a[0]),)))
            elif type(mod).__name__.endswith("Experts") and "experts" in parts:
                for p in ("gate_up_proj", "down_proj"):
                    w = getattr(mod, p)
                    saved[f"{name}.{p}"] = w.detach().clone()
                    w.copy_(weights(w))  # per output channel of each expert
                hooks.append(patch_expert_inputs(mod, inputs))
            elif isinstance(mod, torch.nn.Embedding) and "embedding" in parts:
                saved[name + ".weight"] = mod.weight.detach().clone()
                table = (mod.weight.half().float() if embedding_float16
                         else fake_int8_rows(mod.weight))
                mod.weight.copy_(table)  # per row: a row is one token's vector
    try:
        yield model
    finally:
        for h in hooks:
            h.remove()
        with torch.no_grad():
            params = dict(model.named_parameters())
            for key, value in saved.items():
                params[key].copy_(value)


def patch_expert_inputs(experts, inputs=fake_int8_rows):
    """Round the experts' two inputs per row as the export does: x before gate/up, the gated
    product before down (both matmuls of each expert run on F.linear)."""
    import torch.nn.functional as F

    original = F.linear

    def forward(hidden, top_k_index, top_k_weights, _orig=type(experts).forward):
        def linear(x, w, b=None):
            return original(inputs(x), w, b)

        F.linear = linear
        try:
            return _orig(experts, hidden, top_k_index, top_k_weights)
        finally:
            F.linear = original

    experts.forward = forward

    class Undo:
        def remove(self):
            del experts.forward

    return Undo()


@contextmanager
def routing_recorder(model, forced: list | None = None):
    """Each MoE layer's chosen experts per call, in order: recorded, or (`forced`) replaced by
    the given ones, their weights recomputed from this model's own scores."""
    routers = [m for m in model.modules() if type(m).__name__.endswith("TopkRouter")]
    record, calls = [], iter(forced or [])

    def make(router, _orig=type(routers[0]).forward):
        def forward(hidden_states):
            logits, weights, idx = _orig(router, hidden_states)
            if forced is not None:
                idx = next(calls).to(idx.device)
                scores = logits.sigmoid()
                weights = scores.gather(1, idx)
                if router.norm_topk_prob:
                    weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
                weights = weights * router.routed_scaling_factor
            record.append(idx.detach().clone())
            return logits, weights, idx

        return forward

    for r in routers:
        r.forward = make(r)
    try:
        yield record
    finally:
        for r in routers:
            del r.forward


def flip_share(a: list, b: list) -> tuple[float, np.ndarray]:
    """Share of (token, layer) decisions whose expert sets differ; and per token, whether any
    layer's did."""
    per_layer = [
        np.array([set(x) != set(y) for x, y in zip(p.tolist(), q.tolist(), strict=True)])
        for p, q in zip(a, b, strict=True)
    ]
    return float(np.mean(np.concatenate(per_layer))), per_layer


def run(model, wins, parts: set[str], forced_routes: list | None = None, scheme: str = ""):
    import torch

    logits, routes = [], []
    with int8_model(model, parts, **SCHEMES[scheme]), torch.no_grad():
        for i, w in enumerate(wins):
            layers = len(forced_routes[i]) if forced_routes else None
            with routing_recorder(model, forced_routes[i] if forced_routes else None) as rec:
                logits.append(model(torch.from_numpy(w[None])).logits[0].numpy())
            assert layers is None or len(rec) == layers
            routes.append(rec)
    return logits, routes


def onnx_routes(checkpoint: Path, wins: np.ndarray, weights: str, accuracy_level: int | None = None
                ) -> tuple[list, list]:
    """The exported graph's logits and each MoE layer's TopK indices (extra graph outputs).
    `accuracy_level`: MatMulNBits' instead of the exporter's (0: float activations, where the
    export's level 4 rounds them to int8 per block)."""
    import onnx
    import onnxruntime as ort
    from edgeds_export import export_checkpoint
    from edgeds_export.graph import onnx_ops

    level = onnx_ops.ACCURACY_LEVEL
    with tempfile.TemporaryDirectory() as tmp:
        art = Path(tmp) / weights
        onnx_ops.ACCURACY_LEVEL = level if accuracy_level is None else accuracy_level
        try:
            export_checkpoint(checkpoint, art, formats=("onnx",), weights=weights,
                              context=wins.shape[1] + 8)
        finally:
            onnx_ops.ACCURACY_LEVEL = level
        m = onnx.load(str(art / "model.onnx"), load_external_data=False)
        topk = [n.output[1] for n in m.graph.node if n.name.endswith("/router/topk")]
        for name in topk:
            m.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT64, None))
        onnx.save(m, str(art / "routes.onnx"))
        sess = ort.InferenceSession(str(art / "routes.onnx"), providers=["CPUExecutionProvider"])
        feeds = {i.name: i for i in sess.get_inputs()}
        logits, routes = [], []
        for w in wins:
            out = sess.run(None, graph_feeds(feeds, w))
            logits.append(out[0][0])
            routes.append([_torch(o) for o in out[-len(topk):]])
    return logits, routes


def graph_feeds(inputs: dict, w: np.ndarray) -> dict:
    """One window as a fresh prompt (as the backend binds one): every position's logits, an
    empty latent cache of the window's length."""
    n = len(w)
    feeds = {"input_ids": w[None], "position_ids": np.arange(n, dtype=np.int64)[None],
             "seqlens_k": np.array([n - 1], np.int32),
             "total_sequence_length": np.array(n, np.int32),
             "logits_positions": np.arange(n, dtype=np.int64)[None]}
    for name, info in inputs.items():
        if name.startswith("past_"):
            feeds[name] = np.zeros((1, 1, n, info.shape[-1]), np.float32)
    return feeds


def _torch(a):
    import torch

    return torch.from_numpy(np.asarray(a, np.int64))


def score(ref_logits, logits, wins, ref_routes, routes) -> dict:
    ref_nll, ref_top1 = map(np.concatenate,
                            zip(*(nll_and_top1(r, w)
                                  for r, w in zip(ref_logits, wins, strict=True)), strict=True))
    nll, top1 = map(np.concatenate,
                    zip(*(nll_and_top1(q, w) for q, w in zip(logits, wins, strict=True)),
                        strict=True))
    flips, any_flip = [], []
    for a, b in zip(ref_routes, routes, strict=True):
        share, per_layer = flip_share(a, b)
        flips.append(share)
        any_flip.append(np.any(per_layer, axis=0)[:-1])  # the positions that are scored
    any_flip = np.concatenate(any_flip)
    agree = top1 == ref_top1
    diff = np.concatenate([np.abs(q[:-1] - r[:-1]).max(-1)
                           for q, r in zip(logits, ref_logits, strict=True)])
    return {
        "ppl_change_pct": 100 * (np.exp(nll.mean()) / np.exp(ref_nll.mean()) - 1),
        "top1_agreement_pct": 100 * float(agree.mean()),
        "decisions_flipped_pct": 100 * float(np.mean(flips)),
        "positions_with_a_flip_pct": 100 * float(any_flip.mean()),
        "top1_agreement_where_flipped_pct": 100 * float(agree[any_flip].mean())
        if any_flip.any() else None,
        "top1_agreement_where_not_pct": 100 * float(agree[~any_flip].mean())
        if (~any_flip).any() else None, "max_logit_diff": float(diff.max()),
        "positions_logit_diff_over_2": int((diff > 2).sum()),
        "tokens": int(nll.size),
    }


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM

    ap = argparse.ArgumentParser()
    ap.add_argument("--text", nargs="+", default=None, metavar="PACKAGE")
    ap.add_argument("--windows", type=int, default=60)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--no-onnx", action="store_true", help="the simulation only")
    ap.add_argument("--no-parts", action="store_true",
                    help="only all parts INT8, with its own and with fp32 routing (no part by "
                         "part)")
    ap.add_argument("--variants", action="store_true",
                    help="also every part INT8 under each of SCHEMES (group scales, float "
                    "activations), and the int8-wo export with float activations")
    ap.add_argument("--out", default="routing-flips")
    args = ap.parse_args()
    torch.manual_seed(0)
    wins = windows_of(MODEL, args.windows, args.seq, args.text)
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32).eval()
    # The experts as a loop of F.linear calls, which patch_expert_inputs rounds the inputs of
    # (transformers 5's default, grouped_mm, calls no F.linear: their inputs stayed float).
    model.config._experts_implementation = "eager"
    ref_logits, ref_routes = run(model, wins, set())
    configs = [("all", set(PARTS), False, ""), ("all, fp32 routing", set(PARTS), True, "")]
    if not args.no_parts:
        configs += [(f"{p} alone", {p}, False, "") for p in PARTS]
        configs += [(f"all but {p}", set(PARTS) - {p}, False, "") for p in PARTS]
    if args.variants:
        configs += [(f"all, {k}", set(PARTS), False, k) for k in SCHEMES if k]
    rows = []
    for label, parts, forced, scheme in configs:
        logits, routes = run(model, wins, parts, ref_routes if forced else None, scheme)
        rows.append({"int8": label, "source": "torch simulation"}
                    | score(ref_logits, logits, wins, ref_routes, routes))
        print(json.dumps(rows[-1]), flush=True)
    if not args.no_onnx:
        exports = [(w, None) for w in (("int8",) if args.no_parts else ("fp32", "int8", "int8-wo"))]
        exports += [("int8-wo", 0)] if args.variants else []
        for weights, level in exports:
            logits, routes = onnx_routes(MODEL, wins, weights, level)
            if level is not None:
                weights += f", accuracy level {level} (float activations)"
            rows.append({"int8": f"ONNX export, {weights}", "source": "ONNX Runtime"}
                        | score(ref_logits, logits, wins, ref_routes, routes))
            print(json.dumps(rows[-1]), flush=True)
    note = (f"`python -m benchmarks.quality.routing_flips {' '.join(sys.argv[1:])}`; "
            f"{text_note(args.text)}; {wins.shape[0]} windows of {wins.shape[1]} tokens")
    (RESULTS / f"{args.out}.json").write_text(json.dumps({"note": note, "rows": rows},
                                                         indent=2) + "\n")
    (RESULTS / f"{args.out}.md").write_text(to_markdown(rows, note))
    print(to_markdown(rows, note))


def to_markdown(rows: list[dict], note: str) -> str:
    def pct(v):
        return "-" if v is None else f"{v:.2f}%"

    lines = [f"# Routing flips: deepseek-v3-tiny-python, INT8 against fp32 ({note})", "",
             "| INT8 parts | run on | ppl change | top-1 | decisions flipped | positions with a "
             "flip | "
             "top-1 there | top-1 elsewhere | max logit diff | positions > 2 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['int8']} | {r['source']} | {r['ppl_change_pct']:+.3f}% | "
                     f"{pct(r['top1_agreement_pct'])} | "
                     f"{pct(r['decisions_flipped_pct'])} | {pct(r['positions_with_a_flip_pct'])} | "
                     f"{pct(r['top1_agreement_where_flipped_pct'])} | "
                     f"{pct(r['top1_agreement_where_not_pct'])} | "
                     f"{r['max_logit_diff']:.2f} | {r['positions_logit_diff_over_2']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
