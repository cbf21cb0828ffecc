"""Freed small allocations go back to the system after a load (edgeds/heap.py)."""

import json
import subprocess
import sys

import pytest

from edgeds.heap import give_back_freed_heap

# Run in a fresh interpreter: a long test process's heap already holds free chunks that would
# serve these blocks, which blurs what the trim gives back.
CHILD = r"""
import ctypes, ctypes.util, json
from edgeds.heap import give_back_freed_heap

def rss_anon_mib():
    with open("/proc/self/status") as f:
        return int(next(x for x in f if x.startswith("RssAnon:")).split()[1]) / 1024

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
start = rss_anon_mib()
blocks = [libc.malloc(400) for _ in range(100_000)]  # 40 MB of heap, under mmap's threshold
for b in blocks:
    ctypes.memset(b, 1, 400)
grown = rss_anon_mib()
for i, b in enumerate(blocks):
    if i % 100:  # one block kept in each 40 KB: the heap's top cannot shrink past them
        libc.free(b)
freed = rss_anon_mib()
trimmed = give_back_freed_heap()
print(json.dumps({"start": start, "grown": grown, "freed": freed, "after": rss_anon_mib(),
                  "trimmed": trimmed}))
"""


def test_freed_small_blocks_leave_the_resident_set():
    if not give_back_freed_heap():
        pytest.skip("not glibc: no malloc_trim")
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         check=True).stdout
    m = json.loads(out.strip().splitlines()[-1])
    assert m["trimmed"] and m["grown"] - m["start"] > 30
    assert m["freed"] - m["grown"] > -5  # free alone keeps the pages
    assert m["freed"] - m["after"] > 0.6 * (m["grown"] - m["start"])
