"""A byte-level BPE tokenizer read from the compact arrays the exporter writes
(export/compact_tokenizer.py), encoding and decoding as `tokenizers` does with the
tokenizer.json they came from (the exporter checks that before it keeps them).

Reading arrays skips the JSON parse that was most of an artifact's load
(benchmarks/results/moe-xeon-amx-16t-8l.md). The file is an .npz of plain arrays, read with
`allow_pickle=False`; its patterns are data for `re`, never code.
"""

from __future__ import annotations

import bisect
import heapq
import json
import re
import unicodedata
from functools import cache
from pathlib import Path

import numpy as np

from .errors import ArtifactError

PAIR_BITS = 20  # a merge's key: left id << PAIR_BITS | right id (the exporter checks the ids fit)
_WORD_CACHE = 1 << 16
_LONG_WORD = 48  # symbols; longer words merge through a heap instead of rescanning


@cache
def byte_level_chars() -> tuple[str, ...]:
    """GPT-2's printable stand-ins for the 256 bytes: byte b is written as the b-th of these."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = iter(range(256, 512))
    return tuple(chr(b) if b in keep else chr(next(extra)) for b in range(256))


@cache
def char_bytes() -> dict[str, int]:
    """byte_level_chars inverted: the byte each stand-in character writes."""
    return {c: b for b, c in enumerate(byte_level_chars())}


def isolated(rx: re.Pattern, text: str) -> list[str]:
    """`text` cut at rx's matches, each match a piece of its own (tokenizers' Split with
    behavior "Isolated"); an empty match cuts nothing."""
    pieces, last = [], 0
    for m in rx.finditer(text):
        s, e = m.span()
        if s == e:
            continue
        if s > last:
            pieces.append(text[last:s])
        pieces.append(text[s:e])
        last = e
    if last < len(text):
        pieces.append(text[last:])
    return pieces


class CompactTokenizer:
    def __init__(self, path: Path):
        name = Path(path).name
        try:
            with np.load(path, allow_pickle=False) as z:
                spec = json.loads(bytes(z["spec"]).decode("utf-8"))
                if not isinstance(spec, dict) or spec.get("version") != 1:
                    version = spec.get("version") if isinstance(spec, dict) else None
                    raise ArtifactError(f"{name}: compact tokenizer version {version} is not 1; "
                                        "export the artifact again")
                blob, offsets = z["token_bytes"].tobytes(), z["token_offsets"].tolist()
                byte_ids, merges, in_model = z["byte_ids"], z["merges"], z["in_model"]
            self._blob, self._offsets, self._in_model = blob, offsets, in_model
            self._byte_ids = byte_ids.tolist()
            keys = (merges[:, 0].astype(np.int64) << PAIR_BITS) | merges[:, 1]
            self._ranks = dict(zip(keys.tolist(), range(len(merges))))
            self._merged = merges[:, 2].tolist()
            self._ignore_merges = spec["ignore_merges"]
            self._nfc = spec["normalizer"] == "NFC"
            self._splits = [re.compile(p) for p in spec["splits"]]
            self._added = {content: i for content, i, _, _ in spec["added"]}
            self._special = {i for _, i, special, _ in spec["added"] if special}
            self._text_tokens = spec["text_tokens"]
        except (OSError, ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError,
                re.error) as exc:
            raise ArtifactError(f"{name}: not a compact tokenizer ({exc})") from None
        self._raw_added = _alternation([c for c, _, _, norm in spec["added"] if not norm])
        self._norm_added = _alternation([self._normalize(c) for c, _, _, norm in spec["added"]
                                         if norm])
        self._norm_ids = {self._normalize(c): i for c, i, _, norm in spec["added"] if norm}
        self._words: dict[str, tuple[int, ...]] = {}
        self._vocab: dict[bytes, int] | None = None  # built on first need (ignore_merges)

    def token_to_id(self, token: str) -> int | None:
        if token in self._added:
            return self._added[token]
        if token in self._text_tokens:
            return self._text_tokens[token]
        char_byte = char_bytes()
        if not all(c in char_byte for c in token):
            return None
        # A scan of the blob for a token whose bytes these are (the vocabulary's map is built
        # only where encoding needs it).
        raw, blob, off = bytes(char_byte[c] for c in token), self._blob, self._offsets
        at = blob.find(raw)
        while at >= 0:
            i = bisect.bisect_left(off, at)  # ids without bytes share an offset: look past them
            while i < len(off) - 1 and off[i] == at:
                if off[i + 1] == at + len(raw) and self._in_model[i]:
                    return i
                i += 1
            at = blob.find(raw, at + 1)
        return None

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece, tid in _split(self._raw_added, text, self._added):
            if tid is not None:
                ids.append(tid)
                continue
            for part, pid in _split(self._norm_added, self._normalize(piece), self._norm_ids):
                if pid is not None:
                    ids.append(pid)
                    continue
                for word in self._pre_tokenize(part):
                    ids += self._word_ids(word)
        return ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        blob, off = self._blob, self._offsets
        n, skip = len(off) - 1, self._special if skip_special_tokens else ()
        return b"".join([blob[off[i]:off[i + 1]] for i in map(int, ids)
                         if 0 <= i < n and i not in skip]).decode("utf-8", "replace")

    def _normalize(self, text: str) -> str:
        return unicodedata.normalize("NFC", text) if self._nfc else text

    def _pre_tokenize(self, text: str) -> list[str]:
        pieces = [text]
        for rx in self._splits:
            pieces = [q for p in pieces for q in isolated(rx, p)]
        return pieces

    def _word_ids(self, word: str) -> tuple[int, ...]:
        ids = self._words.get(word)
        if ids is None:
            raw = word.encode("utf-8")
            whole = self._model_vocab().get(raw) if self._ignore_merges else None
            if whole is not None:
                ids = (whole,)
            else:
                syms = [t for t in map(self._byte_ids.__getitem__, raw) if t >= 0]
                ids = tuple(self._merge(syms) if len(syms) <= _LONG_WORD
                            else self._merge_long(syms))
            if len(self._words) >= _WORD_CACHE:
                self._words.clear()
            self._words[word] = ids
        return ids

    def _merge(self, syms: list[int]) -> list[int]:
        """The lowest-ranked adjacent pair merges first, the leftmost of equal ones."""
        ranks, merged = self._ranks, self._merged
        while len(syms) > 1:
            best = at = None
            for i in range(len(syms) - 1):
                r = ranks.get(syms[i] << PAIR_BITS | syms[i + 1])
                if r is not None and (best is None or r < best):
                    best, at = r, i
            if best is None:
                break
            syms[at:at + 2] = (merged[best],)
        return syms

    def _merge_long(self, syms: list[int]) -> list[int]:
        """_merge's order for long words: a heap of (rank, position) over a linked list."""
        ranks, merged, n = self._ranks, self._merged, len(syms)
        nxt, prev = list(range(1, n + 1)), list(range(-1, n - 1))
        nxt[-1] = -1
        heap = [(r, i) for i in range(n - 1)
                if (r := ranks.get(syms[i] << PAIR_BITS | syms[i + 1])) is not None]
        heapq.heapify(heap)
        alive = [True] * n
        while heap:
            r, i = heapq.heappop(heap)
            j = nxt[i]
            if not alive[i] or j < 0 or ranks.get(syms[i] << PAIR_BITS | syms[j]) != r:
                continue  # a pair some earlier merge took apart
            syms[i], alive[j] = merged[r], False
            nxt[i] = nxt[j]
            if nxt[j] >= 0:
                prev[nxt[j]] = i
            for a, b in ((prev[i], i), (i, nxt[i])):
                if a >= 0 and b >= 0:
                    r2 = ranks.get(syms[a] << PAIR_BITS | syms[b])
                    if r2 is not None:
                        heapq.heappush(heap, (r2, a))
        out, i = [], 0
        while i >= 0:
            out.append(syms[i])
            i = nxt[i]
        return out

    def _model_vocab(self) -> dict[bytes, int]:
        if self._vocab is None:
            blob, off = self._blob, self._offsets
            ids = np.flatnonzero(self._in_model).tolist()
            self._vocab = {blob[off[i]:off[i + 1]]: i for i in ids}
            for i in self._text_tokens.values():  # those are found by their text
                self._vocab.pop(blob[off[i]:off[i + 1]], None)
        return self._vocab


def _alternation(tokens: list[str]) -> re.Pattern | None:
    """Longest first: at the leftmost place a token starts, the longest one there wins, as in
    tokenizers' leftmost-longest matching of added tokens."""
    if not tokens:
        return None
    return re.compile("|".join(map(re.escape, sorted(set(tokens), key=len, reverse=True))))


def _split(rx: re.Pattern | None, text: str, ids: dict[str, int]):
    """(piece, None) for the text between matches, (token, id) for each match."""
    if rx is None:
        if text:
            yield text, None
        return
    last = 0
    for m in rx.finditer(text):
        if m.start() > last:
            yield text[last:m.start()], None
        yield m.group(), ids[m.group()]
        last = m.end()
    if last < len(text):
        yield text[last:], None
