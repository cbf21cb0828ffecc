"""Freed small allocations go back to the system after a load (edgeds/heap.py)."""

import ctypes
import ctypes.util

import pytest

from edgeds.heap import give_back_freed_heap


def rss_anon_mib() -> float:
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("RssAnon:"))
    return int(line.split()[1]) / 1024


def test_freed_small_blocks_leave_the_resident_set():
    if not give_back_freed_heap():
        pytest.skip("not glibc: no malloc_trim")
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(400) for _ in range(100_000)]  # 40 MB of heap, under mmap's threshold
    for b in blocks:
        ctypes.memset(b, 1, 400)
    for i, b in enumerate(blocks):
        if i % 100:  # one block kept in each 40 KB: the heap's top cannot shrink past them
            libc.free(b)
    before = rss_anon_mib()
    assert give_back_freed_heap()
    assert before - rss_anon_mib() > 20
    for b in blocks[::100]:
        libc.free(b)
