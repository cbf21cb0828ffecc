"""`edgeds.ray.Predictor`: one edgeds engine per Ray Data actor, for `Dataset.map_batches`.

A batch's rows carry `id` and `prompt` or `messages` (and optionally the per-record settings
of an `edgeds infer` line, and `line`), or a `request` column holding a whole JSONL input line.
Each row is checked as `edgeds infer` checks a line: a bad row becomes an error row, never an
exception, so one bad prompt does not fail the dataset. Out come one row per row in: `id`,
`text`, `reasoning`, `finish_reason`, `prompt_tokens`, `completion_tokens`, `latency_s`,
`ttft_s`, `error`, `field`, `line`, `record` (the line `edgeds infer` would write, as JSON) and
`prefix_cache`: the prefix cache's counters over the whole batch (PrefixStats' fields, as JSON)
on the batch's first row, None on the others and where the engine has no prefix cache.

The whole batch is returned at once: an actor that dies mid-batch returns nothing of it, and
Ray retries the batch on a new actor.
"""

from __future__ import annotations

import json
import math
import os
import socket
from dataclasses import asdict, replace

import numpy as np

from edgeds import generate as gen
from edgeds.batch.digest import request_digest
from edgeds.batch.records import DEFAULT_MAX_LINE_BYTES, BadRecord, Record, parse_line, parse_object
from edgeds.batch.results import RecordFailed, error_record, prompt_ids, result_record
from edgeds.engine import load
from edgeds.errors import ArtifactError, ConfigError
from edgeds.sampling import SamplingParams

OUTPUT_COLUMNS = ("id", "text", "reasoning", "finish_reason", "prompt_tokens",
                  "completion_tokens", "latency_s", "ttft_s", "error", "field", "line", "record",
                  "prefix_cache")


class Predictor:
    def __init__(self, artifact: str | None = None, max_new_tokens: int = 256,
                 temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
                 min_p: float = 0.0, repetition_penalty: float = 1.0, seed: int = 0,
                 stop: str | list[str] | tuple[str, ...] = (), *,
                 engine_batch_size: int | None = None, truncate: bool = False,
                 timings: bool = True, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
                 profile: str | None = None, backend: str | None = None,
                 device: str | None = None, threads: int | None = None,
                 prefix_cache: bool | str = True, prefix_cache_size: int | None = None,
                 artifact_sha256: str | None = None,
                 context: int | None = None):
        """The job's settings (per-row columns override them, as an input line's fields do).
        `threads`: None takes the CPUs Ray gave this actor (`num_cpus` of map_batches).
        `artifact_sha256`, `context`: what the caller's request digests assume; an actor whose
        artifact or context differs (a node with another copy) refuses to start."""
        stop = (stop,) if isinstance(stop, str) else tuple(stop)
        self.defaults = SamplingParams(max_new_tokens, temperature, top_k, top_p, min_p,
                                       repetition_penalty, seed, stop)
        self.defaults.validate()
        self.engine_batch_size, self.truncate, self.timings = engine_batch_size, truncate, timings
        self.max_line_bytes = max_line_bytes
        # The files are checked against their sha256 here, once for this actor's life.
        self.engine = load(artifact, profile=profile, backend=backend, device=device,
                           threads=threads or actor_cpus(), prefix_cache=prefix_cache,
                           prefix_cache_size=prefix_cache_size)
        self.digest = self.engine.artifact.digest
        where = f"{self.engine.artifact.root} on {socket.gethostname()}"
        if artifact_sha256 is not None and self.digest != artifact_sha256:
            raise ArtifactError(f"{where} is another artifact (manifest sha256 {self.digest[:16]}"
                                f"..., expected {artifact_sha256[:16]}...): stage the same "
                                "artifact on every node")
        if context is not None and self.engine.context != context:
            raise ConfigError(f"{where} runs with a context of {self.engine.context}, not "
                              f"{context}: give every node the same --profile")

    def __call__(self, batch) -> dict[str, list]:
        rows = batch_rows(batch)
        prefix = self.engine.prefix
        before = replace(prefix.stats) if prefix is not None else None
        done: list[tuple[dict, gen.Finished | None]] = [None] * len(rows)  # type: ignore[list-item]
        requests = []
        for i, row in enumerate(rows):
            rec = self._record(row)
            if isinstance(rec, BadRecord):
                done[i] = error_record(rec.line, rec.id, rec.error, rec.field), None
                continue
            digest = request_digest(rec, self.digest, self.engine.context, self.truncate)
            try:
                ids = prompt_ids(self.engine, rec, self.truncate)
            except RecordFailed as failed:
                done[i] = error_record(rec.line, rec.id, failed.error, failed.field), None
                continue
            requests.append(gen.Request((i, rec, digest), ids, rec.params))
        for event in self.engine.run(requests, self.engine_batch_size):
            if isinstance(event, gen.Finished):
                i, rec, digest = event.key
                done[i] = result_record(self.engine, event, rec, digest, self.digest,
                                        self.timings), event
            elif isinstance(event, gen.Rejected):  # that request alone (generate.rejection)
                i, rec, _ = event.key
                done[i] = error_record(rec.line, rec.id, event.error), None
        out = _columns(done)
        if before is not None and rows:
            out["prefix_cache"][0] = json.dumps(asdict(prefix.stats.since(before)))
        return out

    def _record(self, row: dict) -> Record | BadRecord:
        line = row.get("line")
        if row.get("request") is not None:
            raw = row["request"]
            raw = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
            rec = parse_line(line, raw, self.defaults, False, self.max_line_bytes)
            return BadRecord(line, None, "empty request") if rec is None else rec
        fields = {k: v for k, v in row.items() if k not in ("line", "request") and v is not None}
        return parse_object(line, fields, self.defaults)


def actor_cpus() -> int | None:
    """The CPUs Ray gave this actor; None outside a Ray actor. Ray sets OMP_NUM_THREADS in its
    workers (to 1 for an actor without `num_cpus`), so the environment says nothing useful."""
    try:
        import ray
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    if not cpus:
        return None
    return min(max(int(cpus), 1), os.cpu_count() or 1)


def batch_rows(batch) -> list[dict]:
    """A Ray batch (a dict of columns, a pandas DataFrame or a pyarrow Table) as plain rows:
    Python values, a missing value (None or NaN) as None."""
    if hasattr(batch, "to_pylist"):
        rows = batch.to_pylist()
    elif hasattr(batch, "to_dict") and hasattr(batch, "columns"):
        rows = batch.to_dict("records")
    else:
        columns = {k: list(v) for k, v in batch.items()}
        n = len(next(iter(columns.values()), []))
        rows = [{k: v[i] for k, v in columns.items()} for i in range(n)]
    return [{k: _plain(v) for k, v in row.items()} for row in rows]


def _plain(value):
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.dtype != object \
            else [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None  # a column's missing value: this row does not set it
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _columns(done: list[tuple[dict, gen.Finished | None]]) -> dict[str, list]:
    out: dict[str, list] = {name: [] for name in OUTPUT_COLUMNS}
    for record, finished in done:
        usage = record.get("usage", {})
        values = {"id": record["id"], "text": record.get("text"),
                  "reasoning": record.get("reasoning"),
                  "finish_reason": record.get("finish_reason"),
                  "prompt_tokens": usage.get("prompt_tokens"),
                  "completion_tokens": usage.get("completion_tokens"),
                  "latency_s": None if finished is None else finished.latency_s,
                  "ttft_s": None if finished is None else finished.ttft_s,
                  "error": record.get("error"), "field": record.get("field"),
                  "line": record.get("line"), "record": json.dumps(record),
                  "prefix_cache": None}
        for name in OUTPUT_COLUMNS:
            out[name].append(values[name])
    return out
