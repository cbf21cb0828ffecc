"""moe_compare --rows: each engine runs only what the chosen rows need (the 27-layer device run
has time for batch 1 and 16 only); the peers' load time is read from their own output, and the
report checks edgeds' peak RSS against its artifact + KV cache + 300 MB (issue 22)."""

from __future__ import annotations

import json

import pytest

from benchmarks.peers import moe_compare as mc

TABLE = """
| PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |
|----|----|---|------|--------|----------|--------|----------|-----|-------|
|   128 |     32 |    1 |    160 |    0.500 |   256.00 |    0.400 |    80.00 |    0.900 |   177.78 |
|   128 |     32 |   16 |   2560 |    4.000 |   512.00 |    2.000 |   256.00 |    6.000 |   426.67 |

llama_perf_context_print:        load time =    2345.60 ms
"""


def test_rows_pick_the_batches_and_long_prompts_they_need():
    assert mc.row_shapes(["decode_b1_128", "decode_b16_128"]) == ((1, 16), ())
    assert mc.row_shapes(["prefill_512"]) == ((), (512,))
    assert mc.row_shapes(list(mc.ROWS)) == (mc.BATCHES, mc.PREFILLS)
    with pytest.raises(SystemExit, match="unknown row"):
        mc.row_shapes(["decode_b2_128"])


def test_a_peer_runs_one_batched_bench_for_batch_1_and_16(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd):
        calls.append(cmd)
        return TABLE, 1234.0

    monkeypatch.setattr(mc, "run_measured", fake_run)
    res = mc.measure_peer("llama.cpp", tmp_path / "m.gguf", tmp_path, 4,
                          rows=("decode_b1_128", "decode_b16_128"))
    assert len(calls) == 2  # the load time's short run, then batch 1 and 16 in one
    assert calls[0][-3:] == ["--perf", "-lv", "4"]
    args = calls[1]
    assert args[args.index("-npl") + 1] == "1,16"
    assert args[args.index("-c") + 1] == str(16 * (mc.PROMPT + mc.DECODE_STEPS))
    assert res["metrics"] == {"decode_b1_128": 80.0, "decode_b16_128": 256.0}
    assert res["load_s"] == pytest.approx(2.3456)
    assert res["peak_rss_mib"] == 1234.0


def test_both_peers_load_lines_are_read():
    ik = "llama_print_timings:        load time =     812.25 ms\n"
    assert mc.peer_load_s(ik) == pytest.approx(0.81225)
    assert mc.peer_load_s("no timings here") is None


def test_report_checks_rss_and_load_and_leaves_out_unmeasured_rows():
    ours = {"engine": "edgeds-native", "metrics": {"decode_b1_128": 100.0}, "load_s": 3.0,
            "peak_rss_mib": 1500.0, "artifact_mib": 1000.0, "kv_mib": 100.0,
            "profile": "cpu-amx", "backend": "native"}
    peer = {"engine": "llama.cpp", "metrics": {"decode_b1_128": 80.0}, "load_s": 2.0,
            "peak_rss_mib": 1100.0, "flags": "-t 4"}
    text = mc.report([ours, peer], "m", 4, 27, None, 1.0, "note", {"decode_b1_128": 1.2})
    assert "**1.25x** (met)" in text
    assert "prefill 512" not in text and "batch 16" not in text
    assert "1500 MiB against artifact 1000 + KV cache 100 + 300 = 1400 MiB: **missed**" in text
    assert "1.50x (target <= 1.2x: **missed**)" in text
    json.dumps(ours)  # the rows stay JSON


def test_checkpoint_on_threads_is_the_same_for_any_thread_count(tmp_path):
    from benchmarks.random_checkpoint import write_checkpoint

    config = json.loads((mc.CONFIGS / "deepseek-v2-lite.json").read_text())
    config |= {"hidden_size": 32, "moe_intermediate_size": 16, "intermediate_size": 48,
               "n_routed_experts": 4, "num_experts_per_tok": 2, "vocab_size": 64,
               "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4,
               "v_head_dim": 8, "num_attention_heads": 2}
    (tmp_path / "c.json").write_text(json.dumps(config))

    def weights(name: str, **kw) -> bytes:
        out = write_checkpoint(tmp_path / "c.json", tmp_path / name, layers=2, **kw)
        return b"".join(p.read_bytes() for p in sorted(out.glob("*.safetensors")))

    assert weights("t2", threads=2) == weights("t3", threads=3)
    assert weights("t2", threads=2) != weights("t1")


def test_a_peers_peak_rss_is_its_own_not_the_harness_s():
    """Linux counts a forked process's parent memory in its peak RSS: a peer started straight
    from a harness holding a checkpoint reported the harness's 6 GB."""
    import sys

    import numpy as np

    held = np.ones(400 << 20 >> 3)  # 400 MiB, touched
    out, small = mc.run_measured([sys.executable, "-c", "print('ok')"])
    _, big = mc.run_measured([sys.executable, "-c",
                              "import numpy as np; a = np.ones(200 << 20 >> 3); print(a[-1])"])
    assert out.strip() == "ok" and held[-1] == 1
    assert small < 100  # a bare interpreter, not the 400 MiB above
    assert 200 < big < 300  # its own 200 MiB
