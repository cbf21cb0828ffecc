"""Prompt attention in blocks (edgeds/native/flash_prefill.h) against numpy: one tile of query
rows over cached keys, its bf16 products, and a row's result whatever tile holds it."""

from __future__ import annotations

import numpy as np
import pytest

from edgeds import native
from edgeds.hardware import detect

pytestmark = pytest.mark.skipif(native.unavailable(detect().flags) is not None,
                                reason=str(native.unavailable(detect().flags)))
BLOCK = 64


def bf16(x: np.ndarray) -> np.ndarray:
    """float32 rounded to bf16 (nearest even), as float64."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return rounded.astype(np.uint32).view(np.float32).astype(np.float64)


def tile(q, k, v, p0, kernel):
    """kernel: 0 float32 FMAs, 1 vdpbf16ps where the CPU has it, 2 AMX tiles where granted."""
    n, group, d = q.shape
    out = np.zeros_like(q)
    rc = native.library().ed_prompt_tile(q.ctypes.data, k.ctypes.data, v.ctypes.data,
                                         len(k) // BLOCK, n, p0, d, group, kernel, out.ctypes.data)
    assert rc == 0
    return out


def reference(q, k, v, p0, rounded=True):
    """Causal softmax attention in float64 over queries, keys and values rounded to bf16 (the
    AVX-512 build's products) or as given (the AVX2 build's float32 products)."""
    n, _, d = q.shape
    r = bf16 if rounded else (lambda x: x.astype(np.float64))
    out = np.zeros(q.shape)
    for i in range(n):
        seen = p0 + i + 1
        s = r(q[i]) @ r(k[:seen]).T / np.sqrt(d)
        w = np.exp(s - s.max(-1, keepdims=True))
        out[i] = (w / w.sum(-1, keepdims=True)) @ r(v[:seen])
    return out


@pytest.mark.parametrize("d,group,n,p0", [(128, 6, 8, 100), (128, 6, 1, 150), (64, 2, 5, 60),
                                          (48, 3, 8, 184), (16, 1, 3, 0)])
def test_a_tile_is_causal_softmax_attention(d, group, n, p0):
    rng = np.random.default_rng(d + n)
    blocks = p0 // BLOCK + 2
    k = (2 * rng.standard_normal((blocks * BLOCK, d))).astype(np.float32)
    v = rng.standard_normal((blocks * BLOCK, d)).astype(np.float32)
    k[p0 + n:] = np.nan  # never read: past the tile's last row (a stale cache)
    v[p0 + n:] = np.nan
    q = (2 * rng.standard_normal((n, group, d))).astype(np.float32)
    float32_products = native.this_cpus_build() == "avx2"
    want = reference(q, k, v, p0, rounded=not float32_products)
    runs = [tile(q, k, v, p0, kernel) for kernel in (0, 1, 2)]
    for got in runs:
        # The weights are rounded to bf16 before they meet the values: about 2^-9 of each.
        bound = 1e-5 if float32_products else 4e-3
        assert np.abs(got - want).max() < bound * np.abs(want).max()
    # vdpbf16ps and its float32 copy: the same products in the same order, bit for bit.
    np.testing.assert_array_equal(runs[0], runs[1])
    # A row alone gives what it gave in the tile.
    for kernel in (0, 1, 2):
        alone = tile(np.ascontiguousarray(q[-1:]), k, v, p0 + n - 1, kernel)
        np.testing.assert_array_equal(alone[0], runs[kernel][-1])
