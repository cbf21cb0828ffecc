"""Input records of a batch job: one JSONL line (or text line) -> a validated record or an error.

Every way a line can be wrong becomes a `BadRecord` with its line number, the field at fault
and a reason; nothing here raises on user input, so one bad line never stops a job.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from ..sampling import SamplingError, SamplingParams
from ..tokenizer import ROLES

DEFAULT_MAX_LINE_BYTES = 1 << 20
# After a line over the cap, its end is looked for this many times the cap further on; an
# input with none there (/dev/zero, a binary file) is not read any further.
SKIP_FACTOR = 16
MAX_DEPTH = 32  # JSON nesting: a record is an object of messages (depth 3); no job needs more
READ_CHUNK = 1 << 16
BOM = b"\xef\xbb\xbf"
OVERRIDES = {"max_new_tokens": int, "temperature": (int, float), "top_p": (int, float),
             "top_k": int, "min_p": (int, float), "repetition_penalty": (int, float), "seed": int}
_LINE_END = re.compile(rb"\r\n|\r|\n")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class Record:
    line: int
    id: str | int
    prompt: str | list[dict]
    params: SamplingParams


@dataclass
class BadRecord:
    line: int
    id: object
    error: str
    field: str | None = None


class LineReader:
    """(line number, raw bytes without the line end) per line of a binary stream.

    Any of LF, CRLF and CR ends a line. Chunks are taken as they arrive (`read1`), so a line
    piped in is handed on as soon as its end is read, and no line over `max_bytes` is held:
    it is handed on as None as soon as it passes the cap and the rest of it is skipped. When
    no line end follows within SKIP_FACTOR times the cap, reading stops (`stopped` says why)."""

    def __init__(self, f: BinaryIO, max_bytes: int = DEFAULT_MAX_LINE_BYTES):
        self.f, self.max_bytes = f, max_bytes
        self.stopped: str | None = None

    def __iter__(self) -> Iterator[tuple[int, bytes | None]]:
        read = getattr(self.f, "read1", self.f.read)
        n, parts, held, skipped = 1, [], 0, -1  # skipped >= 0: inside an over-long line
        after_cr = False
        while chunk := read(READ_CHUNK):
            pos = 0
            if after_cr and chunk[:1] == b"\n":
                pos = 1  # the LF of a CRLF split between two chunks
            after_cr = False
            for end in _LINE_END.finditer(chunk, pos):
                if skipped < 0:
                    if held + end.start() - pos > self.max_bytes:
                        yield n, None
                    else:
                        parts.append(chunk[pos:end.start()])
                        yield n, b"".join(parts)
                n, parts, held, skipped, pos = n + 1, [], 0, -1, end.end()
            after_cr = chunk.endswith(b"\r")
            rest = len(chunk) - pos
            if skipped >= 0:
                skipped += rest
                if skipped > SKIP_FACTOR * self.max_bytes:
                    self.stopped = (f"line {n} has no end within {skipped} bytes; "
                                    "the rest of the input was not read")
                    return
            elif held + rest > self.max_bytes:
                yield n, None
                parts, held, skipped = [], 0, held + rest
            elif rest:
                parts.append(chunk[pos:])
                held += rest
        if parts and skipped < 0:
            yield n, b"".join(parts)


def _text(n: int, raw: bytes) -> str | UnicodeDecodeError:
    if n == 1 and raw.startswith(BOM):
        raw = raw[len(BOM):]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc


def is_blank(n: int, raw: bytes | None) -> bool:
    """Whether parse_line skips this line (it yields no record)."""
    return raw is not None and isinstance(line := _text(n, raw), str) and not line.strip()


def parse_line(n: int, raw: bytes | None, defaults: SamplingParams, text_format: bool,
               max_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Record | BadRecord | None:
    """A record, an error record, or None for a blank line."""
    if raw is None:
        return BadRecord(n, None, f"line longer than {max_bytes} bytes (--max-line-bytes)")
    line = _text(n, raw)
    if isinstance(line, UnicodeDecodeError):
        return BadRecord(n, None, f"invalid UTF-8 at byte {line.start}")
    if not line.strip():
        return None
    if text_format:
        if _LONE_SURROGATE.search(line):  # only via JSON escapes; decoded text has none
            return BadRecord(n, n, "the line holds a lone surrogate", "prompt")
        return Record(n, n, line, record_params(defaults, n))
    try:
        obj = json.loads(line)
    except RecursionError:
        return BadRecord(n, None, f"JSON nested deeper than {MAX_DEPTH} levels")
    except ValueError as exc:
        return BadRecord(n, None, f"malformed JSON: {exc}")
    return parse_object(n, obj, defaults)


def parse_object(n: int | None, obj, defaults: SamplingParams) -> Record | BadRecord:
    """A parsed JSON line (or a row of a Ray dataset) -> a record or an error record."""
    if not isinstance(obj, dict):
        return BadRecord(n, None, "a record must be a JSON object")
    rid = obj.get("id")
    if rid is None:
        return BadRecord(n, None, "missing 'id'", "id")
    if not isinstance(rid, (str, int)) or isinstance(rid, bool):
        return BadRecord(n, None, "'id' must be a string or an integer", "id")
    if isinstance(rid, str) and _LONE_SURROGATE.search(rid):
        return BadRecord(n, rid, "'id' holds a lone surrogate (not valid Unicode)", "id")
    for key, value in obj.items():
        if _depth(value) > MAX_DEPTH - 1:
            return BadRecord(n, rid, f"'{key}' is nested deeper than {MAX_DEPTH} levels", key)
    has_prompt, has_messages = "prompt" in obj, "messages" in obj
    if has_prompt == has_messages:
        return BadRecord(n, rid, "a record needs exactly one of 'prompt' or 'messages'")
    if has_prompt:
        prompt, field = obj["prompt"], "prompt"
        problem = _check_prompt(prompt)
    else:
        prompt, field = obj["messages"], "messages"
        problem = _check_messages(prompt)
    if problem:
        return BadRecord(n, rid, problem, field)
    try:
        params = _params(obj, record_params(defaults, rid))
    except SamplingError as exc:
        return BadRecord(n, rid, str(exc), exc.field)
    return Record(n, rid, prompt, params)


def request_line(rec: Record) -> str:
    """The record as one self-contained JSONL line: every setting explicit, its own seed
    included, so that parse_line reads back the same record, and the same request digest,
    wherever it runs and whatever the defaults there."""
    p = rec.params
    obj = {"id": rec.id, "prompt" if isinstance(rec.prompt, str) else "messages": rec.prompt,
           **{key: getattr(p, key) for key in OVERRIDES}, "stop": list(p.stop)}
    return json.dumps(obj)  # ASCII: lone surrogates travel as their escapes


def record_params(defaults: SamplingParams, rid: str | int) -> SamplingParams:
    """The job's settings with this record's own seed: the job seed mixed with the id, so a
    record samples the same tokens wherever it stands in the input and whatever else it holds."""
    mix = hashlib.sha256(json.dumps([defaults.seed, rid]).encode()).digest()
    return SamplingParams(**{**defaults.__dict__, "seed": int.from_bytes(mix[:8], "little")})


def _depth(value, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of a parsed JSON value, counted no further than `limit`."""
    depth, level = 0, [value]
    while level and depth <= limit:
        depth += 1
        nxt = []
        for v in level:
            if isinstance(v, dict):
                nxt.extend(v.values())
            elif isinstance(v, list):
                nxt.extend(v)
        level = nxt
    return depth - 1 if not level else depth


def _check_prompt(prompt) -> str | None:
    if not isinstance(prompt, str):
        return "'prompt' must be a string"
    if not prompt.strip():
        return "empty prompt"
    if _LONE_SURROGATE.search(prompt):
        return "'prompt' holds a lone surrogate (not valid Unicode)"
    return None


def _check_messages(messages) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            return "each message needs a string 'content'"
        if m.get("role") not in ROLES:
            return f"unknown role {str(m.get('role'))[:40]!r}; known: {', '.join(ROLES)}"
        if _LONE_SURROGATE.search(m["content"]):
            return "a message's 'content' holds a lone surrogate (not valid Unicode)"
    if not any(m["content"].strip() for m in messages):
        return "empty prompt"
    return None


def _params(obj: dict, base: SamplingParams) -> SamplingParams:
    values = dict(base.__dict__)
    for key, types in OVERRIDES.items():
        if key in obj:
            v = obj[key]
            if isinstance(v, bool) or not isinstance(v, types):
                raise SamplingError(key, f"'{key}' has the wrong type ({type(v).__name__})")
            values[key] = v
    if "stop" in obj:
        stop = obj["stop"]
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise SamplingError("stop", "'stop' must be a string or a list of non-empty strings")
        if any(_LONE_SURROGATE.search(s) for s in stop):
            raise SamplingError("stop", "'stop' holds a lone surrogate (not valid Unicode)")
        values["stop"] = tuple(stop)
    params = SamplingParams(**values)
    params.validate()
    return params
