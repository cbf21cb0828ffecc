"""`edgeds compare A B`: two artifacts of one model on the same prompts, before switching.

Each side runs in a process of its own, one after the other, with the same threads: its peak
memory is its own (a process's high-water mark cannot be reset for one engine of two), and the
side not running holds no memory and no CPU. Side A generates; side B generates and scores A's
outputs (teacher-forced: B's log-probabilities of A's tokens, and whether each is B's argmax);
then A is opened again to score B's. Agreement is computed from those; speed from each side's
own run (request latencies, TTFTs, generated tokens over the run's wall time).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .artifact import Artifact, load_artifact
from .errors import ConfigError
from .sampling import SamplingParams

# Architecture fields that may differ between two exports of one model.
_MAY_DIFFER = {"context_length"}


@dataclass
class Prompt:
    id: object
    prompt: str | list[dict]
    params: SamplingParams


def check_comparable(a: Artifact, b: Artifact) -> list[str]:
    """Refuse artifacts whose token ids do not mean the same thing; return notes (not refusals)
    on what else differs."""
    diff = [f.name for f in dataclasses.fields(a.model) if f.name not in _MAY_DIFFER
            and getattr(a.model, f.name) != getattr(b.model, f.name)]
    if diff:
        raise ConfigError(f"{a.root} and {b.root} are exports of different models "
                          f"(they differ in {', '.join(diff)}); compare two exports of one model")
    for role in ("file", "chat_template"):
        na, nb = getattr(a.manifest.tokenizer, role), getattr(b.manifest.tokenizer, role)
        ha = a.manifest.files[na].sha256 if na in a.manifest.files else None
        hb = b.manifest.files[nb].sha256 if nb in b.manifest.files else None
        if ha != hb:
            what = "tokenizer" if role == "file" else "chat template"
            raise ConfigError(f"{a.root} and {b.root} have different {what}s; their outputs "
                              "are not comparable token by token")
    notes = []
    sa, sb = a.manifest.source.files, b.manifest.source.files
    weights = {k for k in sa.keys() | sb.keys() if k.endswith(".safetensors")}
    if any(sa.get(k) != sb.get(k) for k in weights):
        notes.append("the two were exported from different weights (same architecture)")
    return notes


def read_prompts(path: str, defaults: SamplingParams, max_line_bytes: int) -> tuple[list[Prompt],
                                                                                      list[str]]:
    """The input's valid records, and one line per line skipped (bad lines are not compared)."""
    from .batch.records import BadRecord, LineReader, parse_line

    prompts, skipped, seen = [], [], set()
    with open(path, "rb") as f:
        reader = LineReader(f, max_line_bytes)
        for n, raw in reader:
            rec = parse_line(n, raw, defaults, False, max_line_bytes)
            if rec is None:
                continue
            if isinstance(rec, BadRecord):
                skipped.append(f"line {n}: {rec.error}")
            elif repr(rec.id) in seen:
                skipped.append(f"line {n}: duplicate id {rec.id!r}")
            else:
                seen.add(repr(rec.id))
                prompts.append(Prompt(rec.id, rec.prompt, rec.params))
        if reader.stopped:
            skipped.append(reader.stopped)
    return prompts, skipped


# ---- one side, in its own process -------------------------------------------------------------

def _reset_peak_rss() -> None:
    try:  # Linux: "5" resets this process's VmHWM to its current RSS
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def run_side(artifact: str, prompts: list[Prompt], threads: int | None, backend: str | None,
             profile: str | None, batch_size: int | None,
             score: list[list[int] | None] | None = None, generate: bool = True) -> dict:
    """Open one artifact and (optionally) generate every prompt, then (optionally) score the
    given completions under it. Runs in a child process (see module docstring)."""
    from . import generate as gen
    from .batch.progress import peak_rss_bytes
    from .engine import load

    _reset_peak_rss()
    t0 = time.perf_counter()
    engine = load(artifact, profile=profile, backend=backend, threads=threads)
    load_s = time.perf_counter() - t0
    encoded = [engine.encode(p.prompt) for p in prompts]
    side = {"artifact": artifact, "artifact_sha256": engine.artifact.digest, **engine.describe(),
            "load_s": round(load_s, 3)}
    side.pop("reasons", None)
    if generate:
        reqs, results = [], [None] * len(prompts)
        for i, (p, ids) in enumerate(zip(prompts, encoded)):
            if len(ids) < engine.context:
                reqs.append(gen.Request(i, ids, p.params))
        t0 = time.perf_counter()
        for event in engine.run(reqs, batch_size):
            if isinstance(event, gen.Finished):
                results[event.key] = {"tokens": event.token_ids, "ttft_s": event.ttft_s,
                                      "latency_s": event.latency_s,
                                      "text": engine.complete(event).text}
        side["run_s"] = time.perf_counter() - t0
        side["results"] = results
        side["peak_rss_bytes"] = peak_rss_bytes()
        # Its own outputs' log-probabilities: the baseline for the other side's score of them.
        side["self_scores"] = [None if r is None else _score(engine, ids, r["tokens"])
                               for ids, r in zip(encoded, results)]
    if score is not None:
        side["scores"] = [None if toks is None else _score(engine, ids, toks)
                          for ids, toks in zip(encoded, score)]
    return side


def _score(engine, prompt_ids: np.ndarray, tokens: list[int]) -> dict | None:
    """Teacher-forced: this model's log-probability of each given token after the prompt and the
    tokens before it, and whether it is this model's argmax there."""
    if not tokens:
        return {"logprobs": [], "argmax_match": []}
    seq = np.concatenate([prompt_ids, np.asarray(tokens[:-1], np.int64)]).astype(np.int64)
    if len(seq) + 1 > engine.context:
        return None
    backend = engine.backend
    backend.start(1, len(seq) + 1)
    logits = np.asarray(backend.prefill([0], [seq], every_position=True)[0], np.float64)
    rows = logits[len(prompt_ids) - 1: len(seq)]  # the rows that predict each given token
    rows -= rows.max(axis=1, keepdims=True)
    logp = rows - np.log(np.exp(rows).sum(axis=1, keepdims=True))
    idx = np.asarray(tokens, np.int64)
    return {"logprobs": logp[np.arange(len(idx)), idx].tolist(),
            "argmax_match": (rows.argmax(axis=1) == idx).tolist()}


# ---- agreement and speed -----------------------------------------------------------------------

def first_divergence(a: list[int], b: list[int]) -> int | None:
    """Index of the first token where two greedy outputs differ; None when they are equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def agreement(prompts: list[Prompt], a: dict, b: dict) -> tuple[dict, list[dict]]:
    per, common, longest, exact, identical = [], 0, 0, 0, 0
    tf = {"a_under_b": [], "b_under_a": []}
    lp = {"a_under_a": [], "a_under_b": [], "b_under_b": [], "b_under_a": []}
    for i, p in enumerate(prompts):
        ra, rb = a["results"][i], b["results"][i]
        if ra is None or rb is None:
            continue
        ta, tb = ra["tokens"], rb["tokens"]
        div = first_divergence(ta, tb)
        prefix = min(len(ta), len(tb)) if div is None else div
        common += prefix
        longest += max(len(ta), len(tb))
        identical += div is None
        exact += ra["text"] == rb["text"]
        row = {"id": p.id, "first_divergence": div, "exact_match": ra["text"] == rb["text"],
               "tokens_a": len(ta), "tokens_b": len(tb)}
        for name, scores in (("a_under_b", b["scores"][i]), ("b_under_a", a["scores"][i])):
            if scores is not None and scores["logprobs"]:
                tf[name] += scores["argmax_match"]
                lp[name] += scores["logprobs"]
                row[f"mean_logprob_{name}"] = round(float(np.mean(scores["logprobs"])), 4)
        for name, side in (("a_under_a", a), ("b_under_b", b)):
            own = side.get("self_scores")
            if own is not None and own[i] is not None:
                lp[name] += own[i]["logprobs"]
        per.append(row)
    n = len(per)
    divs = [r["first_divergence"] for r in per if r["first_divergence"] is not None]

    def mean(v):
        return round(float(np.mean(v)), 4) if v else None

    summary = {
        "records": n,
        "exact_match_rate": round(exact / n, 4) if n else None,
        "identical_tokens_rate": round(identical / n, 4) if n else None,
        # Tokens before the first divergence, over the longer output's tokens: what a user sees
        # agree (after a divergence the two continue from different texts).
        "greedy_token_agreement": round(common / longest, 4) if longest else None,
        "first_divergence_mean": mean(divs),
        "first_divergence_median": float(np.median(divs)) if divs else None,
        # Each one's tokens that are the other's argmax given the same prefix (no cascade).
        "teacher_forced_agreement": {k: mean(v) for k, v in tf.items()},
        "mean_logprob": {k: mean(v) for k, v in lp.items()},
    }
    return summary, per


def speed(side: dict) -> dict:
    done = [r for r in side["results"] if r is not None]
    tokens = sum(len(r["tokens"]) for r in done)

    def pct(values):
        if not values:
            return {"p50": None, "p90": None, "p99": None}
        p = np.percentile(values, [50, 90, 99])
        return {"p50": round(float(p[0]), 4), "p90": round(float(p[1]), 4),
                "p99": round(float(p[2]), 4)}

    return {"generated_tokens": tokens,
            "tokens_per_s": round(tokens / side["run_s"], 2) if side["run_s"] else None,
            "ttft_s": pct([r["ttft_s"] for r in done]),
            "latency_s": pct([r["latency_s"] for r in done]),
            "peak_rss_mib": round(side["peak_rss_bytes"] / 2**20, 1),
            "load_s": side["load_s"]}


# ---- the whole comparison ----------------------------------------------------------------------

def _in_child(*args, **kwargs) -> dict:
    ctx = multiprocessing.get_context("spawn")  # a fresh process: its own memory high-water
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        return pool.submit(run_side, *args, **kwargs).result()


def compare(artifact_a: str, artifact_b: str, input: str, defaults: SamplingParams,
            threads: int | None = None, backend_a: str | None = None,
            backend_b: str | None = None, profile: str | None = None,
            batch_size: int | None = None, max_line_bytes: int = 1 << 20,
            log=lambda msg: None) -> dict:
    a_art, b_art = load_artifact(artifact_a, verify=False), load_artifact(artifact_b, verify=False)
    notes = check_comparable(a_art, b_art)
    prompts, skipped = read_prompts(input, defaults, max_line_bytes)
    if not prompts:
        raise ConfigError(f"input '{input}' has no valid record to compare")
    log(f"A: {artifact_a}: generating {len(prompts)} prompts")
    a = _in_child(artifact_a, prompts, threads, backend_a, profile, batch_size)
    threads = a["threads"]  # B runs with A's threads, whatever A's profile chose
    log(f"B: {artifact_b}: generating, then scoring A's outputs ({threads} threads)")
    b = _in_child(artifact_b, prompts, threads, backend_b, profile, batch_size,
                  score=[None if r is None else r["tokens"] for r in a["results"]])
    log("A: scoring B's outputs")
    a_scores = _in_child(artifact_a, prompts, threads, backend_a, profile, batch_size,
                         score=[None if r is None else r["tokens"] for r in b["results"]],
                         generate=False)
    a["scores"] = a_scores["scores"]
    summary, per_record = agreement(prompts, a, b)
    not_run = [p.id for i, p in enumerate(prompts)
               if a["results"][i] is None or b["results"][i] is None]
    if not_run:
        skipped.append(f"{len(not_run)} prompts over an artifact's context were not compared")
    sides = {}
    for name, side in (("a", a), ("b", b)):
        sides[name] = {k: side[k] for k in ("artifact", "artifact_sha256", "profile", "backend",
                                            "threads")} | speed(side)
    return {"a": sides["a"], "b": sides["b"], "agreement": summary, "notes": notes,
            "skipped": skipped, "settings": _settings(defaults, batch_size),
            "latencies": {name: {"latency_s": [r["latency_s"] for r in s["results"] if r],
                                 "ttft_s": [r["ttft_s"] for r in s["results"] if r]}
                          for name, s in (("a", a), ("b", b))},
            "records": per_record}


def _settings(d: SamplingParams, batch_size: int | None) -> dict:
    return {"max_new_tokens": d.max_new_tokens, "temperature": d.temperature, "top_p": d.top_p,
            "top_k": d.top_k, "min_p": d.min_p, "repetition_penalty": d.repetition_penalty,
            "seed": d.seed, "batch_size": batch_size}


def format_table(r: dict) -> str:
    a, b, g = r["a"], r["b"], r["agreement"]

    def ms(d, k):
        return "-" if d[k] is None else f"{d[k] * 1000:.1f} ms"

    rows = [("artifact", a["artifact"], b["artifact"]),
            ("backend / threads", f"{a['backend']} / {a['threads']}",
             f"{b['backend']} / {b['threads']}"),
            ("generated tokens", str(a["generated_tokens"]), str(b["generated_tokens"])),
            ("tokens/s", str(a["tokens_per_s"]), str(b["tokens_per_s"])),
            *((f"TTFT {p.upper()}", ms(a["ttft_s"], p), ms(b["ttft_s"], p))
              for p in ("p50", "p90", "p99")),
            *((f"latency {p.upper()}", ms(a["latency_s"], p), ms(b["latency_s"], p))
              for p in ("p50", "p90", "p99")),
            ("peak RSS", f"{a['peak_rss_mib']} MiB", f"{b['peak_rss_mib']} MiB"),
            ("load", f"{a['load_s']} s", f"{b['load_s']} s")]
    w0 = max(len(x[0]) for x in rows)
    w1 = max(len(x[1]) for x in rows)
    lines = [f"  {'':<{w0}}  {'A':<{w1}}  B"]
    lines += [f"  {k:<{w0}}  {x:<{w1}}  {y}" for k, x, y in rows]
    tf, lp = g["teacher_forced_agreement"], g["mean_logprob"]
    lines += ["", f"  agreement over {g['records']} prompts:",
              f"    exact text match           {g['exact_match_rate']}",
              f"    identical token sequences  {g['identical_tokens_rate']}",
              f"    greedy token agreement     {g['greedy_token_agreement']} "
              "(before the first divergence)",
              f"    first divergence mean/med  {g['first_divergence_mean']} / "
              f"{g['first_divergence_median']} (diverging prompts only)",
              f"    teacher-forced agreement   A under B {tf['a_under_b']}, "
              f"B under A {tf['b_under_a']}",
              f"    mean log-prob of A's text  under A {lp['a_under_a']}, "
              f"under B {lp['a_under_b']}",
              f"    mean log-prob of B's text  under B {lp['b_under_b']}, "
              f"under A {lp['b_under_a']}"]
    lines += [f"  note: {n}" for n in r["notes"]]
    return "\n".join(lines)
