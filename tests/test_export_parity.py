"""Every exported graph against the transformers reference: logits on prefill and on cached decode
steps, greedy tokens, and batches of prompts of different lengths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import edgeds
from edgeds.artifact import load_artifact
from edgeds_export.verify import open_backends
from tiny_models import load_reference

KINDS = ["qwen2", "llama", "llama-linear", "qwen2-tied", "deepseek_v2", "deepseek_v3"]
FORMATS = ["onnx", "openvino"]
BACKEND_OF = {"onnx": "onnxruntime", "openvino": "openvino"}


def backend_for(artifact, fmt):
    return dict(open_backends(artifact))[fmt]


def reference_logits(model, prompt: np.ndarray, steps: int):
    """All prompt-position logits, then `steps` greedy cached decode steps."""
    with torch.no_grad():
        out = model(torch.from_numpy(prompt[None]), use_cache=True)
        prefill = out.logits[0].numpy()
        cache, token = out.past_key_values, int(prefill[-1].argmax())
        decode, tokens = [], [token]
        for _ in range(steps):
            out = model(torch.tensor([[token]]), past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            decode.append(out.logits[0, -1].numpy())
            token = int(decode[-1].argmax())
            tokens.append(token)
    return prefill, decode, tokens


def errors_against_reference(model, backend, steps: int,
                             seed: int = 1) -> tuple[list[float], list[bool]]:
    """A 16-token prompt's logits at every position, then `steps` cached decode steps fed the
    reference's greedy tokens: each call's largest error relative to the reference's logit
    range, and whether each step picks the reference's next token."""
    prompt = np.random.default_rng(seed).integers(2, 320, 16).astype(np.int64)
    ref_prefill, ref_decode, tokens = reference_logits(model, prompt, steps)
    backend.start(1, 64)
    prefill = backend.prefill([0], [prompt], every_position=True)[0]
    scale = np.abs(ref_prefill).max()
    errors, agree = [float(np.abs(prefill - ref_prefill).max() / scale)], []
    for step, expected in enumerate(ref_decode):
        got = backend.decode(np.array([tokens[step]]))[0]
        errors.append(float(np.abs(got - expected).max() / scale))
        agree.append(int(got.argmax()) == tokens[step + 1])
    return errors, agree


def reference_greedy(model, prompt: np.ndarray, n: int, eos: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.from_numpy(prompt[None]), max_new_tokens=n, do_sample=False,
                             eos_token_id=eos, pad_token_id=eos)
    tokens = out[0, len(prompt):].tolist()
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", KINDS)
def test_fp32_logits_match_transformers(kind, fmt, checkpoints, artifacts):
    model = load_reference(checkpoints(kind))
    prompt = np.random.default_rng(1).integers(2, 320, 16).astype(np.int64)
    ref_prefill, ref_decode, tokens = reference_logits(model, prompt, 16)
    backend = backend_for(artifacts(kind), fmt)
    backend.start(1, 64)
    prefill = backend.prefill([0], [prompt], every_position=True)[0]
    assert np.abs(prefill - ref_prefill).max() < 1e-4
    for step, expected in enumerate(ref_decode):
        got = backend.decode(np.array([tokens[step]]))[0]
        assert np.abs(got - expected).max() < 1e-4, f"decode step {step}"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", ["qwen2", "llama", "deepseek_v2", "deepseek_v3"])
def test_greedy_32_tokens_identical_and_batch_matches_alone(kind, fmt, checkpoints, artifacts):
    model = load_reference(checkpoints(kind))
    engine = edgeds.load(artifacts(kind), backend=BACKEND_OF[fmt], profile="cpu-avx2")
    rng = np.random.default_rng(2)
    prompts = [rng.integers(2, 320, n).astype(np.int64) for n in (5, 17, 11)]
    alone = []
    for p in prompts:
        expected = reference_greedy(model, p, 32, eos=1)
        got = _generate_ids(engine, [p], 32)[0]
        assert got == expected
        alone.append(got)
    assert _generate_ids(engine, prompts, 32) == alone


def assert_batch_matches_alone(path, n: int = 12) -> None:
    """Three prompts of different lengths decoded together give what each gives alone."""
    engine = edgeds.load(path, backend="onnxruntime")
    rng = np.random.default_rng(3)
    prompts = [rng.integers(2, 320, length).astype(np.int64) for length in (5, 17, 30)]
    together = _generate_ids(engine, prompts, n)
    for i, p in enumerate(prompts):
        assert _generate_ids(engine, [p], n)[0] == together[i]


def _generate_ids(engine, prompts, n):
    from edgeds import generate as gen
    from edgeds.sampling import SamplingParams

    reqs = [gen.Request(i, p, SamplingParams(max_new_tokens=n)) for i, p in enumerate(prompts)]
    out = {e.key: e.token_ids for e in engine.run(reqs, batch_size=len(prompts))
           if isinstance(e, gen.Finished)}
    return [out[i] for i in range(len(prompts))]


@pytest.mark.parametrize("weights,bound", [("int8", 0.08), ("int4", 0.6)])
@pytest.mark.parametrize("fmt", FORMATS)
def test_quantized_logit_error_is_bounded(weights, bound, fmt, artifacts, capsys):
    prompt = np.random.default_rng(3).integers(2, 320, 16).astype(np.int64)
    ref = backend_for(artifacts("qwen2", "fp32"), fmt)
    quant = backend_for(artifacts("qwen2", weights), fmt)
    for b in (ref, quant):
        b.start(1, 64)
    r = ref.prefill([0], [prompt], every_position=True)[0]
    q = quant.prefill([0], [prompt], every_position=True)[0]
    rel = np.abs(q - r).max() / np.abs(r).max()
    agree = (q.argmax(-1) == r.argmax(-1)).mean()
    with capsys.disabled():
        print(f"\n{weights} {fmt}: max logit error {np.abs(q - r).max():.4f} "
              f"({rel:.2%} of max |logit|), top-1 agreement {agree:.0%}")
    assert rel < bound
    assert rel > 0  # the weights really are quantized


def test_int8_weights_stay_int8_in_both_graphs(artifacts):
    import onnx

    art = load_artifact(artifacts("qwen2", "int8"))
    g = onnx.load(str(art.path("model.onnx")), load_external_data=False).graph
    ops = [n.op_type for n in g.node]
    # qkv, o, gate, up, down per layer, and the LM head
    assert ops.count("MatMulIntegerToFloat") == 2 * 5 + 1
    assert "MatMul" not in ops and "MatMulNBits" not in ops
    # gate and up write their own outputs: no copy of the widest activation
    assert "Split" not in ops
    assert ops.count("QuantizeLinear") == 2 * 4 + 1  # gate and up share their input's quantization
    assert ops.count("GroupQueryAttention") == 2
    weights = {t.name: t for t in g.initializer}
    for n in g.node:
        if n.op_type == "MatMulIntegerToFloat":
            # activations are the uint8 side
            assert weights[n.input[1]].data_type == onnx.TensorProto.INT8
    xml = art.path("openvino_model.xml").read_text()
    assert xml.count('element_type="i8"') >= 2 * 5 + 1
    assert "ScaledDotProductAttention" in xml and "ReadValue" in xml
    q = art.manifest.quantization
    assert q.weights == "int8" and q.symmetric and q.granularity == "per output channel"
    # about a quarter of fp32 (plus scales and the int8 embedding)
    fp32 = load_artifact(artifacts("qwen2", "fp32")).manifest.files["model.onnx.data"].size
    assert art.manifest.files["model.onnx.data"].size < 0.32 * fp32
