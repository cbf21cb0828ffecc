"""The native backend: edgeds' own decoder loops (edgeds/native/decoder.c) over a dense int8
export's weight file, against transformers, ONNX Runtime on the same artifact, and itself."""

from __future__ import annotations

import numpy as np
import pytest
from test_export_parity import errors_against_reference
from test_hardware_profiles import fake_root, x86
from tiny_models import load_reference

import edgeds
from edgeds import native
from edgeds.artifact import load_artifact
from edgeds.backends import native as native_backend
from edgeds.backends.native import NativeBackend
from edgeds.backends.onnxruntime import OnnxRuntimeBackend
from edgeds.errors import ArtifactError, ConfigError
from edgeds.hardware import detect
from edgeds.profiles import choose_profile, load_profiles
from edgeds.selection import choose_backend

CPU = ["CPUExecutionProvider"]

pytestmark = pytest.mark.skipif(native.unavailable(detect().flags) is not None,
                                reason=str(native.unavailable(detect().flags)))


@pytest.mark.parametrize("kind,kv_cache",
                         [("qwen2", "float32"), ("llama", "float16"), ("qwen2-tied", "float32")])
def test_native_logits_follow_transformers_as_closely_as_onnxruntime(kind, kv_cache, checkpoints,
                                                                     artifacts):
    """A 16-token prefill (every position) and 24 cached decode steps against the reference:
    within the int8 bound, and as close as ONNX Runtime running the same export's graph."""
    art = load_artifact(artifacts(kind, "int8", kv_cache))
    model = load_reference(checkpoints(kind))
    errors, agree = errors_against_reference(model, NativeBackend(art, 2), 24)
    ort_errors, _ = errors_against_reference(model, OnnxRuntimeBackend(art, CPU, 2), 24)
    assert max(errors) < 0.08  # the int8 bound of test_quantized_logit_error_is_bounded
    assert max(errors) < 1.5 * max(ort_errors) + 1e-3
    assert np.mean(agree) >= 0.85


def test_a_mixed_batch_follows_transformers_row_by_row(checkpoints, artifacts):
    """Prompts of different lengths prefilled together (one call), then decode steps of the
    whole batch on the same tokens: each row's logits against transformers running that row's
    tokens alone, within the int8 bound. A mixed batch done wrong (a row reading another's
    cache, positions shifted) is off by the logits' size. Not against ONNX Runtime: on CPUs
    without VNNI its int8 kernels sum in saturating 16-bit steps and stray further from the
    reference than the native backend does."""
    import torch

    art = load_artifact(artifacts("qwen2", "int8"))
    model = load_reference(checkpoints("qwen2"))
    rng = np.random.default_rng(3)
    prompts = [rng.integers(2, 320, n).astype(np.int64) for n in (7, 19, 3)]
    steps = rng.integers(2, 320, (6, 3))
    backend = NativeBackend(art, 2)
    backend.start(3, 64)
    got = [backend.prefill([0, 1, 2], prompts)] + [backend.decode(t).copy() for t in steps]
    got = np.stack(got, 1)  # [row, prefill then each step, vocab]
    for row, prompt in enumerate(prompts):
        tokens = np.concatenate([prompt, steps[:, row]])
        with torch.no_grad():
            ref = model(torch.from_numpy(tokens[None])).logits[0, len(prompt) - 1:].numpy()
        assert np.abs(got[row] - ref).max() / np.abs(ref).max() < 0.08
        assert (got[row].argmax(-1) == ref.argmax(-1)).mean() >= 0.7


def test_a_prompt_split_over_calls_gives_the_logits_of_one_call(artifacts, monkeypatch):
    """Prefill calls hold PREFILL_ROWS rows; a prompt straddling calls attends to what the
    earlier call cached."""
    art = load_artifact(artifacts("llama", "int8"))
    prompt = np.random.default_rng(5).integers(2, 320, 40).astype(np.int64)
    backend = NativeBackend(art, 2)
    backend.start(2, 64)
    whole = backend.prefill([1], [prompt], every_position=True)
    monkeypatch.setattr(native_backend, "PREFILL_ROWS", 16)
    backend.start(2, 64)
    split = backend.prefill([1], [prompt], every_position=True)
    np.testing.assert_array_equal(split, whole)


@pytest.mark.parametrize("kind,kv_cache", [("qwen2", "float32"), ("llama", "float16")])
def test_a_rows_logits_do_not_depend_on_its_batch(kind, kv_cache, artifacts):
    """Batch invariance, bit for bit: one prompt's prefill and greedy decode logits alone (batch
    1, one thread), among 64 prompts of mixed lengths prefilled together (calls of PREFILL_ROWS
    rows: its rows fall anywhere in a call and in the GEMM's row blocks), and refilled into a
    slot of a running batch beside another prompt. A resumed job re-runs a prompt in another
    batch than the straight run did, so greedy output depends on exactly this."""
    art = load_artifact(artifacts(kind, "int8", kv_cache))
    rng = np.random.default_rng(7)
    target, steps = rng.integers(2, 320, 29).astype(np.int64), 12

    def decode_steps(backend, logits, row):
        """`steps` greedy steps of every slot: the logits of `row` at each, and the last step's."""
        seen = [logits[row].copy()]
        for _ in range(steps):
            logits = backend.decode(logits.argmax(-1)).copy()
            seen.append(logits[row])
        return np.stack(seen), logits

    alone = NativeBackend(art, 1)
    alone.start(1, 128)
    reference, _ = decode_steps(alone, alone.prefill([0], [target]), 0)

    batch = NativeBackend(art, 2)
    batch.start(64, 128)
    prompts = [rng.integers(2, 320, n).astype(np.int64) for n in rng.integers(1, 60, 64)]
    prompts[37] = target
    assert sum(map(len, prompts)) > 2 * native_backend.PREFILL_ROWS
    seen, logits = decode_steps(batch, batch.prefill(list(range(64)), prompts), 37)
    np.testing.assert_array_equal(seen, reference)

    for slot in (5, 9):
        batch.release(slot)
    logits[[9, 5]] = batch.prefill([9, 5], [rng.integers(2, 320, 41).astype(np.int64), target])
    seen, _ = decode_steps(batch, logits, 5)
    np.testing.assert_array_equal(seen, reference)


def test_a_grown_cache_keeps_what_it_held(artifacts):
    """The generate loop enlarges the cache when a longer request arrives: decoding after grow()
    gives the logits of a cache that was that large from the start."""
    art = load_artifact(artifacts("qwen2", "int8"))
    prompt = np.random.default_rng(6).integers(2, 320, 10).astype(np.int64)
    runs = []
    for first_capacity in (12, 40):
        backend = NativeBackend(art, 2)
        backend.start(2, first_capacity)
        logits = [backend.prefill([1], [prompt])[0]]
        backend.grow(40)
        for _ in range(20):
            logits.append(backend.decode(np.array([3, logits[-1].argmax()]))[1].copy())
        runs.append(np.stack(logits))
    np.testing.assert_array_equal(runs[0], runs[1])


def test_bad_input_is_refused_not_read(artifacts):
    backend = NativeBackend(load_artifact(artifacts("qwen2", "int8")), 2)
    backend.start(2, 8)
    with pytest.raises(ValueError, match="longer than the cache capacity"):
        backend.prefill([0], [np.arange(2, 12)])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        backend.prefill([0], [np.array([5, 320])])
    with pytest.raises(ValueError, match="an empty prompt"):
        backend.prefill([0, 1], [np.array([], np.int64), np.array([5, 6])])
    with pytest.raises(ValueError, match="a slot given twice"):
        backend.prefill([1, 1], [np.array([5]), np.array([6])])
    with pytest.raises(ValueError, match="3 tokens for 2 slots"):
        backend.decode(np.array([5, 6, 7]))


@pytest.mark.parametrize("which", ["native", "onnxruntime"])
def test_idle_slots_stay_at_position_0_while_others_decode(which, artifacts):
    """A released (or never filled) slot's row is computed and ignored; it must not attend over
    a length that grows every step."""
    art = load_artifact(artifacts("qwen2", "int8"))
    backend = NativeBackend(art, 2) if which == "native" else OnnxRuntimeBackend(art, CPU, 2)
    backend.start(2, 32)
    backend.prefill([1], [np.array([5, 6, 7])])
    for _ in range(4):
        backend.decode(np.array([3, 4]))
    assert backend.lengths.tolist() == [0, 7]
    backend.release(1)
    backend.decode(np.array([3, 4]))
    assert backend.lengths.tolist() == [0, 0]


def test_heads_that_do_not_span_the_hidden_size_stay_on_onnxruntime(tmp_path):
    """Llama configs may set head_dim apart from hidden / heads; the native loops assume them
    equal."""
    from edgeds_export import export_checkpoint
    from tiny_models import make_checkpoint

    out = tmp_path / "art"
    export_checkpoint(make_checkpoint(tmp_path / "ck", "llama", head_dim=32), out,
                      formats=("onnx",), weights="int8", context=64)
    assert (native_backend.unsupported(load_artifact(out))
            == "4 heads of 32 do not span the hidden size 64")


def test_loading_the_library_leaves_the_process_float_mode_alone():
    """Linked without -ffast-math: gcc's crtfastmath.o would turn on flush-to-zero for every
    library in the process (numpy, ONNX Runtime) once this one is loaded."""
    native.library()
    assert np.float32(1e-39) * np.float32(1) != 0


def test_refilled_slots_get_what_each_prompt_gets_alone(artifacts):
    """Five prompts through two slots of the generate loop: finished slots take the next prompt
    mid-decode, and each prompt gets the tokens it gets alone."""
    from edgeds import generate as gen
    from edgeds.sampling import SamplingParams

    engine = edgeds.load(artifacts("qwen2", "int8"), backend="native", profile="cpu-avx512")
    assert engine.describe()["backend"] == "native"

    def run(prompts, lengths, batch_size):
        reqs = [gen.Request(i, p, SamplingParams(max_new_tokens=n, ignore_eos=True))
                for i, (p, n) in enumerate(zip(prompts, lengths))]
        done = {e.key: e.token_ids for e in engine.run(reqs, batch_size)
                if isinstance(e, gen.Finished)}
        return [done[i] for i in range(len(prompts))]

    rng = np.random.default_rng(4)
    prompts = [rng.integers(2, 320, n).astype(np.int64) for n in (5, 17, 9, 30, 12)]
    lengths = [3, 11, 6, 9, 4]
    together = run(prompts, lengths, 2)
    assert together == [run([p], [n], 1)[0] for p, n in zip(prompts, lengths)]


def test_the_avx512_and_amx_profiles_pick_native_for_a_dense_int8_export(tmp_path, artifacts):
    hw = detect(fake_root(tmp_path, x86(8, "avx512f avx512bw avx512_vnni avx512_bf16")))
    profile, _ = choose_profile(hw, load_profiles())
    choice = choose_backend(profile, hw, load_artifact(artifacts("qwen2", "int8")))
    assert choice.backend == "native" and choice.artifact_format == "onnx"
    assert any(r.startswith("backend native: edgeds' own decoder loops") for r in choice.reasons)


@pytest.mark.parametrize("weights,kv_cache,why", [("fp32", "float32", "weights fp32"),
                                                  ("int8", "int8", "its int8 KV cache")])
def test_exports_it_cannot_run_stay_on_onnxruntime_with_the_reason(weights, kv_cache, why, tmp_path,
                                                                   artifacts):
    hw = detect(fake_root(tmp_path, x86(8, "avx512f avx512bw avx512_vnni")))
    profile, _ = choose_profile(hw, load_profiles())
    choice = choose_backend(profile, hw, load_artifact(artifacts("qwen2", weights, kv_cache)))
    assert choice.backend == "onnxruntime"
    assert any(r.startswith("backend native: ") and why in r for r in choice.reasons)


@pytest.fixture
def unbuilt(tmp_path, monkeypatch):
    """A process that has not loaded the library, with an empty cache folder."""
    monkeypatch.setenv("EDGEDS_CACHE_DIR", str(tmp_path / "empty-cache"))
    native.library.cache_clear()
    yield
    native.library.cache_clear()


def test_cpus_without_avx2s_build_and_machines_without_a_compiler_are_told_why(
        tmp_path, monkeypatch, artifacts, unbuilt):
    no_f16c = detect(fake_root(tmp_path, x86(4, "")))  # avx2 and fma, no f16c
    assert native.unavailable(no_f16c.flags) == "native decoder: this CPU lacks f16c"
    assert native.build_for(no_f16c.flags | {"f16c"}) == "avx2"
    assert native.build_for(no_f16c.flags | {"f16c", "avx512f", "avx512bw", "avx512_vnni"}) \
        == "avx512"
    flags = frozenset({"avx512f", "avx512bw", "avx512_vnni"})
    monkeypatch.setattr(native, "compiler", lambda: None)
    no_compiler = "native decoder: no C compiler to build it with (set CC, or install gcc)"
    assert native.unavailable(flags) == no_compiler
    with pytest.raises(ConfigError, match="no C compiler"):
        edgeds.load(artifacts("qwen2", "int8"), backend="native")
    # The profile's order goes on to ONNX Runtime, and says why.
    engine = edgeds.load(artifacts("qwen2", "int8"), profile="cpu-avx512")
    assert engine.describe()["backend"] == "onnxruntime"
    assert f"backend native: {no_compiler}" in engine.reasons


def test_a_backend_made_directly_on_a_cpu_without_either_build_is_refused(tmp_path, monkeypatch,
                                                                          artifacts, unbuilt):
    """Past the registry (a script making the backend itself): a refusal, not SIGILL."""
    import edgeds.hardware

    no_f16c = detect(fake_root(tmp_path, x86(4, "")))
    monkeypatch.setattr(edgeds.hardware, "detect", lambda root="/": no_f16c)
    native.this_cpus_build.cache_clear()
    try:
        with pytest.raises(native.NativeUnavailable, match="this CPU lacks f16c"):
            NativeBackend(load_artifact(artifacts("qwen2", "int8")), 2)
    finally:
        native.this_cpus_build.cache_clear()


def test_a_compiler_that_cannot_be_run_is_a_reason_not_a_crash(monkeypatch, unbuilt, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc") + " -v")
    why = native.unavailable(frozenset({"avx512f", "avx512bw", "avx512_vnni"}))
    assert why.startswith("native decoder: cannot run ") and "No such file" in why
    assert not list((tmp_path / "empty-cache" / "native").glob("*"))  # no half-built leftovers


def test_a_compiler_without_amx_builds_the_vnni_kernels(monkeypatch, artifacts, unbuilt, tmp_path):
    """gcc before 11 has no -mamx-*: the library is built without the AMX kernel, and runs."""
    old_gcc = tmp_path / "old-gcc"
    old_gcc.write_text('#!/bin/sh\ncase "$*" in *-mamx*) echo "unrecognized option -mamx-tile" '
                       '>&2; exit 1;; esac\n'
                       f'exec {native.compiler()} "$@"\n')
    old_gcc.chmod(0o755)
    monkeypatch.setenv("CC", str(old_gcc))
    assert native.unavailable(frozenset({"avx512f", "avx512bw", "avx512_vnni"})) is None
    art = load_artifact(artifacts("qwen2", "int8"))
    backend = NativeBackend(art, 2)
    assert not backend.uses_amx
    backend.start(1, 16)
    assert np.isfinite(backend.prefill([0], [np.array([5, 6, 7])])).all()


def test_a_failing_build_leaves_the_job_on_onnxruntime(monkeypatch, artifacts, unbuilt, tmp_path):
    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\necho 'cc: internal error' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    engine = edgeds.load(artifacts("qwen2", "int8"), profile="cpu-avx512")
    assert engine.describe()["backend"] == "onnxruntime"
    assert any("failed to build it: cc: internal error" in r for r in engine.reasons)


def test_export_verify_checks_the_native_backend_too(checkpoints, tmp_path):
    from edgeds_export import export_checkpoint

    manifest = export_checkpoint(checkpoints("qwen2"), tmp_path / "out", formats=("onnx",),
                                 context=64, verify=True)
    checked = manifest["verification"]["formats"]
    assert set(checked) == {"onnx", "onnx native"}
    assert checked["onnx native"]["greedy_agreement"] >= 0.9
    assert checked["onnx native"]["relative_error"] < 0.05


@pytest.mark.parametrize("threads", [-3, -1, 0, 100000])
def test_thread_counts_it_cannot_run_are_refused_before_anything_is_read(threads, artifacts):
    art = load_artifact(artifacts("qwen2", "int8"))
    with pytest.raises(ValueError,
                       match=rf"native backend: {threads} threads \(it runs 1 to 4096\)"):
        NativeBackend(art, threads)


@pytest.mark.parametrize("which", ["native", "onnxruntime"])
@pytest.mark.parametrize("threads", [-3, -1, 100000])
def test_load_refuses_thread_counts_beyond_the_machine_for_every_backend(which, threads, artifacts):
    """ONNX Runtime took --threads 100000 and spun at 4-5 GB RSS; the native loops corrupted the
    heap."""
    with pytest.raises(ConfigError,
                       match=rf"threads {threads}: give 1 to \d+ \(this machine's CPUs\)"):
        edgeds.load(artifacts("qwen2", "int8"), backend=which, threads=threads)


def test_infer_with_a_bad_thread_count_is_one_line_and_exit_2(tmp_path):
    from typer.testing import CliRunner

    from edgeds.cli.main import app

    (tmp_path / "in.jsonl").write_text('{"id": 1, "prompt": "x"}\n')
    r = CliRunner().invoke(app,
                           ["infer", "-i", str(tmp_path / "in.jsonl"), "-o",
                            str(tmp_path / "o.jsonl"), "--threads", "-3"])
    assert r.exit_code == 2
    assert r.output.strip().splitlines()[-1].startswith("edgeds: error: threads -3: give 1 to ")
    assert not (tmp_path / "o.jsonl").exists()


NEW_OK = dict(layers=2, hidden=64, heads=4, kv_heads=2, head_dim=16, inter=128, vocab=320, eps=1e-6,
              threads=2, use_amx=0)


@pytest.mark.parametrize("bad",
                         [dict(threads=-3), dict(threads=-1), dict(threads=0), dict(threads=100000),
                          dict(layers=0), dict(heads=3), dict(head_dim=8, heads=8), dict(hidden=96),
                          dict(heads=64, kv_heads=2, head_dim=16, hidden=1024), dict(inter=100),
                          dict(vocab=0), dict(eps=float("nan")), dict(eps=-1.0)])
def test_the_c_entry_point_refuses_what_its_loops_cannot_run(bad):
    """ed_new checks every count before it allocates (and Python is not the only possible
    caller)."""
    lib = native.library()
    ok = lib.ed_new(*NEW_OK.values())
    assert ok
    lib.ed_free(ok)
    assert not lib.ed_new(*{**NEW_OK, **bad}.values())


def test_the_c_setters_refuse_shapes_the_model_does_not_have_and_forward_refuses_a_partial_model():
    lib = native.library()
    m = lib.ed_new(*NEW_OK.values())
    w, scale = np.zeros((64, 128), np.int8), np.ones(128, np.float32)
    try:
        # qkv: 64 -> 128
        assert lib.ed_set_linear(m, 0, 0, w.ctypes.data, scale.ctypes.data, None, 64, 128) == 0
        # set twice
        assert lib.ed_set_linear(m, 0, 0, w.ctypes.data, scale.ctypes.data, None, 64, 128) == -1
        # o is 64 -> 64
        assert lib.ed_set_linear(m, 0, 1, w.ctypes.data, scale.ctypes.data, None, 64, 128) == -1
        # layer 2 of 2
        assert lib.ed_set_linear(m, 2, 0, w.ctypes.data, scale.ctypes.data, None, 64, 128) == -1
        assert lib.ed_set_linear(m, 0, 5, w.ctypes.data, scale.ctypes.data, None, 64, 128) == -1
        assert lib.ed_set_linear(m, 1, 0, None, scale.ctypes.data, None, 64, 128) == -1
        assert lib.ed_set_norms(m, 3, scale.ctypes.data, scale.ctypes.data) == -1
        assert lib.ed_set_rope(m, scale.ctypes.data, scale.ctypes.data, 0) == -1
        assert lib.ed_set_embedding(m, None, None, None) == -1
        ids, at = np.array([5], np.int64), np.zeros(1, np.int32)
        logits, k = np.zeros((32, 320), np.float32), np.zeros(2 * 2 * 8 * 16, np.float32)
        blocks = np.array([k.ctypes.data], np.uint64)
        rc = lib.ed_forward(m, 1, ids.ctypes.data, at.ctypes.data, at.ctypes.data, 1,
                            at.ctypes.data,
                            at.ctypes.data, 1, blocks.ctypes.data, blocks.ctypes.data, 1, 0, 1, 0,
                            logits.ctypes.data)
        assert rc == -4
    finally:
        lib.ed_free(m)


def test_a_tensor_index_that_points_outside_the_weight_file_is_refused(artifacts, tmp_path):
    import json
    import shutil

    art = tmp_path / "art"
    shutil.copytree(artifacts("qwen2", "int8"), art)
    index = json.loads((art / "tensors.json").read_text())
    index["layers"][1]["mlp"]["down"]["weight"]["offset"] = 10**9
    index["layers"][0]["o"]["weight"]["shape"] = [64, 65]
    (art / "tensors.json").write_text(json.dumps(index))
    with pytest.raises(ArtifactError,
                       match=r"tensors.json: layers\[0\].o.weight has shape \[64, 65\], "
                                            r"not \[64, 64\]"):
        NativeBackend(load_artifact(art, verify=False), 2)
    index["layers"][0]["o"]["weight"]["shape"] = [64, 64]
    (art / "tensors.json").write_text(json.dumps(index))
    with pytest.raises(ArtifactError,
                       match=r"tensors.json: layers\[1\].mlp.down.weight of 8192 bytes at "
                                            r"offset 1000000000 is not inside its file"):
        NativeBackend(load_artifact(art, verify=False), 2)
