"""Shared by the batch-job tests: run `edgeds infer` as a user does, read what it wrote; and
the generate loop's greedy tokens of a request alone against the same request in a batch."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

from conftest import REPO

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def infer_cmd(artifact, inp, out, *extra) -> list[str]:
    return [sys.executable, "-m", "edgeds.cli", "infer", str(artifact), "-i", str(inp), "-o",
            str(out), *map(str, extra)]


def infer(artifact, inp, out, *extra, **kw):
    return subprocess.run(infer_cmd(artifact, inp, out, *extra), capture_output=True, text=True,
                          env=ENV, timeout=300, **kw)


def read_out(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_prompts(path, n, start=0, **fields):
    with open(path, "w") as f:
        for i in range(start, start + n):
            f.write(json.dumps({"id": f"r{i}", "prompt": f"def f{i}(x):", **fields}) + "\n")


def run_in_process(engine, inp, out, **options):
    """run_job as the CLI runs it, in this process (for fault injection and speed)."""
    from edgeds.batch import JobOptions, run_job
    from edgeds.sampling import SamplingParams

    defaults = SamplingParams(max_new_tokens=options.pop("max_new_tokens", 4))
    opts = JobOptions(str(inp), str(out), defaults, **options)
    return run_job(engine, opts, progress_stream=io.StringIO())


def assert_alone_as_in_batch(backend, reqs, batch: int, context: int, first: int = 3) -> None:
    """reqs run together at `batch`, then each of the first `first` alone: the same tokens."""
    from edgeds import generate as gen

    batched = {e.key: e.token_ids for e in gen.run(backend, reqs, batch, context, set())
               if isinstance(e, gen.Finished)}
    for r in reqs[:first]:
        [alone] = [e for e in gen.run(backend, [r], 1, context, set())
                   if isinstance(e, gen.Finished)]
        assert alone.token_ids == batched[r.key]
