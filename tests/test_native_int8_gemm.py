"""The native decoder's int8 GEMM (int8_gemm.h; in the AVX2 build int8_avx2.h's sign trick on
vpmaddubsw, which saturates 16-bit pair sums unless its operands are kept within range) against
numpy's integer products: exact at the extremes a quantized row and an int8 weight can take
(activations 1 and 255, i.e. -127 and +127 around the zero point; weights -128 and 127), for
every row count the kernel cuts into blocks, on every build this CPU runs."""

from __future__ import annotations

import numpy as np
import pytest

from edgeds import native
from edgeds.hardware import detect

FLAGS = detect().flags
BUILDS = [b for b, (needs, _) in native.BUILDS.items() if set(needs) <= set(FLAGS)]

pytestmark = pytest.mark.skipif(not BUILDS or native.unavailable(FLAGS) is not None,
                                reason="this CPU runs neither build of the native decoder")


def gemm(build, a, w, scale):
    y = np.zeros((a.shape[0], w.shape[1]), np.float32)
    rc = native.library(build).ed_int8_gemm(a.ctypes.data, a.shape[0], w.ctypes.data,
                                            scale.ctypes.data, w.shape[0], w.shape[1],
                                            y.ctypes.data)
    assert rc == 0
    return y


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 9])
def test_int8_products_are_exact_at_the_extremes(build, rows):
    rng = np.random.default_rng(rows)
    K, N = 256, 128  # sums within +-4.2e6: exact in float32
    a = rng.choice(np.array([1, 255, 128, 200, 3], np.uint8), size=(rows, K), p=[.4, .4, .1, .05, .05])
    w = rng.choice(np.array([-128, 127, -127, 0, 5], np.int8), size=(K, N), p=[.3, .3, .3, .05, .05])
    a[0, :] = 255  # one row and one column at the largest sums either sign takes
    w[:, 3] = -128
    scale = np.ones(N, np.float32)
    scale[1::2] = 0.5
    want = (a.astype(np.int64) - 128) @ w.astype(np.int64) * scale.astype(np.float64)
    np.testing.assert_array_equal(gemm(build, a, w, scale), want.astype(np.float32))


def test_a_shape_the_kernel_does_not_take_is_refused():
    a = np.ones((1, 6), np.uint8)
    w = np.ones((6, 64), np.int8)
    y = np.zeros((1, 64), np.float32)
    assert native.library().ed_int8_gemm(a.ctypes.data, 1, w.ctypes.data,
                                         np.ones(64, np.float32).ctypes.data, 6, 64,
                                         y.ctypes.data) == -1
