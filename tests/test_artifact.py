"""An artifact is refused before anything runs when its manifest or files are wrong."""

from __future__ import annotations

import json
import shutil

import pytest

import edgeds
from edgeds.artifact import load_artifact
from edgeds.errors import ArtifactError


@pytest.fixture
def artifact_copy(artifacts, tmp_path):
    dst = tmp_path / "art"
    shutil.copytree(artifacts("qwen2", "int8"), dst)
    return dst


def test_tampered_file_is_refused(artifact_copy):
    data = bytearray((artifact_copy / "model.onnx.data").read_bytes())
    data[100] ^= 0xFF
    (artifact_copy / "model.onnx.data").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match its sha256"):
        edgeds.load(artifact_copy)


def test_truncated_and_missing_files_are_refused(artifact_copy):
    (artifact_copy / "tokenizer.json").write_text("{}")
    with pytest.raises(ArtifactError, match="wrong size"):
        load_artifact(artifact_copy)
    (artifact_copy / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_artifact(artifact_copy)


def test_unknown_format_version_and_missing_manifest(artifact_copy):
    m = json.loads((artifact_copy / "edgeds.json").read_text())
    (artifact_copy / "edgeds.json").write_text(json.dumps({**m, "format_version": 99}))
    with pytest.raises(ArtifactError, match="format version 99"):
        load_artifact(artifact_copy)
    (artifact_copy / "edgeds.json").unlink()
    with pytest.raises(ArtifactError, match="no edgeds.json"):
        load_artifact(artifact_copy)


def test_cli_refuses_tampered_artifact_with_exit_2(artifact_copy, tmp_path):
    from typer.testing import CliRunner

    from edgeds.cli.main import app

    (artifact_copy / "model.onnx").write_bytes(b"not a graph")
    (tmp_path / "in.jsonl").write_text('{"id": 1, "prompt": "x"}\n')
    r = CliRunner().invoke(app,
                           ["infer", str(artifact_copy), "-i", str(tmp_path / "in.jsonl"), "-o",
                            str(tmp_path / "o.jsonl"), "--backend", "onnxruntime"])
    assert r.exit_code == 2
    assert "model.onnx" in r.output
    assert not (tmp_path / "o.jsonl").exists()


def test_only_the_chosen_backends_files_are_hashed_at_load(artifact_copy):
    (artifact_copy / "openvino_model.bin").write_bytes(b"corrupt")
    edgeds.load(artifact_copy, backend="onnxruntime")  # does not read the OpenVINO files
    with pytest.raises(ArtifactError, match="openvino_model.bin"):
        edgeds.load(artifact_copy, backend="openvino")


def _count_hashes(monkeypatch) -> list[str]:
    import edgeds.artifact as artifact_module

    hashed, real = [], artifact_module.sha256_file
    monkeypatch.setattr(artifact_module, "sha256_file", lambda p: hashed.append(p.name) or real(p))
    return hashed


def test_an_unchanged_artifact_is_hashed_once(artifact_copy, monkeypatch):
    import edgeds.checksum_stamps as stamps

    monkeypatch.setattr(stamps, "SETTLE_NS", 0)  # the copy was written a moment ago
    hashed = _count_hashes(monkeypatch)
    load_artifact(artifact_copy)
    first = len(hashed)
    assert "model.onnx.data" in hashed
    load_artifact(artifact_copy)
    assert len(hashed) == first  # every file stamped, none read again
    monkeypatch.setenv("EDGEDS_VERIFY", "always")
    load_artifact(artifact_copy)
    assert len(hashed) == 2 * first


def test_a_file_changed_after_its_stamp_is_hashed_and_refused(artifact_copy, monkeypatch):
    import os

    import edgeds.checksum_stamps as stamps

    monkeypatch.setattr(stamps, "SETTLE_NS", 0)
    edgeds.load(artifact_copy, backend="onnxruntime")  # stamps the files it hashed
    weights = artifact_copy / "model.onnx.data"
    before = weights.stat()
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF
    weights.write_bytes(bytes(data))  # same size, and the old mtime put back: only ctime tells
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(ArtifactError, match="does not match its sha256"):
        edgeds.load(artifact_copy, backend="onnxruntime")


def test_a_file_written_just_before_its_hash_gets_no_stamp(artifact_copy, monkeypatch):
    hashed = _count_hashes(monkeypatch)  # the copy's files are younger than SETTLE_NS
    load_artifact(artifact_copy)
    first = len(hashed)
    load_artifact(artifact_copy)
    assert len(hashed) == 2 * first


def test_doctor_says_where_stamps_go_and_how_to_turn_them_off(monkeypatch):
    from edgeds.doctor import diagnose, format_report

    monkeypatch.setenv("EDGEDS_CACHE_DIR", "/somewhere/edgeds-cache")
    assert "stamped in /somewhere/edgeds-cache/verified" in format_report(diagnose())
    monkeypatch.setenv("EDGEDS_VERIFY", "always")
    assert "every file hashed at every load" in format_report(diagnose())


def test_a_large_file_is_verified_piece_by_piece(artifact_copy, monkeypatch):
    """Files above PIECE_BYTES carry a sha256 per piece (what the exporter writes, here with
    16 KiB pieces), checked on every core: a load hashes the pieces, not the whole file, and a
    byte changed in any piece, or a piece list that does not cover the file, is refused."""
    import edgeds.artifact as artifact_module
    from edgeds.manifest import seal

    monkeypatch.setenv("EDGEDS_VERIFY", "always")
    monkeypatch.setattr(artifact_module, "PIECE_BYTES", 1 << 14)
    manifest = json.loads((artifact_copy / "edgeds.json").read_text())
    manifest["files"] = artifact_module.describe_files(artifact_copy, list(manifest["files"]))
    (artifact_copy / "edgeds.json").write_text(json.dumps(seal(manifest)))
    data = artifact_copy / "model.onnx.data"
    entry = load_artifact(artifact_copy, verify=False).manifest.files["model.onnx.data"]
    assert entry.piece_bytes == 1 << 14 and len(entry.pieces) == -(-data.stat().st_size >> 14)
    assert len(entry.pieces) > 1
    hashed = _count_hashes(monkeypatch)
    load_artifact(artifact_copy)
    assert "model.onnx.data" not in hashed  # its pieces were hashed instead

    raw = bytearray(data.read_bytes())
    raw[(len(entry.pieces) - 1) << 14] ^= 1  # the last piece's first byte
    data.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="model.onnx.data' does not match its sha256"):
        load_artifact(artifact_copy)

    manifest["files"]["model.onnx.data"]["pieces"]["sha256"].pop()
    (artifact_copy / "edgeds.json").write_text(json.dumps(seal(manifest)))
    with pytest.raises(ArtifactError, match="pieces"):
        load_artifact(artifact_copy)
