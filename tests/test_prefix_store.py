"""Prefix cache blocks on disk (edgeds/prefix_store.py): atomic writes under kill -9, checksums,
foreign blocks, one writer beside readers, the size bound, and greedy tokens read back from disk
in another process identical to a run without the cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from edgeds import native
from edgeds.hardware import detect
from edgeds.prefix_store import PrefixStore, parse_size

NO_NATIVE = native.unavailable(detect().flags)
SHAPE = (2, 3, 4)


def _store(folder, namespace="ns", max_bytes=1 << 20, warnings=None):
    return PrefixStore(folder, namespace, np.float32, SHAPE, max_bytes,
                       warn=(warnings.append if warnings is not None else lambda m: None))


def _rows(seed):
    return np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)


def test_sizes():
    assert parse_size("4G") == 4 << 30 and parse_size("500m") == 500 << 20
    assert parse_size("1.5GiB") == int(1.5 * 2**30) and parse_size("123") == 123
    with pytest.raises(ValueError, match="prefix-cache-size"):
        parse_size("lots")


def test_one_writer_several_readers_and_a_tampered_or_foreign_block_is_ignored(tmp_path):
    said = []
    writer = _store(tmp_path / "pc", warnings=said)
    assert writer.writer and writer.write("k0", None, _rows(0))
    assert writer.write("k1", "k0", _rows(1))
    reader, other = _store(tmp_path / "pc", warnings=said), _store(tmp_path / "pc", "other")
    assert not reader.writer and said == [f"{tmp_path / 'pc'}: another process writes it; "
                                          "this one only reads it"]
    assert not reader.write("k2", "k1", _rows(2))  # readers never write
    assert np.array_equal(reader.read("k1"), _rows(1)) and reader.read("nope") is None
    said.clear()
    assert other.read("k0") is None  # another namespace's block, even under a matching key
    block = writer._path("k0")
    data = bytearray(block.read_bytes())
    data[5] ^= 1
    block.write_bytes(bytes(data))
    assert reader.read("k0") is None
    assert said == [f"block k0 in {tmp_path / 'pc'}: its bytes do not match its checksum; ignored"]
    assert writer.read("k0") is None and not block.exists()  # the writer drops it
    writer.db.execute("UPDATE blocks SET shape = '[9]' WHERE key = 'k1'")
    assert reader.read("k1") is None and "another artifact's or layout's block" in said[-1]



def test_a_chain_is_read_up_to_its_first_missing_or_unsound_block(tmp_path):
    said = []
    store = _store(tmp_path / "pc", warnings=said)
    blocks = [("a", None, _rows(0)), ("b", "a", _rows(1)), ("c", "b", _rows(2))]
    assert store.write_many(blocks + [("a", None, _rows(0))]) == 3  # each key once
    assert store.write_many(blocks) == 0  # all there already
    got = store.read_chain(["a", "b", "c", "d"])
    assert len(got) == 3 and all(np.array_equal(g, _rows(i)) for i, g in enumerate(got))
    assert store.read_chain(["x", "a"]) == []  # a chain's head missing: nothing after it
    longer = store._path("b")
    longer.write_bytes(longer.read_bytes() + b"\0")  # one byte more than its rows
    assert len(store.read_chain(["a", "b", "c"])) == 1
    n = _rows(0).nbytes
    assert said == [f"block b in {tmp_path / 'pc'}: {n + 1} bytes, not {n}; ignored"]



def test_a_chain_read_by_several_threads_comes_back_in_order(tmp_path, monkeypatch):
    import edgeds.prefix_store as ps

    said = []
    store = _store(tmp_path / "pc", warnings=said)
    keys = [f"k{i}" for i in range(7)]
    store.write_many([(k, keys[i - 1] if i else None, _rows(i)) for i, k in enumerate(keys)])
    monkeypatch.setattr(ps, "PARALLEL_READ_BYTES", _rows(0).nbytes)  # a thread per block
    store.read_threads = 3
    got = store.read_chain(keys)
    assert len(got) == 7 and all(np.array_equal(g, _rows(i)) for i, g in enumerate(got))
    assert store._pool is not None  # read by the threads, not in line
    block = store._path("k4")
    block.write_bytes(bytes(len(block.read_bytes())))
    assert len(store.read_chain(keys)) == 4 and "do not match its checksum" in said[-1]


def test_the_size_bound_evicts_least_recently_used_leaves(tmp_path):
    per = _rows(0).nbytes
    store = _store(tmp_path / "pc", max_bytes=3 * per)
    store.write("a", None, _rows(0))
    store.write("a1", "a", _rows(1))
    store.write("b", None, _rows(2))
    store.read("a1")  # a and a1 now newer than b? a1 only: a is its head
    store.write("c", None, _rows(3))  # one must go: b, the least recently used leaf
    assert store.total_bytes() <= 3 * per
    assert store.read("b") is None and store.read("a") is not None and store.read("c") is not None
    store.write("d", None, _rows(4))  # a is a head: its leaf a1 goes before it
    assert store.read("a1") is None and store.read("a") is not None


WRITER = textwrap.dedent("""
    import sys, numpy as np
    from edgeds.prefix_store import PrefixStore
    store = PrefixStore(sys.argv[1], "ns", np.float32, (1 << 20,), 1 << 40)
    for i in range(10 ** 6):
        store.write(f"k{i}", None, np.full(1 << 20, i, np.float32))
        print(i, flush=True)
""")


def test_a_writer_killed_mid_block_leaves_no_half_block(tmp_path):
    folder = tmp_path / "pc"
    for round_ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(folder)], stdout=subprocess.PIPE,
                                text=True)
        for _ in range(3 + round_):
            proc.stdout.readline()
        time.sleep(0.01 * round_)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    said = []
    store = PrefixStore(folder, "ns", np.float32, (1 << 20,), 1 << 40, warn=said.append)
    keys = [k for (k,) in store.db.execute("SELECT key FROM blocks")]
    assert len(keys) >= 3
    for key in keys:
        assert store.read(key)[0] == float(key[1:])
    assert said == []
    files = list((folder / "blocks").glob("*/*"))
    assert len(files) == len(keys) and not any(".tmp" in f.name for f in files)


RUN = textwrap.dedent("""
    import json, sys, numpy as np, edgeds
    from edgeds import generate as gen
    from edgeds.sampling import SamplingParams
    folder, cache = sys.argv[1], sys.argv[2]
    engine = edgeds.load(folder, backend=sys.argv[4], profile="cpu-avx512",
                         prefix_cache=False if cache == "off" else cache)
    rng = np.random.default_rng(int(sys.argv[3]))
    shared = np.random.default_rng(0).integers(2, 320, 70)
    prompts = [np.concatenate([shared, rng.integers(2, 320, n)]) for n in (5, 9, 1)]
    reqs = [gen.Request(i, p.astype(np.int64), SamplingParams(max_new_tokens=8, ignore_eos=True))
            for i, p in enumerate(prompts)]
    done = {e.key: e.token_ids for e in engine.run(reqs, 2) if isinstance(e, gen.Finished)}
    stats = engine.prefix.stats.summary() if engine.prefix else None
    print(json.dumps({"tokens": [done[i] for i in range(3)], "stats": stats}))
""")


def _run(folder, cache, seed, backend="native"):
    out = subprocess.run([sys.executable, "-c", RUN, str(folder), str(cache), str(seed), backend],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1]), out.stderr


@pytest.mark.skipif(NO_NATIVE is not None, reason=str(NO_NATIVE))
def test_another_process_reuses_the_blocks_and_gets_the_same_tokens(tmp_path, artifacts):
    qwen, llama = artifacts("qwen2", "int8"), artifacts("llama", "int8")
    folder = tmp_path / "pc"
    first, _ = _run(qwen, folder, 1)
    # The native cache's blocks are 64 tokens (the prefix cache's, where a backend shares them).
    assert first["stats"]["disk_blocks_written"] >= 1 and first["stats"]["disk_blocks_read"] == 0
    again, _ = _run(qwen, folder, 2)  # new questions over the same 70-token prefix
    plain, _ = _run(qwen, "off", 2)
    assert again["tokens"] == plain["tokens"]
    assert again["stats"]["disk_blocks_read"] == 1 and again["stats"]["tokens_reused"] == 3 * 64
    other, err = _run(llama, folder, 2)  # another artifact: never one of qwen's blocks
    assert other["stats"]["disk_blocks_read"] == 0 and "ignored" not in err
    assert other["stats"]["disk_blocks_written"] >= 1  # its own, beside qwen's


@pytest.mark.parametrize("backend", ["native", "onnxruntime"])
def test_mla_latent_blocks_from_disk_give_the_tokens_of_a_run_without_the_cache(backend, tmp_path,
                                                                               artifacts):
    if backend == "native" and NO_NATIVE is not None:
        pytest.skip(str(NO_NATIVE))
    deepseek, folder = artifacts("deepseek_v2", "int8"), tmp_path / "pc"
    first, _ = _run(deepseek, folder, 1, backend)
    assert first["stats"]["disk_blocks_written"] >= 2
    again, _ = _run(deepseek, folder, 2, backend)
    plain, _ = _run(deepseek, "off", 2, backend)
    assert again["tokens"] == plain["tokens"]
    assert again["stats"]["disk_blocks_read"] == 2 and again["stats"]["tokens_reused"] == 3 * 64
    if backend == "onnxruntime" and NO_NATIVE is None:  # the native blocks are not its own
        native_run, _ = _run(deepseek, folder, 2, "native")
        assert native_run["stats"]["disk_blocks_read"] == 0


@pytest.mark.parametrize("args,said", [
    (["--prefix-cache", "PC", "--no-prefix-cache"], "and --no-prefix-cache: give one"),
    (["--prefix-cache", "IN"], "is a file; give a folder"),
    (["--prefix-cache", "NOWHERE/pc"], "does not exist"),
    (["--prefix-cache-size", "lots"], "--prefix-cache-size 'lots': give bytes"),
])
def test_bad_prefix_cache_flags_are_one_line_and_exit_2_before_the_model_loads(args, said,
                                                                               tmp_path):
    from typer.testing import CliRunner

    from edgeds.cli.main import app

    src = tmp_path / "in.jsonl"
    src.write_text('{"id": 1, "prompt": "x"}\n')
    where = {"PC": str(tmp_path / "pc"), "IN": str(src), "NOWHERE/pc": str(tmp_path / "no" / "pc")}
    args = [where.get(a, a) for a in args]
    r = CliRunner().invoke(app, ["infer", "-i", str(src), "-o", str(tmp_path / "o.jsonl"), *args])
    assert r.exit_code == 2
    last = r.output.strip().splitlines()[-1]
    assert last.startswith("edgeds: error: --prefix-cache") and said in last
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "pc").exists()
