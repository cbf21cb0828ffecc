"""FP8 checkpoints (DeepSeek's block-scaled e4m3) exported directly: the weights are exactly what
the float32 dequantization gives, within bf16 rounding of the bf16 dequantization, and every
bad quantization_config or scale is one clear line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from edgeds_export import export_checkpoint
from edgeds_export.fp8 import E4M3FN
from edgeds_export.fp8 import dequantize as np_dequantize
from edgeds_export.verify import open_backends, reference_model
from fp8_checkpoints import dequantize, fp8_blocks, write_dequantized, write_fp8
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from edgeds.artifact import load_artifact
from edgeds.cli.main import EXIT_USAGE, app

CONTEXT = 96
STEPS = 24


def test_e4m3fn_table_matches_torch():
    every_byte = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float().numpy()
    np.testing.assert_array_equal(E4M3FN, every_byte)  # NaN compares equal to NaN here


@pytest.mark.parametrize("shape", [(200, 300), (128, 256), (7, 129)])
def test_dequantize_partial_blocks_like_torch(shape):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    q, scale = fp8_blocks(w, (128, 128))
    got = np_dequantize(q.view(torch.uint8).numpy(), scale.numpy(), 128, 128)
    np.testing.assert_array_equal(got, dequantize(q, scale, (128, 128)).numpy())
    assert np.abs(got - w.numpy()).max() < 0.07 * np.abs(w.numpy()).max()  # e4m3: 3 mantissa bits


@pytest.fixture(scope="module")
def fp8_sources(checkpoints, tmp_path_factory):
    """The tiny V3 as FP8 (32x32 blocks, so kv_a's 48 rows end in a partial block; an MTP
    layer as V3 ships one), and its float32 and bf16 dequantizations."""
    root = tmp_path_factory.mktemp("fp8")
    fp8 = write_fp8(checkpoints("deepseek_v3"), root / "fp8", block=(32, 32))
    return {
        "fp8": fp8,
        "float32": write_dequantized(fp8, root / "f32", torch.float32),
        "bfloat16": write_dequantized(fp8, root / "bf16", torch.bfloat16),
    }


@pytest.fixture(scope="module")
def fp8_exports(fp8_sources, tmp_path_factory):
    root = tmp_path_factory.mktemp("fp8-exports")
    for name, src in fp8_sources.items():
        export_checkpoint(src, root / name, formats=("onnx",), weights="int8", context=CONTEXT)
    return {name: root / name for name in fp8_sources}


def greedy(artifact, prompt: np.ndarray, steps: int, fed: list[int] | None = None):
    """Logits of the prompt and of `steps` cached decode steps, and each one's greedy token; the
    steps are fed `fed` where given (teacher forcing), else the artifact's own choices."""
    backend = dict(open_backends(artifact))["onnx"]
    backend.start(1, len(prompt) + steps + 1)
    rows = [backend.prefill([0], [prompt])[0].copy()]
    tokens = [int(rows[-1].argmax())]
    for step in range(steps):
        rows.append(backend.decode(np.array([fed[step] if fed else tokens[-1]]))[0].copy())
        tokens.append(int(rows[-1].argmax()))
    return rows, tokens


PROMPT = np.random.default_rng(4).integers(2, 320, 12).astype(np.int64)


def test_fp8_export_is_the_float32_dequantization_export_bit_for_bit(fp8_exports):
    fp8, f32 = fp8_exports["fp8"], fp8_exports["float32"]
    assert (fp8 / "model.onnx.data").read_bytes() == (f32 / "model.onnx.data").read_bytes()
    manifest = load_artifact(fp8).manifest
    assert manifest.source.fp8.weight_block_size == (32, 32)
    assert manifest.model.mtp_layers_left_out == 1  # layer 3 is in the checkpoint, not the graph
    assert load_artifact(f32).manifest.source.fp8 is None


def test_fp8_export_matches_the_bf16_dequantization_export(fp8_exports):
    """bf16 rounds the dequantized weights once more (8 significant bits against FP8's exact
    products), which moves a few int8 levels: within int8's own error, not bit for bit. Both
    decode the FP8 export's greedy tokens, so one near-tie cannot derail the comparison."""
    a_rows, a_tokens = greedy(fp8_exports["fp8"], PROMPT, STEPS)
    b_rows, b_tokens = greedy(fp8_exports["bfloat16"], PROMPT, STEPS, fed=a_tokens)
    scale = max(np.abs(r).max() for r in a_rows)
    errors = [float(np.abs(a - b).max() / scale) for a, b in zip(a_rows, b_rows)]
    assert 0 < max(errors) < 0.08
    assert np.mean([a == b for a, b in zip(a_tokens, b_tokens)]) >= 0.9
    assert a_tokens[:8] == b_tokens[:8]


def test_fp8_export_matches_transformers_on_the_dequantized_weights(fp8_sources, fp8_exports):
    rows, tokens = greedy(fp8_exports["fp8"], PROMPT, STEPS)
    model = reference_model(fp8_sources["fp8"])
    with torch.no_grad():
        out = model.generate(
            torch.from_numpy(PROMPT[None]),
            max_new_tokens=STEPS + 1,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=1,
        )
        first = model(torch.from_numpy(PROMPT[None])).logits[0, -1].numpy()
    assert out[0, len(PROMPT) :].tolist() == tokens
    assert np.abs(rows[0] - first).max() < 0.08 * np.abs(first).max()  # int8 against fp32


def test_verify_runs_on_an_fp8_source(fp8_sources, tmp_path):
    """fp32 weights: verification's tightest limit (1e-3), met only if the reference was built
    from exactly the weights the exporter dequantized."""
    manifest = export_checkpoint(
        fp8_sources["fp8"],
        tmp_path / "v",
        formats=("onnx",),
        weights="fp32",
        context=CONTEXT,
        verify=True,
    )
    report = manifest["verification"]["formats"]["onnx"]
    assert report["greedy_agreement"] == 1.0 and report["relative_error"] < 1e-4


# --- bad FP8 checkpoints: one line, exit 2, nothing written ----------------------------------


def _edited(fp8_src, tmp_path, config=None, tensors=None):
    src = tmp_path / "src"
    src.mkdir()
    for f in fp8_src.iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    if config:
        cfg = json.loads((src / "config.json").read_text())
        config(cfg)
        (src / "config.json").write_text(json.dumps(cfg))
    if tensors:
        t = load_file(src / "model.safetensors")
        tensors(t)
        save_file(t, src / "model.safetensors")
    return src


def _refused(src, tmp_path, *phrases):
    result = CliRunner().invoke(
        app, ["export", str(src), "-o", str(tmp_path / "out"), "--format", "onnx"]
    )
    assert result.exit_code == EXIT_USAGE, result.output
    for p in phrases:
        assert p in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial*"))


KV_A = "model.layers.1.self_attn.kv_a_proj_with_mqa.weight"


@pytest.mark.parametrize(
    "key,value,phrase",
    [
        ("quant_method", "awq", "quant_method 'awq'"),
        ("fmt", "e5m2", "fmt 'e5m2'"),
        ("activation_scheme", "static", "activation_scheme 'static'"),
        ("weight_block_size", [128], "weight_block_size"),
        ("scale_fmt", "e4m3", "scale_fmt 'e4m3'"),
    ],
)
def test_unknown_quantization_config_is_named(fp8_sources, tmp_path, key, value, phrase):
    src = _edited(
        fp8_sources["fp8"], tmp_path, config=lambda c: c["quantization_config"].update({key: value})
    )
    _refused(src, tmp_path, phrase)


def test_fp8_weights_without_quantization_config(fp8_sources, tmp_path):
    src = _edited(fp8_sources["fp8"], tmp_path, config=lambda c: c.pop("quantization_config"))
    _refused(src, tmp_path, "F8_E4M3", "no quantization_config")


def test_missing_scale_tensor_is_named(fp8_sources, tmp_path):
    src = _edited(fp8_sources["fp8"], tmp_path, tensors=lambda t: t.pop(KV_A + "_scale_inv"))
    _refused(src, tmp_path, f"'{KV_A}_scale_inv'", "missing")


def test_misshaped_scale_tensor_is_named(fp8_sources, tmp_path):
    def cut(t):  # 48 rows in 32-row blocks need 2 scale rows (the second for the partial block)
        t[KV_A + "_scale_inv"] = t[KV_A + "_scale_inv"][:1].clone()

    _refused(
        _edited(fp8_sources["fp8"], tmp_path, tensors=cut),
        tmp_path,
        f"'{KV_A}_scale_inv'",
        "[2, 2]",
    )


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_non_finite_or_negative_scale_is_refused(fp8_sources, tmp_path, bad):
    def spoil(t):
        t[KV_A + "_scale_inv"][1, 0] = bad

    _refused(_edited(fp8_sources["fp8"], tmp_path, tensors=spoil), tmp_path, f"'{KV_A}_scale_inv'")


def test_fp8_nan_weight_is_refused(fp8_sources, tmp_path):
    def spoil(t):
        t[KV_A].view(torch.uint8)[0, 0] = 0x7F

    _refused(_edited(fp8_sources["fp8"], tmp_path, tensors=spoil), tmp_path, f"'{KV_A}'", "NaN")
