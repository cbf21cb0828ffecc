"""`edgeds compare` (issue 28): two exports of the reference model agree in a plausible range,
the report and the plot are written, and artifacts of different models are refused."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib

import pytest
from batch_helpers import ENV
from conftest import REPO

DENSE = REPO / "benchmarks/reference_models/r1-distill-tiny-python"


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    from edgeds_export import export_checkpoint

    root = tmp_path_factory.mktemp("compare")
    for weights in ("int8", "fp32"):
        export_checkpoint(DENSE, root / weights, formats=("onnx",), weights=weights, context=256)
    return root


def compare(*args):
    return subprocess.run([sys.executable, "-m", "edgeds.cli", "compare", *map(str, args)],
                          capture_output=True, text=True, env=ENV, timeout=600)


def read_png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc, kind
        chunks.setdefault(kind, b"")
        chunks[kind] += body
        pos += 12 + n
    width, height = struct.unpack(">II", chunks[b"IHDR"][:8])
    return width, height, chunks


def test_int8_and_fp32_exports_agree_in_a_plausible_range(exports, tmp_path):
    text = (DENSE / "heldout_sample.txt").read_text().splitlines()
    prompts = tmp_path / "p.jsonl"
    with open(prompts, "w") as f:
        for i in range(12):
            prompt = "\n".join(text[i * 5: i * 5 + 3]) + "\n"
            f.write(json.dumps({"id": i, "prompt": prompt}) + "\n")
        f.write("{not json\n")
    report, png = tmp_path / "ab.json", tmp_path / "ab.png"
    r = compare(exports / "int8", exports / "fp32", "-i", prompts, "-o", report, "--plot", png,
                "--max-new-tokens", 24, "--threads", 1)
    assert r.returncode == 0, r.stderr
    assert "exact text match" in r.stdout and "tokens/s" in r.stdout
    assert "skipped line 13: malformed JSON" in r.stderr
    out = json.loads(report.read_text())
    g = out["agreement"]
    assert g["records"] == 12 and len(out["records"]) == 12
    # int8 weights move a trained model's greedy text a little, not entirely: most tokens before
    # a first divergence, and nearly all of each one's tokens the other's argmax given the prefix.
    assert 0.3 <= g["greedy_token_agreement"] <= 1.0, g
    assert 0.8 <= g["teacher_forced_agreement"]["a_under_b"] <= 1.0, g
    assert 0.8 <= g["teacher_forced_agreement"]["b_under_a"] <= 1.0, g
    lp = g["mean_logprob"]
    assert all(-10 < v <= 0 for v in lp.values()), lp
    assert abs(lp["a_under_a"] - lp["a_under_b"]) < 0.5, lp  # one model, two roundings
    assert out["a"]["threads"] == out["b"]["threads"] == 1
    for side in ("a", "b"):
        s = out[side]
        assert s["generated_tokens"] > 0 and s["tokens_per_s"] > 0 and s["peak_rss_mib"] > 0
        assert s["ttft_s"]["p50"] <= s["latency_s"]["p99"]
        assert len(out["latencies"][side]["latency_s"]) == 12
    width, height, chunks = read_png(png)
    assert width > 100 and height > 100 and b"IDAT" in chunks and b"IEND" in chunks


def test_artifacts_of_different_models_are_refused(exports, artifacts, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": 1, "prompt": "x"}\n')
    other = artifacts("qwen2", "int8")  # a tiny random qwen2: another size, another vocabulary
    r = compare(exports / "int8", other, "-i", prompts, "-o", tmp_path / "c.json")
    assert r.returncode == 2 and "exports of different models" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "c.json").exists()


def test_a_different_tokenizer_is_refused_and_other_weights_are_a_note(exports):
    from dataclasses import replace

    from edgeds.artifact import Artifact, load_artifact
    from edgeds.compare import check_comparable
    from edgeds.errors import ConfigError

    a = load_artifact(exports / "int8", verify=False)
    m = a.manifest
    assert check_comparable(a, load_artifact(exports / "fp32", verify=False)) == []
    files = dict(m.source.files)
    weights = next(k for k in files if k.endswith(".safetensors"))
    other_weights = replace(m, source=replace(m.source, files={**files, weights: "0" * 64}))
    assert "different weights" in check_comparable(a, Artifact(a.root, other_weights))[0]
    tok = m.tokenizer.file
    other_tok = replace(m, files={**m.files, tok: replace(m.files[tok], sha256="0" * 64)})
    with pytest.raises(ConfigError, match="different tokenizers"):
        check_comparable(a, Artifact(a.root, other_tok))


def test_the_png_writer_without_matplotlib_writes_a_valid_image(tmp_path):
    from edgeds.compare_plot import _raster, write_png

    lat = {s: {"latency_s": [0.1, 0.2, 0.4], "ttft_s": [0.01, 0.02, 0.03]} for s in "ab"}
    write_png(tmp_path / "x.png", _raster(lat))
    width, height, chunks = read_png(tmp_path / "x.png")
    raw = zlib.decompress(chunks[b"IDAT"])
    assert len(raw) == height * (1 + 3 * width)
