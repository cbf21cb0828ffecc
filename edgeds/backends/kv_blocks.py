"""The native dense backend's KV cache: blocks of BLOCK_TOKENS positions, taken as sequences grow.

The layout (decoder.c reads it; this is the one place it is written down for Python):
- A block holds BLOCK_TOKENS consecutive positions of one sequence, for every layer: its keys are
  one contiguous array [layers, kv_heads, BLOCK_TOKENS, head_dim] (float32 or float16) and its
  values another of the same shape under the same block id. Copying a block of positions in or
  out (a prefix cache) is `pool.keys(id)[...] = ...` and the same for `values(id)`.
- `table[slot, j]` is the id of the block holding positions [j * BLOCK_TOKENS, (j + 1) *
  BLOCK_TOKENS) of that slot's sequence, or -1. Blocks are taken when a sequence first reaches
  them and given back when its slot is released; nothing is moved when the table widens.
- Blocks live in chunks (numpy arrays of several blocks) that are never moved, so a block's
  address stays valid while the pool grows; `key_addresses` / `value_addresses` are what
  decoder.c indexes with the table.
- A block is reference counted: several slots' tables may hold one block (sequences sharing a
  prompt prefix, through the prefix cache's `PinnedBlock`), and it goes back to the free list
  when the last holder lets go. A shared block is read, never written: a slot about to write
  positions of a block others hold gets its own copy first (`BlockTables.own_from`). Sharing
  changes no arithmetic (the rows are the same bits), only how many times a decode step reads
  them from memory.
"""

from __future__ import annotations

import numpy as np

BLOCK_TOKENS = 64  # decoder.c's BLOCK
MIN_CHUNK = 4  # blocks allocated at once at least; a chunk is a quarter of the pool beyond that


class BlockPool:
    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype):
        self.block_shape = (layers, kv_heads, BLOCK_TOKENS, head_dim)
        self.dtype = np.dtype(dtype)
        self._keys: list[np.ndarray] = []  # one view per block, into its chunk
        self._values: list[np.ndarray] = []
        self.key_addresses = np.zeros(0, np.uint64)
        self.value_addresses = np.zeros(0, np.uint64)
        self.free: list[int] = []
        self.refs = np.zeros(0, np.int32)  # holders of each block; 0: free

    @property
    def block_bytes(self) -> int:
        """Bytes of one block's keys and values together."""
        return 2 * int(np.prod(self.block_shape)) * self.dtype.itemsize

    @property
    def size(self) -> int:
        return len(self._keys)

    def keys(self, block: int) -> np.ndarray:
        return self._keys[block]

    def values(self, block: int) -> np.ndarray:
        return self._values[block]

    @property
    def in_use(self) -> int:
        return self.size - len(self.free)

    def take(self) -> int:
        if not self.free:
            self._add_chunk(max(MIN_CHUNK, self.size // 4))
        block = self.free.pop()
        self.refs[block] = 1
        return block

    def hold(self, block: int) -> None:
        """One more holder of a block already taken."""
        if self.refs[block] < 1:
            raise RuntimeError(f"KV block {block} held while free")
        self.refs[block] += 1

    def give_back(self, blocks) -> None:
        for b in blocks:
            b = int(b)
            if self.refs[b] < 1:
                raise RuntimeError(f"KV block {b} given back twice")
            self.refs[b] -= 1
            if self.refs[b] == 0:
                self.free.append(b)

    def _add_chunk(self, n: int) -> None:
        first = self.size
        keys = np.zeros((n, *self.block_shape), self.dtype)
        values = np.zeros((n, *self.block_shape), self.dtype)
        self._keys += list(keys)
        self._values += list(values)
        self.key_addresses = np.concatenate(
            [self.key_addresses, np.array([k.ctypes.data for k in keys], np.uint64)])
        self.value_addresses = np.concatenate(
            [self.value_addresses, np.array([v.ctypes.data for v in values], np.uint64)])
        self.refs = np.concatenate([self.refs, np.zeros(n, np.int32)])
        self.free.extend(range(first + n - 1, first - 1, -1))  # lowest id taken first


class BlockTables:
    """Which blocks each slot's sequence holds; blocks come from, and go back to, the pool."""

    def __init__(self, pool: BlockPool, slots: int, capacity: int):
        self.pool = pool
        self.table = np.full((slots, blocks_for(capacity)), -1, np.int32)
        self.held = np.zeros(slots, np.int32)  # blocks taken by each slot, from column 0

    @property
    def max_blocks(self) -> int:
        return self.table.shape[1]

    def widen(self, capacity: int) -> None:
        """Room for `capacity` positions per slot; what the slots hold stays where it is."""
        extra = blocks_for(capacity) - self.max_blocks
        if extra > 0:
            self.table = np.pad(self.table, ((0, 0), (0, extra)), constant_values=-1)

    def reserve(self, slot: int, tokens: int) -> None:
        """Blocks for positions [0, tokens) of this slot."""
        need = blocks_for(tokens)
        if need > self.max_blocks:
            raise ValueError(f"{tokens} positions in a cache of {self.max_blocks * BLOCK_TOKENS}")
        for j in range(self.held[slot], need):
            self.table[slot, j] = self.pool.take()
        self.held[slot] = max(self.held[slot], need)

    def share(self, slot: int, j: int, block: int) -> None:
        """Block j of this slot becomes `block` (its positions' rows, the same bits: a cached
        prefix); one it held there goes back. j is at most one past the blocks it holds."""
        if not 0 <= j <= self.held[slot] or j >= self.max_blocks:
            raise ValueError(f"block {j} of a slot that holds {self.held[slot]}")
        self.pool.hold(block)
        if j < self.held[slot]:
            self.pool.give_back([self.table[slot, j]])
        self.table[slot, j] = block
        self.held[slot] = max(self.held[slot], j + 1)

    def own_from(self, slot: int, position: int) -> None:
        """Every block of this slot from the one holding `position` on is its own before it
        writes there: one another slot or the prefix cache also holds is copied first."""
        pool = self.pool
        for j in range(position // BLOCK_TOKENS, self.held[slot]):
            old = int(self.table[slot, j])
            if pool.refs[old] > 1:
                new = pool.take()
                pool.keys(new)[...] = pool.keys(old)
                pool.values(new)[...] = pool.values(old)
                pool.give_back([old])
                self.table[slot, j] = new

    def release(self, slot: int) -> None:
        self.pool.give_back(self.table[slot, :self.held[slot]])
        self.table[slot] = -1
        self.held[slot] = 0

    def release_all(self) -> None:
        for slot in range(len(self.held)):
            self.release(slot)


def blocks_for(tokens: int) -> int:
    return -(-tokens // BLOCK_TOKENS)


class PinnedBlock:
    """A pool block the prefix cache keeps: a reference of its own, so the block outlives the
    slot that computed it, and every slot loading it shares it (`BlockTables.share`) instead of
    copying its rows. `drop` gives the reference back."""

    __slots__ = ("pool", "id")

    def __init__(self, pool: BlockPool, block: int):
        pool.hold(block)
        self.pool, self.id = pool, block

    @property
    def nbytes(self) -> int:
        return self.pool.block_bytes

    def rows(self) -> np.ndarray:
        """A copy of its positions as kv_rows gives them: [k|v, layers, kv_heads, tokens, dim]."""
        return np.stack([self.pool.keys(self.id), self.pool.values(self.id)])

    def drop(self) -> None:
        if self.id >= 0:
            self.pool.give_back([self.id])
            self.id = -1
