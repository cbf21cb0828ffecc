"""Writes the compact tokenizer (`edgeds/compact_tokenizer.py` reads it) from a tokenizer.json.

`tokenizers` spent most of an artifact's load parsing tokenizer.json (V3's JSON maps of 128k
tokens and merges; benchmarks/results/moe-xeon-amx-16t-8l.md); the compact form is arrays the
runtime reads without a parse. It covers the byte-level BPE tokenizers of the DeepSeek families
(V2/V3/R1, the Qwen2 and Llama distills, coder/llm); any other kind of tokenizer, or one whose
behaviour the translation does not reproduce on the sample text, keeps `tokenizers` alone.

The pre-tokenizers' Oniguruma patterns become Python `re` patterns. Their Unicode classes
(`\\p{L}`, `\\s`, bracket expressions) are not translated by rule: each is run through
`tokenizers` itself over every code point, and the characters it matched are written out, so
the classes are exactly the exporting library's (Python's own Unicode tables are older).
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import numpy as np

from edgeds.compact_tokenizer import PAIR_BITS, CompactTokenizer, byte_level_chars, char_bytes

COMPACT_FILE = "tokenizer.compact.npz"

# What the written tokenizer must encode and decode as `tokenizers` does before it is kept.
SAMPLE_TEXT = (
    "Hello, world! It's 2026-12-07; I'll we've they're DON'T ſK. 1234567 x=3.14159 "
    "def f(a, b):\n    return a**2 + b  # comment\n\n\n\t\tindent\r\n  trailing   \n"
    "中文测试：你好，世界！日本語のテキスト、カタカナ。한국어 텍스트. Ünïcödé café naïve "
    "Ελληνικά русский текст עברית العربية हिन्दी ไทย 🙂👍🏽 e\u0301 \u00a0nbsp \u3000ideo "
    "<think>reasoning</think> <|im_start|> {\"json\": [1, 2, 3]} https://example.com/a?b=c "
    "   leading spaces and 'quotes' \"double\" ``` code ``` ---- ==== \x1c\x1d \u2028 \ufeffbom "
    "٣٤٥ ①②③ Ⅻ ½ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𐐀𐐨 \U00010d40\U000105c0 " + "a" * 300 + " " + "ab " * 50
)


class Unsupported(Exception):
    """What the compact form cannot reproduce; the artifact then keeps `tokenizers` alone."""


def write_compact_tokenizer(tokenizer_json: Path, out: Path) -> str | None:
    """Write `out` (an .npz of plain arrays) and return None, or return why not and write
    nothing."""
    from tokenizers import Tokenizer

    try:
        arrays = _compact_arrays(json.loads(tokenizer_json.read_text(encoding="utf-8")))
        np.savez(out, **arrays)
        reference = Tokenizer.from_file(str(tokenizer_json))
        why = _differs(CompactTokenizer(out), reference)
    except Unsupported as exc:
        why = str(exc)
    except (KeyError, TypeError, ValueError, re.error) as exc:  # a tokenizer.json of a shape
        why = f"its tokenizer.json is not what the translation reads ({exc!r})"  # not met here
    if why is not None and out.exists():
        out.unlink()
    return why


def _differs(compact: CompactTokenizer, reference) -> str | None:
    texts = [SAMPLE_TEXT, *SAMPLE_TEXT.split(" "), *SAMPLE_TEXT.split("\n")]
    texts += [t.content for t in reference.get_added_tokens_decoder().values()]
    for text in texts:
        want = reference.encode(text, add_special_tokens=False).ids
        if compact.encode(text) != want:
            return f"its encoding of {text[:40]!r} differs from tokenizers'"
        for skip in (True, False):
            if compact.decode(want, skip) != reference.decode(want, skip_special_tokens=skip):
                return f"its decoding of {text[:40]!r} differs from tokenizers'"
    return None


def _compact_arrays(tok: dict) -> dict[str, np.ndarray]:
    model = tok.get("model") or {}
    if model.get("type") != "BPE":
        raise Unsupported(f"the model is {model.get('type')}, not BPE")
    for key in ("dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise Unsupported(f"the BPE model sets {key}")
    if model.get("byte_fallback"):
        raise Unsupported("the BPE model sets byte_fallback")
    splits = _pre_tokenizer(tok.get("pre_tokenizer"))
    _check_decoder(tok.get("decoder"))
    vocab: dict[str, int] = model["vocab"]
    added = tok.get("added_tokens") or []
    for a in added:
        if a.get("lstrip") or a.get("rstrip") or a.get("single_word"):
            raise Unsupported(f"added token {a['content']!r} strips or matches single words")

    n = max([*vocab.values(), *(a["id"] for a in added)]) + 1
    if n > 1 << PAIR_BITS:
        raise Unsupported(f"{n} tokens: a merge's key holds ids below {1 << PAIR_BITS}")
    char_byte = char_bytes()
    strings: list[str | None] = [None] * n
    for s, i in vocab.items():
        strings[i] = s
    for a in added:
        strings[a["id"]] = a["content"]
    blobs = [_token_bytes(s, char_byte) for s in strings]
    offsets = np.zeros(n + 1, np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    byte_ids = np.array([vocab.get(c, -1) for c in byte_level_chars()], np.int32)

    merges = []
    for m in model.get("merges", []):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        merges.append((vocab[a], vocab[b], vocab[a + b]))
    in_model = np.zeros(n, np.bool_)
    in_model[list(vocab.values())] = True
    spec = {
        "version": 1,
        "normalizer": _normalizer(tok.get("normalizer")),
        "splits": splits,
        "ignore_merges": bool(model.get("ignore_merges", False)),
        "added": [[a["content"], a["id"], bool(a["special"]), bool(a["normalized"])]
                  for a in added],
        # Model tokens that are not byte-level strings (V3's <｜begin▁of▁sentence｜> among its
        # vocabulary): token_to_id finds them by their text.
        "text_tokens": {s: i for s, i in vocab.items() if any(c not in char_byte for c in s)},
    }
    return {
        "spec": np.frombuffer(json.dumps(spec, ensure_ascii=False).encode(), np.uint8),
        "token_bytes": np.frombuffer(b"".join(blobs), np.uint8),
        "token_offsets": offsets,
        "byte_ids": byte_ids,
        "merges": np.array(merges, np.int32).reshape(-1, 3),
        "in_model": in_model,
    }


def _token_bytes(s: str | None, char_byte: dict[str, int]) -> bytes:
    """What the ByteLevel decoder makes of a token: its bytes where every character is one of
    the 256 byte characters, else its UTF-8 text."""
    if s is None:
        return b""
    if all(c in char_byte for c in s):
        return bytes(char_byte[c] for c in s)
    return s.encode("utf-8")


def _normalizer(norm: dict | None) -> str | None:
    parts = [] if norm is None else norm.get("normalizers", [norm]) \
        if norm.get("type") == "Sequence" else [norm]
    kinds = [p.get("type") for p in parts]
    if kinds == []:
        return None
    if kinds == ["NFC"]:
        return "NFC"
    raise Unsupported(f"the normalizer is {kinds}")


def _check_decoder(dec: dict | None) -> None:
    parts = [] if dec is None else dec.get("decoders", [dec]) \
        if dec.get("type") == "Sequence" else [dec]
    if [p.get("type") for p in parts] != ["ByteLevel"]:
        raise Unsupported(f"the decoder is {[p.get('type') for p in parts]}, not ByteLevel")


GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


def _pre_tokenizer(pre: dict | None) -> list[str]:
    """The pre-tokenizer as a list of Python patterns, each splitting every piece of the one
    before it and keeping the matches as pieces of their own; ByteLevel must come last."""
    parts = [] if pre is None else pre.get("pretokenizers", [pre]) \
        if pre.get("type") == "Sequence" else [pre]
    if not parts or parts[-1].get("type") != "ByteLevel":
        raise Unsupported("the pre-tokenizer does not end in ByteLevel")
    *splits, byte_level = parts
    if byte_level.get("add_prefix_space"):
        raise Unsupported("ByteLevel adds a prefix space")
    out = []
    for p in splits:
        kind = p.get("type")
        if kind == "Split":
            pattern = p.get("pattern", {})
            if "Regex" not in pattern or p.get("behavior") != "Isolated" or p.get("invert"):
                raise Unsupported(f"a Split pre-tokenizer is {p}, not an isolated regex")
            out.append(python_pattern(pattern["Regex"]))
        elif kind == "Digits":
            out.append(_class_of("digits", "") + ("" if p.get("individual_digits") else "+"))
        else:
            raise Unsupported(f"pre-tokenizer {kind}")
    if byte_level.get("use_regex", True):
        out.append(python_pattern(GPT2_PATTERN))
    return out


_ESCAPES_KEPT = set("rntfv\\.-+*?()[]{}|^$/'\"!#%&,:;<=>@_`~ ")
_CLASS_ESCAPES = set("sSdDwWhHpP")


def python_pattern(onig: str) -> str:
    """An Oniguruma pattern (the subset DeepSeek-family tokenizers use) as a Python `re` one."""
    out, i = [], 0
    while i < len(onig):
        c = onig[i]
        if c == "[":
            end = _bracket_end(onig, i)
            out.append(_class_of("regex", onig[i:end]))
            i = end
        elif c == "\\":
            e = onig[i + 1] if i + 1 < len(onig) else ""
            if e in _CLASS_ESCAPES:
                end = onig.index("}", i) + 1 if onig[i + 2:i + 3] == "{" else i + 2 + (e in "pP")
                out.append(_class_of("regex", onig[i:end]))
                i = end
            elif e in _ESCAPES_KEPT:
                out.append(onig[i:i + 2])
                i += 2
            else:
                raise Unsupported(f"pattern escape \\{e}")
        elif c in "$^":
            out.append(f"(?m:{c})")  # Oniguruma's anchors are a line's
            i += 1
        elif onig.startswith("(?", i) and not re.match(r"\(\?(i:|:|=|!|<=|<!)", onig[i:]):
            raise Unsupported(f"pattern group {onig[i:i + 4]}")
        elif c in "+*?}" and onig[i + 1:i + 2] == "+":
            raise Unsupported("a possessive quantifier")
        else:
            out.append(c)
            i += 1
    python = "".join(out)
    re.compile(python)
    return python


def _bracket_end(s: str, i: int) -> int:
    depth, j = 0, i
    while j < len(s):
        if s[j] == "\\":
            j += 2
            continue
        if s[j] == "[":
            depth += 1
        elif s[j] == "]":
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    raise Unsupported(f"an unclosed bracket in {s!r}")


@functools.cache
def _class_of(kind: str, what: str) -> str:
    """The characters a one-character Oniguruma class matches (kind "regex"), or that the Digits
    pre-tokenizer isolates (kind "digits"), found by running `tokenizers` over every code point;
    as a Python character class."""
    from tokenizers import Regex, pre_tokenizers

    if kind == "regex":
        if "&&" in what or "[:" in what:
            raise Unsupported(f"class {what}")
        oracle = pre_tokenizers.Split(Regex(f"(?:{what})+"), "removed")
    else:
        oracle = pre_tokenizers.Digits(individual_digits=False)
    ranges: list[tuple[int, int]] = []
    # Blocks of consecutive code points (no surrogates): a piece's offsets are then code points.
    # tokenizers splits a long string in more than linear time, so the blocks stay short.
    for lo, hi in ((0, 0xD800), (0xE000, 0x110000)):
        for base in range(lo, hi, 1 << 16):
            block = "".join(map(chr, range(base, min(base + (1 << 16), hi))))
            pieces = oracle.pre_tokenize_str(block)
            if kind == "regex":  # the pieces are the gaps between matches
                at = 0
                for _, (s, e) in pieces + [("", (len(block), len(block)))]:
                    if s > at:
                        ranges.append((base + at, base + s - 1))
                    at = e
            else:  # the pieces are runs of digits and runs of the rest
                ranges += [(base + s, base + e - 1) for p, (s, e) in pieces
                           if _digit_run(oracle, p)]
    return _as_class(ranges)


def _digit_run(oracle, piece: str) -> bool:
    """A run is digits when the Digits pre-tokenizer keeps it whole beside a letter."""
    return len(oracle.pre_tokenize_str("a" + piece[0])) == 2


def _as_class(ranges: list[tuple[int, int]]) -> str:
    if not ranges:
        raise Unsupported("a class that matches nothing")
    merged = [list(ranges[0])]
    for s, e in ranges[1:]:
        if s == merged[-1][1] + 1:
            merged[-1][1] = e
        else:
            merged.append([s, e])
    return "[" + "".join(_esc(s) if s == e else f"{_esc(s)}-{_esc(e)}" for s, e in merged) + "]"


def _esc(p: int) -> str:
    return f"\\x{p:02x}" if p < 0x100 else f"\\u{p:04x}" if p < 0x10000 else f"\\U{p:08x}"
