"""`edgeds export --verify`: the exported graphs against transformers, on the user's checkpoint.

A short random prompt runs through the fp32 transformers reference and through every exported
graph: logits of the prompt's last token and of cached decode steps (teacher-forced with the
reference's greedy tokens) are compared, and so are the greedy choices. The export fails when
they differ by more than the weight format allows.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import ExportError

PROMPT_TOKENS, DECODE_STEPS = 16, 8
MAX_MTP_LAYERS = 8  # V3 ships one multi-token-prediction layer after the decoder
# Max |logit error| / max |logit| allowed, and the share of steps whose greedy token must agree.
LIMITS = {
    "fp32": (1e-3, 1.0),
    "fp16": (2e-2, 0.9),
    "int8": (0.15, 0.8),
    "int8-wo": (0.15, 0.8),
    "int4": (0.5, 0.5),
}


def reference_model(src: Path):
    """The fp32 transformers model of `src`. An FP8 checkpoint is built from its config without
    the quantization_config and filled with the exporter's own dequantized weights: transformers
    never reads the FP8 tensors itself (its FP8 path wants a GPU, and would be a second reader
    to trust)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from .checkpoint import Checkpoint
    from .fp8 import SCALE_SUFFIX

    ckpt = Checkpoint(src)
    if ckpt.fp8 is None:
        return AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, local_files_only=True,
                                                    trust_remote_code=False).eval()
    config = AutoConfig.from_pretrained(src, local_files_only=True, trust_remote_code=False)
    del config.quantization_config
    # transformers' own loading (it fuses experts and renames as its version needs), over a
    # state dict rather than files; the MTP layers, which it has no place for, are not read.
    mtp = tuple(f"model.layers.{i}." for i in range(config.num_hidden_layers,
                                                    config.num_hidden_layers + MAX_MTP_LAYERS))
    state = {name: torch.from_numpy(ckpt.tensor(name)) for name in ckpt.names()
             if not name.endswith(SCALE_SUFFIX) and not name.startswith(mtp)}
    model_class = AutoModelForCausalLM._model_mapping[type(config)]
    model = model_class.from_pretrained(None, config=config, state_dict=state, dtype=torch.float32)
    return model.eval()


def reference_run(src: Path, prompt: np.ndarray, steps: int) -> tuple[list[np.ndarray], list[int]]:
    """Last-token logits of the prompt and of `steps` greedy cached decode steps."""
    import torch

    model = reference_model(src)
    logits, tokens = [], []
    with torch.no_grad():
        out = model(torch.from_numpy(prompt[None]), use_cache=True)
        cache = out.past_key_values
        for _ in range(steps + 1):
            row = out.logits[0, -1].float().numpy()
            logits.append(row)
            tokens.append(int(row.argmax()))
            out = model(torch.tensor([[tokens[-1]]]), past_key_values=cache, use_cache=True)
            cache = out.past_key_values
    return logits, tokens


def backend_run(backend, prompt: np.ndarray, tokens: list[int]) -> list[np.ndarray]:
    backend.start(1, len(prompt) + len(tokens) + 1)
    rows = [backend.prefill([0], [prompt])[0].copy()]
    for t in tokens[:-1]:
        rows.append(backend.decode(np.array([t], np.int64))[0].copy())
    return rows


def native_runs_here(art) -> bool:
    """Whether the native backend runs this artifact on this machine."""
    from edgeds.hardware import detect
    from edgeds.selection import native_unavailable

    return native_unavailable(detect(), art) is None


def open_backends(artifact_dir: Path):
    from edgeds.artifact import load_artifact

    art = load_artifact(artifact_dir, verify=False)
    if "onnx" in art.formats:
        from edgeds.backends.onnxruntime import OnnxRuntimeBackend

        yield "onnx", OnnxRuntimeBackend(art, ["CPUExecutionProvider"])
        if art.graph("onnx").small_batch:  # its decode steps, after the main graph's prefill
            yield (
                "onnx small-batch",
                OnnxRuntimeBackend(art, ["CPUExecutionProvider"], small_batch_max=1),
            )
        if native_runs_here(art):  # the same weight file through edgeds' own decoder
            from edgeds.backends.native import open_native

            yield "onnx native", open_native(art, os.cpu_count() or 1)
    if "openvino" in art.formats:
        from edgeds.backends.openvino import OpenVinoBackend

        yield "openvino", OpenVinoBackend(art, config={"INFERENCE_PRECISION_HINT": "f32",
                                                       "KV_CACHE_PRECISION": "f32"})


def verify_artifact(src: Path, artifact_dir: Path, weights: str, kv_cache: str = "float32") -> dict:
    rng = np.random.default_rng(0)
    from edgeds.artifact import load_artifact

    vocab = load_artifact(artifact_dir, verify=False).model.vocab_size
    prompt = rng.integers(0, vocab, PROMPT_TOKENS).astype(np.int64)
    ref_logits, ref_tokens = reference_run(src, prompt, DECODE_STEPS)
    max_rel, min_agree = LIMITS[weights]
    if kv_cache in ("int8", "float16"):  # an n-bit cache costs about what n-bit weights do
        limit = LIMITS["int8" if kv_cache == "int8" else "fp16"]
        max_rel, min_agree = max(max_rel, limit[0]), min(min_agree, limit[1])
    scale = max(float(np.abs(r).max()) for r in ref_logits)
    report = {"prompt_tokens": PROMPT_TOKENS, "decode_steps": DECODE_STEPS, "formats": {}}
    failures = []
    for fmt, backend in open_backends(artifact_dir):
        got = backend_run(backend, prompt, ref_tokens)
        err = max(float(np.abs(g - r).max()) for g, r in zip(got, ref_logits))
        agree = float(np.mean([int(g.argmax()) == t for g, t in zip(got, ref_tokens)]))
        report["formats"][fmt] = {
            "max_abs_error": err,
            "relative_error": err / scale,
            "greedy_agreement": agree,
        }
        if err / scale > max_rel or agree < min_agree:
            failures.append(f"{fmt}: relative logit error {err / scale:.2e} (limit {max_rel:.0e}), "
                            f"greedy agreement {agree:.0%} (limit {min_agree:.0%})")
    report["summary"] = "; ".join(
        f"{f} rel. error {r['relative_error']:.1e}, greedy agreement {r['greedy_agreement']:.0%}"
        for f, r in report["formats"].items())
    if failures:
        raise ExportError("verification failed, the export was not written: " + "; ".join(failures))
    return report
