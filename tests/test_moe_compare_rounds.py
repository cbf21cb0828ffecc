"""The MoE side-by-side merges an engine's rounds from separate device calls: each row's median
and its range, so a report shows the spread of rounds that no single call held."""

from __future__ import annotations

import json

from benchmarks.peers.moe_compare import collected


def test_rounds_from_separate_calls_give_median_and_range(tmp_path):
    for n, rate in enumerate((80.0, 90.0, 100.0), 1):
        row = {"engine": "llama.cpp", "metrics": {"decode_b1_128": rate}, "peak_rss_mib": 1.0}
        (tmp_path / f"llama.cpp-r{n}.json").write_text(json.dumps(row))
    (tmp_path / "llama.cpp.json").write_text(json.dumps({"metrics": {"decode_b1_128": 1.0}}))
    merged = collected(tmp_path, "llama.cpp")
    assert merged["rounds"] == 3
    assert merged["metrics"]["decode_b1_128"] == 90.0
    assert merged["spread"]["decode_b1_128"] == (80.0, 100.0)


def test_one_measurement_without_rounds_is_taken_as_it_is(tmp_path):
    row = {"engine": "ik_llama.cpp", "metrics": {"prefill_512": 960.5}}
    (tmp_path / "ik_llama.cpp.json").write_text(json.dumps(row))
    assert collected(tmp_path, "ik_llama.cpp") == row


def test_a_full_depth_phase_makes_one_model_at_a_time_and_drops_the_checkpoint(
        tmp_path, monkeypatch):
    """--direct-q8 --drop-checkpoint (benchmarks/devices/moe_v2lite27_device.sh): the checkpoint
    is written only for a model still to make, the peer's converter writes Q8_0 itself, and the
    checkpoint is gone after; a phase whose model exists writes no checkpoint."""
    import benchmarks.random_checkpoint as rc
    from benchmarks.peers import moe_compare as mc

    written, converted = [], []

    def fake_write(config, out, tokenizer, layers):
        written.append(out)
        out.mkdir(parents=True)
        (out / "model.safetensors.index.json").write_text("{}")

    def fake_convert(peer, src, out, peers_src, work, outtype="bf16"):
        assert (src / "model.safetensors.index.json").exists()
        converted.append((peer, outtype))
        out.write_bytes(b"gguf")

    monkeypatch.setattr(rc, "write_checkpoint", fake_write)
    monkeypatch.setattr(mc, "convert_to_gguf", fake_convert)
    monkeypatch.setattr(mc, "checkpoint_config", lambda config: {})
    args = (tmp_path, tmp_path / "config.json", 27)
    paths = mc.prepare(*args, ["llama.cpp"], None, tmp_path / "build", 2, True, True)
    assert converted == [("llama.cpp", "q8_0")] and len(written) == 1
    assert paths["llama.cpp"].exists() and not paths["checkpoint"].exists()
    mc.prepare(*args, ["llama.cpp"], None, tmp_path / "build", 2, True, True)
    assert len(written) == 1  # the model is there: no checkpoint for it
