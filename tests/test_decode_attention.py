"""Decode attention (decoder.c's splits of 256 keys, merged in order) against numpy: causal
softmax attention of a few rows over float32 or float16 cached keys, for group sizes that take
every pass shape of its value sums (up to six heads a pass), and a head's bits whatever group
it is computed in."""

from __future__ import annotations

import numpy as np
import pytest

from edgeds import native
from edgeds.hardware import detect

pytestmark = pytest.mark.skipif(native.unavailable(detect().flags) is not None,
                                reason=str(native.unavailable(detect().flags)))
BLOCK = 64


def decode(q, k, v, p0):
    n, group, d = q.shape
    out = np.zeros_like(q)
    rc = native.library().ed_decode_tile(q.ctypes.data, k.ctypes.data, v.ctypes.data,
                                         int(k.dtype == np.float16), len(k) // BLOCK, n, p0, d,
                                         group, out.ctypes.data)
    assert rc == 0
    return out


def reference(q, k, v, p0):
    """In float64 over the cache's values as stored."""
    n, _, d = q.shape
    k, v = k.astype(np.float64), v.astype(np.float64)
    out = np.zeros(q.shape)
    for i in range(n):
        seen = p0 + i + 1
        s = q[i].astype(np.float64) @ k[:seen].T / np.sqrt(d)
        w = np.exp(s - s.max(-1, keepdims=True))
        out[i] = (w / w.sum(-1, keepdims=True)) @ v[:seen]
    return out


def case(d, group, n, p0, dtype, seed=0):
    rng = np.random.default_rng(seed + d + group)
    blocks = (p0 + n - 1) // BLOCK + 2
    k = (2 * rng.standard_normal((blocks * BLOCK, d))).astype(dtype)
    v = rng.standard_normal((blocks * BLOCK, d)).astype(dtype)
    k[p0 + n:] = np.nan  # never read: past the last row (a stale cache)
    v[p0 + n:] = np.nan
    q = (2 * rng.standard_normal((n, group, d))).astype(np.float32)
    return q, k, v


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("d,group,n,p0", [(128, 6, 1, 4500), (128, 6, 3, 700), (128, 7, 1, 300),
                                          (64, 8, 2, 257), (128, 5, 1, 1000), (80, 12, 1, 600),
                                          (64, 4, 8, 100), (128, 1, 1, 0), (32, 2, 1, 255)])
def test_decode_rows_are_causal_softmax_attention(d, group, n, p0, dtype):
    q, k, v = case(d, group, n, p0, dtype)
    want = reference(q, k, v, p0)
    got = decode(q, k, v, p0)
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_a_heads_attention_does_not_depend_on_the_heads_beside_it(dtype):
    """Seven heads go in passes of four and three, six in one, one alone: a head's value sums
    are its own, so it comes out the same bits in each."""
    q, k, v = case(128, 7, 2, 900, dtype, seed=3)
    seven = decode(q, k, v, 900)
    six = decode(np.ascontiguousarray(q[:, 1:]), k, v, 900)
    for h in range(7):
        alone = decode(np.ascontiguousarray(q[:, h:h + 1]), k, v, 900)
        np.testing.assert_array_equal(alone[:, 0], seven[:, h])
    np.testing.assert_array_equal(six, seven[:, 1:])
