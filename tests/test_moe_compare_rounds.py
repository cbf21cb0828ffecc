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
