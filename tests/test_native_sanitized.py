"""The native decoder built with AddressSanitizer and UndefinedBehaviorSanitizer, and the native
backend's tests run on that build in a child process. Python is not built with ASan, so its
runtime is preloaded. The whole native suite by hand (about a minute on two cores):

    EDGEDS_NATIVE_SANITIZE=address,undefined LD_PRELOAD=$(gcc -print-file-name=libasan.so) \\
        ASAN_OPTIONS=detect_leaks=0 python -m pytest tests/test_native_backend.py \\
        tests/test_native_mla.py

Leak checks are off: the interpreter itself leaves memory behind at exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeds import native
from edgeds.hardware import detect

HERE = Path(__file__).resolve().parent
# The tests that run the C code; those of transformers parity and of broken compilers add nothing
# here.
SELECTION = "not transformers and not compiler and not build and not verify and not float_mode"
# mla_moe.c: prefill (decompressed attention) and decode (absorbed, chunked) at batch 1 and 64,
# slots refilled, a grown cache, refused input.
MLA_SELECTION = "bit_identical or grown or bad_input"
# test_native_activations.py's bit_identical: decoder.c's two activation planes at batch 1 and 64
# (their rows twice the bytes, padded to AMX's blocks where granted).


def _asan_runtime() -> str | None:
    cc = native.compiler()
    if cc is None:
        return None
    found = subprocess.run([*cc.split(), "-print-file-name=libasan.so"], capture_output=True,
                           text=True).stdout.strip()
    return found if os.path.isabs(found) and os.path.exists(found) else None


pytestmark = [
    pytest.mark.skipif(native.unavailable(detect().flags) is not None,
                       reason="no native decoder here"),
    pytest.mark.skipif(_asan_runtime() is None,
                       reason="the compiler has no AddressSanitizer runtime"),
]


def _sanitized(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGEDS_NATIVE_SANITIZE": "address,undefined",
           "LD_PRELOAD": _asan_runtime(),
           "ASAN_OPTIONS": "detect_leaks=0", "EDGEDS_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          cwd=HERE.parent, timeout=600)


@pytest.mark.parametrize("tests, selection", [("test_native_backend.py", SELECTION),
                                              ("test_native_mla.py", MLA_SELECTION),
                                              ("test_flash_prefill.py", "tile"),
                                              ("test_native_activations.py", "bit_identical")])
def test_the_native_tests_pass_under_address_and_undefined_behaviour_sanitizers(tests, selection,
                                                                               tmp_path):
    run = _sanitized(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", str(HERE / tests),
                      "-k", selection, "--basetemp", str(tmp_path / "t")], tmp_path)
    report = run.stdout + run.stderr
    assert "Sanitizer" not in report, report[-4000:]
    assert run.returncode == 0, report[-4000:]
    assert " passed" in report and " failed" not in report
    built = list((tmp_path / "cache" / "native").glob("decoder-*.so"))
    assert len(built) == 1  # the sanitized build, not the user's library


def test_the_sanitized_build_catches_a_write_past_a_buffer(tmp_path):
    """The harness is live: a logits buffer one row short (the Python side never passes one) is
    reported by AddressSanitizer and ends the process."""
    script = """
import numpy as np
from edgeds import native
lib = native.library()
m = lib.ed_new(1, 64, 4, 2, 16, 128, 64, 1e-6, 1, 0)
w, one = np.ones((128, 128), np.int8), np.ones(128, np.float32)
for which, (k, n) in enumerate([(64, 128), (64, 64), (64, 128), (64, 128), (128, 64)]):
    assert lib.ed_set_linear(m, 0, which, w.ctypes.data, one.ctypes.data, None, k, n) == 0
assert lib.ed_set_linear(m, -1, 0, w.ctypes.data, one.ctypes.data, None, 64, 64) == 0
assert lib.ed_set_norms(m, 0, one.ctypes.data, one.ctypes.data) == 0
assert lib.ed_set_norms(m, -1, one.ctypes.data, None) == 0
rope = np.ones((4, 8), np.float32)
assert lib.ed_set_rope(m, rope.ctypes.data, rope.ctypes.data, 4) == 0
table, scales = np.ones((64, 64), np.int8), np.ones(64, np.float32)
assert lib.ed_set_embedding(m, table.ctypes.data, scales.ctypes.data, None) == 0
ids, at, rows = np.array([1, 2], np.int64), np.zeros(2, np.int32), np.array([0, 1], np.int32)
slots = np.array([0, 1], np.int32)
cache = np.zeros((2, 1, 2, 64, 16), np.float32)  # two blocks of [layers, kv_heads, 64, head_dim]
blocks = np.array([cache[0].ctypes.data, cache[1].ctypes.data], np.uint64)
block_table = np.array([[0], [1]], np.int32)  # `table` stays the embedding the library reads
short = np.zeros((1, 64), np.float32)
lib.ed_forward(m, 2, ids.ctypes.data, slots.ctypes.data, at.ctypes.data, 2,
               rows.ctypes.data, block_table.ctypes.data, 1, blocks.ctypes.data, blocks.ctypes.data,
               2, 0, 2, 0,
               short.ctypes.data)
print("not caught")
"""
    run = _sanitized(["-c", script], tmp_path)
    assert "not caught" not in run.stdout
    assert "AddressSanitizer: heap-buffer-overflow" in run.stderr, run.stderr[-3000:]
