"""Input records of a batch job: one JSONL line (or text line) -> a validated record or an error.

Every way a line can be wrong becomes a `BadRecord` with its line number and a reason; nothing
here raises on user input, so one bad line never stops a job.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from ..sampling import SamplingParams
from ..tokenizer import ROLES

MAX_LINE_BYTES = 8 << 20
OVERRIDES = {"max_new_tokens": int, "temperature": (int, float), "top_p": (int, float),
             "top_k": int, "min_p": (int, float), "repetition_penalty": (int, float), "seed": int}


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


def read_lines(f: BinaryIO) -> Iterator[tuple[int, bytes | None]]:
    """(line number, raw bytes) per line; None for a line over MAX_LINE_BYTES (skipped, not held)."""
    n = 0
    while True:
        chunk = f.readline(MAX_LINE_BYTES + 1)
        if not chunk:
            return
        n += 1
        if len(chunk) > MAX_LINE_BYTES and not chunk.endswith(b"\n"):
            while chunk and not chunk.endswith(b"\n"):
                chunk = f.readline(MAX_LINE_BYTES)
            yield n, None
            continue
        yield n, chunk


def parse_line(n: int, raw: bytes | None, defaults: SamplingParams, text_format: bool) -> Record | BadRecord | None:
    """A record, an error record, or None for a blank line."""
    if raw is None:
        return BadRecord(n, None, f"line longer than {MAX_LINE_BYTES >> 20} MiB")
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadRecord(n, None, f"invalid UTF-8 at byte {exc.start}")
    line = line.rstrip("\r\n")
    if not line.strip():
        return None
    if text_format:
        return Record(n, n, line, _seeded(defaults, n))
    try:
        obj = json.loads(line)
    except ValueError as exc:
        return BadRecord(n, None, f"malformed JSON: {exc}")
    if not isinstance(obj, dict):
        return BadRecord(n, None, "a record must be a JSON object")
    rid = obj.get("id")
    if rid is None:
        return BadRecord(n, None, "missing 'id'")
    if not isinstance(rid, (str, int)) or isinstance(rid, bool):
        return BadRecord(n, None, "'id' must be a string or an integer")
    has_prompt, has_messages = "prompt" in obj, "messages" in obj
    if has_prompt == has_messages:
        return BadRecord(n, rid, "a record needs exactly one of 'prompt' or 'messages'")
    if has_prompt:
        prompt = obj["prompt"]
        if not isinstance(prompt, str):
            return BadRecord(n, rid, "'prompt' must be a string")
        if not prompt.strip():
            return BadRecord(n, rid, "empty prompt")
    else:
        prompt = obj["messages"]
        problem = _check_messages(prompt)
        if problem:
            return BadRecord(n, rid, problem)
    try:
        params = _params(obj, _seeded(defaults, n))
    except (TypeError, ValueError) as exc:
        return BadRecord(n, rid, str(exc))
    return Record(n, rid, prompt, params)


def _seeded(defaults: SamplingParams, n: int) -> SamplingParams:
    # Each record's own generator: the job seed plus its line, so reruns sample the same tokens.
    return SamplingParams(**{**defaults.__dict__, "seed": defaults.seed + n})


def _check_messages(messages) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            return "each message needs a string 'content'"
        if m.get("role") not in ROLES:
            return f"unknown role {m.get('role')!r}; known: {', '.join(ROLES)}"
    if not any(m["content"].strip() for m in messages):
        return "empty prompt"
    return None


def _params(obj: dict, base: SamplingParams) -> SamplingParams:
    values = dict(base.__dict__)
    for key, types in OVERRIDES.items():
        if key in obj:
            v = obj[key]
            if isinstance(v, bool) or not isinstance(v, types):
                raise TypeError(f"'{key}' has the wrong type ({type(v).__name__})")
            values[key] = v
    if "stop" in obj:
        stop = obj["stop"]
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise TypeError("'stop' must be a string or a list of non-empty strings")
        values["stop"] = tuple(stop)
    params = SamplingParams(**values)
    params.validate()
    return params
