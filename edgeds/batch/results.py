"""What a job does with one valid record, wherever it runs: its prompt's token ids (or the
reason it fails), and the output record of its finished sequence or of its failure.

The local job and Ray's workers (edgeds.ray) both call these, so both write the same lines.
"""

from __future__ import annotations

import numpy as np

from .. import generate as gen
from ..engine import Engine
from ..sampling import SamplingParams
from .records import Record


class RecordFailed(Exception):
    """This record cannot run (its template raised, its prompt is over the context)."""

    def __init__(self, error: str, field: str | None):
        super().__init__(error)
        self.error, self.field = error, field


def error_record(line: int | None, rid, error: str, field: str | None = None) -> dict:
    record = {"id": rid, "line": line}
    if field:
        record["field"] = field
    record["error"] = error
    return record


def prompt_ids(engine: Engine, rec: Record, truncate: bool) -> np.ndarray:
    """The prompt's token ids, cut to its opening and end with `truncate`; RecordFailed if its
    template raises or it is over the context without `truncate`."""
    field = "prompt" if isinstance(rec.prompt, str) else "messages"
    try:
        ids = engine.encode(rec.prompt)
    except Exception as exc:  # a template may raise on odd conversations; that record fails
        raise RecordFailed(f"cannot tokenize: {exc}", field) from None
    if len(ids) >= engine.context:
        if not truncate:
            raise RecordFailed(f"prompt has {len(ids)} tokens, over the context of "
                               f"{engine.context} (pass --context up to the artifact's "
                               f"{engine.artifact.model.context_length}, or --truncate to keep "
                               "its opening and end)", field)
        ids = engine.truncate(ids, rec.params.max_new_tokens)
    return ids


def record_settings(params: SamplingParams) -> dict:
    """The settings a record was generated with, its own seed included (its audit trail)."""
    return {"max_new_tokens": params.max_new_tokens, "temperature": params.temperature,
            "top_p": params.top_p, "top_k": params.top_k, "min_p": params.min_p,
            "repetition_penalty": params.repetition_penalty, "stop": list(params.stop),
            "seed": params.seed}


def result_record(engine: Engine, done: gen.Finished, rec: Record, digest: str,
                  artifact_digest: str, timings: bool) -> dict:
    """The output line of a finished sequence (`artifact_digest`: of the manifest loaded)."""
    c = engine.complete(done)
    record = {"id": rec.id, "text": c.text}
    if engine.tokenizer.reasoning:
        record["reasoning"] = c.reasoning
    record["finish_reason"] = c.finish_reason
    record["usage"] = {"prompt_tokens": c.prompt_tokens, "completion_tokens": len(c.token_ids)}
    if timings:
        record["latency_s"] = round(done.latency_s, 4)
        record["ttft_s"] = round(done.ttft_s, 4)
    record["line"] = rec.line
    record["request_digest"] = digest
    # What an audit needs beside the digest: which model, which backend, which settings.
    record["artifact_sha256"] = artifact_digest
    record["backend"] = engine.choice.backend
    record["settings"] = record_settings(rec.params)
    return record
