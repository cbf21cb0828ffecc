"""Bad input to `edgeds export`: one clear line, a non-zero exit, nothing half-written."""

from __future__ import annotations

import json
import shutil

from typer.testing import CliRunner

from edgeds.cli.main import EXIT_USAGE, app

runner = CliRunner()


def export(*args):
    return runner.invoke(app, ["export", *map(str, args)])


def assert_refused(result, *phrases):
    assert result.exit_code == EXIT_USAGE, result.output
    for p in phrases:
        assert p in result.output


def test_unsupported_model_type_names_supported(checkpoints, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(checkpoints("qwen2"), src)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "model_type": "mamba"}))
    assert_refused(export(src, "-o", tmp_path / "out"), "model_type 'mamba'", "llama", "qwen2")
    assert not (tmp_path / "out").exists()


def test_missing_safetensors(checkpoints, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(checkpoints("qwen2"), src)
    (src / "model.safetensors").unlink()
    assert_refused(export(src, "-o", tmp_path / "out"), "no *.safetensors")


def test_corrupt_safetensors(checkpoints, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(checkpoints("qwen2"), src)
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated download
    assert_refused(export(src, "-o", tmp_path / "out"), "truncated or corrupt")
    (src / "model.safetensors").write_bytes(b"garbage!" * 4)
    assert_refused(export(src, "-o", tmp_path / "out"), "not a valid safetensors")
    assert not list(tmp_path.glob(".out.partial*"))


def test_pickle_only_checkpoint_is_refused_unopened(checkpoints, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(checkpoints("qwen2"), src)
    (src / "model.safetensors").unlink()
    # A pickle that would run code if anything unpickled it.
    (src / "pytorch_model.bin").write_bytes(b"cos\nsystem\n(S'touch "
                                            + str(tmp_path / "pwned").encode() + b"'\ntR.")
    assert_refused(export(src, "-o", tmp_path / "out"), "never unpickles", "safe_serialization")
    assert not (tmp_path / "pwned").exists()


def test_hub_id_fails_fast_offline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_refused(export("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "-o", "out"), "hub id",
                   "never downloads")


def snapshot(folder):
    """Every file under `folder` with its bytes: what must survive a refused or failed export."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def fresh_export(checkpoints, out):
    ok = export(checkpoints("qwen2"), "-o", out, "--format", "onnx", "--context", "64")
    assert ok.exit_code == 0, ok.output


def test_existing_output_needs_overwrite_and_an_artifact_is_replaced(checkpoints, tmp_path):
    out = tmp_path / "out"
    fresh_export(checkpoints, out)
    assert_refused(export(checkpoints("qwen2"), "-o", out), "already exists", "--overwrite")
    # a file the manifest lists: the artifact's own
    (out / "model.part0.onnx").write_bytes(b"stale")
    ok = export(checkpoints("qwen2"), "-o", out, "--overwrite", "--format", "onnx", "--context",
                "32")
    assert ok.exit_code == 0, ok.output
    assert json.loads((out / "edgeds.json").read_text())["model"]["context_length"] == 32
    assert (out / "model.part0.onnx").read_bytes() != b"stale"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .partial, no old copy


def test_overwrite_never_touches_the_checkpoint(checkpoints, tmp_path):
    """`-o SRC --overwrite` deleted the checkpoint (exit 0); so did an output holding it."""
    src = tmp_path / "models" / "src"
    shutil.copytree(checkpoints("qwen2"), src)
    before = snapshot(tmp_path)
    for out in (src, tmp_path / "models", src / "artifact", tmp_path):
        assert_refused(export(src, "-o", out, "--overwrite"), "overlap", "own folder")
    assert snapshot(tmp_path) == before


def test_overwrite_leaves_a_folder_that_is_not_only_an_artifact(checkpoints, tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "keep.txt").write_text("mine")
    assert_refused(export(checkpoints("qwen2"), "-o", notes, "--overwrite"), "no edgeds manifest",
                   "left alone")
    art = tmp_path / "art"
    fresh_export(checkpoints, art)
    (art / "results.jsonl").write_text("{}\n")  # a user's file beside the artifact's own
    before = snapshot(tmp_path)
    assert_refused(export(checkpoints("qwen2"), "-o", art, "--overwrite"), "'results.jsonl'",
                   "does not list")
    assert snapshot(tmp_path) == before
    (art / "results.jsonl").unlink()
    (art / "edgeds.json").write_text('{"format": "something-else", "files": {}}')
    before = snapshot(tmp_path)
    assert_refused(export(checkpoints("qwen2"), "-o", art, "--overwrite"), "no edgeds manifest")
    assert snapshot(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "notes"]


def test_overwrite_onto_a_plain_file_is_one_line_and_leaves_nothing(checkpoints, tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"not an artifact")
    assert_refused(export(checkpoints("qwen2"), "-o", target, "--overwrite"), "not a folder")
    assert target.read_bytes() == b"not an artifact"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]


def test_a_failed_overwrite_keeps_the_old_artifact_whole(checkpoints, tmp_path, monkeypatch):
    import edgeds_export.weight_file as wf

    out = tmp_path / "out"
    fresh_export(checkpoints, out)
    before = snapshot(out)

    def no_space(self, array):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(wf.WeightFile, "append", no_space)
    assert_refused(export(checkpoints("qwen2"), "-o", out, "--overwrite", "--format", "onnx"),
                   "disk full")
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_full_disk_leaves_nothing(checkpoints, tmp_path, monkeypatch):
    import edgeds_export.weight_file as wf

    def no_space(self, array):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(wf.WeightFile, "append", no_space)
    assert_refused(export(checkpoints("qwen2"), "-o", tmp_path / "out"), "disk full")
    assert list(tmp_path.iterdir()) == []


def test_not_enough_space_is_checked_before_writing(checkpoints, tmp_path, monkeypatch):
    import edgeds_export.artifact_writer as aw

    monkeypatch.setattr(aw.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 10))
    assert_refused(export(checkpoints("qwen2"), "-o", tmp_path / "out"), "not enough disk space")
    assert list(tmp_path.iterdir()) == []


def test_sharded_checkpoint_exports_identically(checkpoints, tmp_path):
    """A checkpoint split into shards with an index gives the same weights as one file."""
    from safetensors.numpy import load_file, save_file

    src = tmp_path / "sharded"
    shutil.copytree(checkpoints("qwen2"), src)
    tensors = load_file(str(src / "model.safetensors"))
    (src / "model.safetensors").unlink()
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2],
              "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for file, part in halves.items():
        save_file({n: tensors[n] for n in part}, str(src / file))
        weight_map |= {n: file for n in part}
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    for folder, out in ((checkpoints("qwen2"), tmp_path / "a"), (src, tmp_path / "b")):
        assert export(folder, "-o", out, "--format", "onnx", "--context", "64").exit_code == 0
    assert ((tmp_path / "a/model.onnx.data").read_bytes()
            == (tmp_path / "b/model.onnx.data").read_bytes())


def test_manifest_is_self_describing(artifacts):
    m = json.loads((artifacts("qwen2", "int8") / "edgeds.json").read_text())
    assert m["format_version"] == 2 and len(m["manifest_sha256"]) == 64
    assert m["model"]["model_type"] == "qwen2" and m["model"]["num_kv_heads"] == 2
    assert m["quantization"]["weights"] == "int8"
    assert m["graphs"]["onnx"]["inputs"][:4] == ["input_ids", "seqlens_k", "total_sequence_length",
                                                 "logits_positions"]
    assert m["graphs"]["openvino"]["kv_cache"]["kind"] == "stateful"
    assert set(m["files"]) >= {"model.onnx", "model.onnx.data", "openvino_model.xml",
                               "openvino_model.bin", "tokenizer.json", "chat_template.jinja"}
    assert all(len(f["sha256"]) == 64 and f["size"] > 0 for f in m["files"].values())
    assert "model.safetensors" in m["source"]["files"]
    assert m["exporter"]["onnx"] and m["exporter"]["openvino"]
    assert m["generation"]["eos_token_ids"] == [1]


def test_verify_gate_passes_fp32_and_fails_a_broken_export(checkpoints, tmp_path, monkeypatch):
    ok = export(checkpoints("llama"), "-o", tmp_path / "ok", "--weights", "fp32", "--verify",
                "--context", "64")
    assert ok.exit_code == 0, ok.output
    assert "verified" in ok.output
    import edgeds_export.tensors as tensors

    real = tensors.TensorWriter.read

    def off_by_a_bit(self, name):  # a wrong exporter: every norm weight slightly off
        w = real(self, name)
        return w * 1.05 if "norm" in name else w

    monkeypatch.setattr(tensors.TensorWriter, "read", off_by_a_bit)
    bad = export(checkpoints("llama"), "-o", tmp_path / "bad", "--weights", "fp32", "--verify",
                 "--context", "64")
    assert_refused(bad, "verification failed")
    assert not (tmp_path / "bad").exists()


def test_without_the_exporter_the_hint_works_from_a_checkout(monkeypatch, tmp_path):
    import sys

    # as if its dependencies were not installed
    monkeypatch.setitem(sys.modules, "edgeds_export", None)
    result = export(tmp_path, "-o", tmp_path / "out")
    assert_refused(result, "from the edgeds source folder: pip install '.[export]'")
    assert "edgeds[export]" not in result.output
