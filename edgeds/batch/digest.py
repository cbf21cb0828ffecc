"""What a result depends on, hashed: a resumed job recomputes a record only when it changed.

A request's digest covers its prompt or messages, the settings that shape its tokens, and what
runs it (the artifact, the context, truncation). Settings that cannot change a greedy result
(temperature's companions, the seed) are left out of a greedy request's digest, so changing
them does not redo a greedy job.
"""

from __future__ import annotations

import hashlib
import json

from .records import Record

SCHEME = 1  # bump when what a result depends on changes: every old record is then recomputed


def request_digest(record: Record, artifact_digest: str, context: int, truncate: bool) -> str:
    p = record.params
    settings: dict = {"max_new_tokens": p.max_new_tokens, "stop": list(p.stop),
                      "ignore_eos": p.ignore_eos}
    if not p.greedy:
        settings.update(temperature=float(p.temperature), top_k=p.top_k, top_p=float(p.top_p),
                        min_p=float(p.min_p), repetition_penalty=float(p.repetition_penalty),
                        seed=p.seed)
    body = {"scheme": SCHEME, "artifact": artifact_digest, "context": context,
            "truncate": truncate, "settings": settings,
            "prompt" if isinstance(record.prompt, str) else "messages": record.prompt}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))  # ASCII: surrogates too
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:32]
