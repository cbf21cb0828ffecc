"""The prefix KV cache: the cache rows of prompt prefixes, kept in blocks and reused.

A prompt is cut into blocks of `block_tokens` tokens. Block i is keyed by a hash chained over
every token up to its end and over a namespace (the artifact's digest, the backend's cache layout
and dtype, the layout version): two prompts that share a key share every token before it, so its
rows (which depend on those tokens alone) are the same, bit for bit, on the backend that computed
them. A sequence reuses every whole block it shares with the cache and prefills only the rest,
always at least its last token (whose logits it needs).

Blocks are reference counted by the blocks chained after them and evicted least recently used
within a byte budget, leaves first, so a chain never loses its head while its tail stays. With a
`PrefixStore` (prefix_store.py) blocks missing here are read from disk (all of a prompt's in one
index query, each checked once and then kept here) and new ones written there for later runs, at
the next `drain` (the generate loop's, between steps: a first token never waits on a write).

The generate loop calls `prefill` (or `prefill_chunk` for a prompt prefilled in chunks); the rows
are opaque arrays the backend gives and takes back (`kv_rows`, `load_kv`), so this module knows no
cache layout. A backend whose cache is itself in blocks of this size (`shared_block_tokens`) gives
its own blocks instead (`pin`): slots loading them share one copy, which a decode step then reads
once for the whole batch; such a block has `nbytes`, `rows()` (a copy, for the store) and `drop()`."""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from .errors import UsageError

LAYOUT_VERSION = 1  # of a block's key and contents; a change makes every stored block foreign
BLOCK_TOKENS = 32
MEMORY_CAP = 2 << 30  # the in-memory cache never takes more than this by default


def namespace(artifact_digest: str, cache_layout: str, block_tokens: int) -> bytes:
    """The root of every key: blocks of other weights, layouts or block sizes never match."""
    spec = {"artifact": artifact_digest, "layout": cache_layout, "block_tokens": block_tokens,
            "version": LAYOUT_VERSION}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).digest()


def block_keys(root: bytes, ids: np.ndarray, block_tokens: int) -> list[str]:
    """The chained key of each whole block of `ids`."""
    keys, h = [], root
    tokens = np.asarray(ids, "<i8")
    for start in range(0, len(tokens) - block_tokens + 1, block_tokens):
        h = hashlib.sha256(h + tokens[start:start + block_tokens].tobytes()).digest()
        keys.append(h.hex())
    return keys


@dataclass
class PrefixStats:
    lookups: int = 0  # sequences prefilled with the cache on
    hits: int = 0  # of those, the ones that reused at least one block
    tokens_reused: int = 0  # prompt tokens not prefilled
    tokens_prefilled: int = 0  # prompt tokens computed
    saved_s: float = 0.0  # tokens reused x the cheapest prefill seconds per token seen so far
    disk_hits: int = 0  # blocks read from the store
    blocks_written: int = 0  # blocks written to the store
    evicted: int = 0  # blocks dropped from memory for the budget

    def since(self, before: PrefixStats) -> PrefixStats:
        return PrefixStats(*(getattr(self, f) - getattr(before, f)
                             for f in self.__dataclass_fields__))

    def summary(self) -> dict:
        return {"lookups": self.lookups, "hits": self.hits, "tokens_reused": self.tokens_reused,
                "tokens_prefilled": self.tokens_prefilled,
                "prefill_s_saved_est": round(self.saved_s, 3), "disk_blocks_read": self.disk_hits,
                "disk_blocks_written": self.blocks_written, "evicted_blocks": self.evicted}


@dataclass
class _Block:
    rows: np.ndarray  # or the backend's pinned block (see the module's docstring)
    parent: str | None
    children: int = 0  # blocks chained after this one that are held here


@dataclass
class PrefixCache:
    root: bytes
    block_tokens: int = BLOCK_TOKENS
    budget_bytes: int = MEMORY_CAP
    store: object | None = None  # a PrefixStore, or None: this process only
    stats: PrefixStats = field(default_factory=PrefixStats)

    def __post_init__(self):
        if self.block_tokens < 1:
            raise UsageError(f"prefix cache blocks of {self.block_tokens} tokens")
        self.blocks: OrderedDict[str, _Block] = OrderedDict()  # least recently used first
        self.bytes = 0
        self._unwritten: list[tuple[str, str | None, np.ndarray]] = []  # for the store
        self.best_s_per_token = float("inf")  # the cheapest prefill call's rate: a low estimate

    def lookup(self, ids: np.ndarray) -> tuple[list[str], list[np.ndarray]]:
        """Keys of every whole block of `ids`, and the rows of its longest cached head (never the
        block holding the last token: that one is prefilled for its logits). Blocks past the
        ones held here come from the store in one read, and stay here after it."""
        keys = block_keys(self.root, ids, self.block_tokens)
        usable = (len(ids) - 1) // self.block_tokens
        rows = []
        for key in keys[:usable]:
            block = self.blocks.get(key)
            if block is None:
                break
            self.blocks.move_to_end(key)
            rows.append(block.rows)
        if len(rows) < usable and self.store is not None:
            # Eviction drops leaves first, so past the first block missing here every block of
            # the chain is missing too.
            for i, stored in enumerate(self.store.read_chain(keys[len(rows):usable]), len(rows)):
                self.stats.disk_hits += 1
                block = self._add(keys[i], keys[i - 1] if i else None, stored)
                if block is None:
                    break
                rows.append(block.rows)
            # Making room may have dropped a pinned block found above (its pool block is then
            # someone else's): the head ends before it.
            for n, r in enumerate(rows):
                if not isinstance(r, np.ndarray) and keys[n] not in self.blocks:
                    del rows[n:]
                    break
        return keys, rows

    def insert(self, keys: list[str], have: int, rows_of) -> None:
        """Keep blocks `have`.. of a prefilled sequence; rows_of(i) gives block i's rows. The
        store gets them at the next `drain`."""
        for i in range(have, len(keys)):
            if keys[i] in self.blocks:
                self.blocks.move_to_end(keys[i])
                continue
            if i and keys[i - 1] not in self.blocks:
                return  # its head was evicted meanwhile: a tail alone is never found
            rows = rows_of(i)
            if self._add(keys[i], keys[i - 1] if i else None, rows) is None:
                return
            if self.store is not None and self.store.writer:
                # A copy now: a pinned block may be dropped and reused before the next drain.
                self._unwritten.append((keys[i], keys[i - 1] if i else None, _host(rows)))

    def drain(self) -> None:
        """Write the blocks kept since the last drain to the store, and record when the blocks
        read from it were last used. The generate loop calls it between steps: no first token
        waits on the disk."""
        if self.store is None:
            return
        unwritten, self._unwritten = self._unwritten, []
        if unwritten:
            self.stats.blocks_written += self.store.write_many(unwritten)
        self.store.flush()

    def keep_shared(self, key: str, pinned) -> None:
        """Hold the backend's pinned block for a block held here as rows (read from the store):
        the slots loading it from now on share it. Same bytes, so the budget is unchanged."""
        block = self.blocks.get(key)
        if block is None or not isinstance(block.rows, np.ndarray):
            pinned.drop()
            return
        block.rows = pinned

    def _add(self, key: str, parent: str | None, rows: np.ndarray) -> _Block | None:
        if rows.nbytes > self.budget_bytes:
            _drop(rows)
            return None
        # The parent is never the one dropped to make room: a tail without its head is never
        # found, and would hold the budget until it aged out.
        while self.bytes + rows.nbytes > self.budget_bytes and self._evict_one(keep=parent):
            pass
        if self.bytes + rows.nbytes > self.budget_bytes or (
                parent is not None and parent not in self.blocks):
            _drop(rows)
            return None
        block = _Block(rows, parent)
        self.blocks[key] = block
        self.bytes += rows.nbytes
        if parent is not None:
            self.blocks[parent].children += 1
        return block

    def _evict_one(self, keep: str | None = None) -> bool:
        """Drop the least recently used block no other block chains after (never `keep`)."""
        for key, block in self.blocks.items():
            if block.children == 0 and key != keep:
                del self.blocks[key]
                self.bytes -= block.rows.nbytes
                _drop(block.rows)
                if block.parent is not None and block.parent in self.blocks:
                    self.blocks[block.parent].children -= 1
                self.stats.evicted += 1
                return True
        return False


def unsupported(backend, artifact=None, providers: list[str] | None = None) -> str | None:
    """Why this backend (its class or an instance) keeps no prefix cache, or None. Each backend
    says so itself: its `supports_prefix_cache` flag and, where that is false, its reason
    `no_prefix_cache` (an instance turns the flag off for its artifact or provider); a class
    asked about an artifact (on `providers`, where it has them) answers through
    `no_prefix_cache_for(artifact, providers)`, where it has one."""
    if getattr(backend, "supports_prefix_cache", False):
        check = getattr(backend, "no_prefix_cache_for", None)
        return check(artifact, providers) if check is not None and artifact is not None else None
    return getattr(backend, "no_prefix_cache", None) or (
        f"backend {getattr(backend, 'name', backend)} cannot load rows into a slot")


def supported(backend) -> bool:
    return unsupported(backend) is None


def prefill(backend, cache: PrefixCache, slots: list[int], prompts: list[np.ndarray]) -> np.ndarray:
    """`backend.prefill` that reuses cached blocks: last-token logits in the order given.

    Prompts that share blocks with another prompt of this call whose blocks are not cached yet
    wait for a second call, after the first has cached them: a batch of questions over one
    document computes the document once, not once per question."""
    b = cache.block_tokens
    order = sorted(range(len(prompts)), key=lambda i: prompts[i].tolist())
    looked = {i: cache.lookup(prompts[i]) for i in order}
    first, later = [], []
    for n, i in enumerate(order):
        shared = 0
        if n:
            prev = prompts[order[n - 1]]
            m = min(len(prev), len(prompts[i]), len(prompts[i]) - 1)
            diff = np.flatnonzero(prev[:m] != prompts[i][:m])
            shared = (int(diff[0]) if len(diff) else m) // b
        (later if shared > len(looked[i][1]) else first).append(i)
    out = np.empty((len(prompts), backend.vocab_size), np.float32)
    for group in (first, later):
        if not group:
            continue
        t0 = time.perf_counter()
        starts = []
        for i in group:
            # Looked up again right before loading: blocks cached since (the first group's, for
            # the later one), and none dropped between the lookup and the load.
            keys, rows = looked[i] = cache.lookup(prompts[i])
            _load(backend, cache, slots[i], 0, keys, rows)
            starts.append(len(rows) * b)
        logits = backend.prefill([slots[i] for i in group], [prompts[i] for i in group],
                                 starts=starts)
        out[group] = logits
        computed = sum(len(prompts[i]) - s for i, s in zip(group, starts))
        rate = (time.perf_counter() - t0) / computed
        cache.best_s_per_token = min(cache.best_s_per_token, rate)
        cache.stats.saved_s += sum(starts) * cache.best_s_per_token
        for i, start in zip(group, starts):
            keys, rows = looked[i]
            cache.stats.lookups += 1
            cache.stats.hits += bool(rows)
            cache.stats.tokens_reused += start
            cache.stats.tokens_prefilled += len(prompts[i]) - start
            cache.insert(keys, len(rows), lambda k, s=slots[i]: _block_of(backend, cache, s, k))
    return out


def prefill_chunk(backend, cache: PrefixCache, slot: int, ids: np.ndarray, start: int,
                  chunk: int, reused: int) -> tuple[int, np.ndarray, int]:
    """`backend.prefill_chunk` of a long prompt from `start` that first loads the cached blocks
    past it (another sequence may have computed them since this one's last chunk: questions over
    one long document share its chunks) and keeps the whole blocks it computed. `reused`: tokens
    this sequence reused so far. Returns where the prefill got to, the last row's logits (of the
    prompt's last token once it is there) and the tokens reused now."""
    b = cache.block_tokens
    keys, rows = cache.lookup(ids)
    skipped = max(len(rows) * b - start, 0)
    if skipped:
        first = start // b  # the block holding `start`: its rows from cache, the same bit for bit
        _load(backend, cache, slot, first, keys, rows[first:])
        start += skipped
    end = min(start + chunk, len(ids))
    t0 = time.perf_counter()
    row = backend.prefill_chunk(slot, ids[start:end], start, last=end == len(ids))
    cache.best_s_per_token = min(cache.best_s_per_token, (time.perf_counter() - t0) / (end - start))
    cache.stats.saved_s += skipped * cache.best_s_per_token
    cache.stats.tokens_reused += skipped
    cache.stats.tokens_prefilled += end - start
    reused += skipped
    if end == len(ids):
        cache.stats.lookups += 1
        cache.stats.hits += reused > 0
    cache.insert(keys[:end // b], len(rows), lambda k: _block_of(backend, cache, slot, k))
    return end, row, reused


def _shares(backend, cache: PrefixCache) -> bool:
    return getattr(backend, "shared_block_tokens", None) == cache.block_tokens


def _block_of(backend, cache: PrefixCache, slot: int, k: int):
    """What the cache keeps of a slot's block k: the backend's own block where it shares them,
    else a copy of its rows."""
    if _shares(backend, cache):
        return backend.pin(slot, k)
    b = cache.block_tokens
    return backend.kv_rows(slot, k * b, (k + 1) * b)


def _load(backend, cache: PrefixCache, slot: int, first: int, keys: list[str],
          rows: list) -> None:
    """Blocks first.. of a slot from `rows` (shared where they are the backend's own blocks,
    else copied straight into its cache); a block copied from the store's rows is then kept as
    the backend's own, for the next slot to share."""
    shares, b = _shares(backend, cache), cache.block_tokens
    for k, block in enumerate(rows, first):
        backend.load_kv(slot, k * b, block)
        if shares and isinstance(block, np.ndarray):
            cache.keep_shared(keys[k], backend.pin(slot, k))


def _host(rows):
    return rows if isinstance(rows, np.ndarray) else rows.rows()


def _drop(rows) -> None:
    if not isinstance(rows, np.ndarray):
        rows.drop()
