from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

NAME = "infer"


def command(
    artifact: Annotated[str | None, typer.Argument(help="Artifact folder; omitted: the embedded default model.")] = None,
    input: Annotated[str | None, typer.Option("--input", "-i", help="JSONL (or text) input; '-' for stdin.")] = None,
    output: Annotated[str, typer.Option("--output", "-o", help="JSONL output; '-' for stdout. Resumed if it exists.")] = "-",
    input_format: Annotated[str, typer.Option(help="jsonl | text (one prompt per line, id = line number).")] = "jsonl",
    max_new_tokens: Annotated[int, typer.Option(help="Default per record.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 means greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option()] = 1.0,
    top_k: Annotated[int, typer.Option()] = 0,
    min_p: Annotated[float, typer.Option()] = 0.0,
    repetition_penalty: Annotated[float, typer.Option()] = 1.0,
    seed: Annotated[int, typer.Option(help="Base seed; each record samples with seed + its line number.")] = 0,
    stop: Annotated[list[str] | None, typer.Option(help="Stop string (repeatable).")] = None,
    batch_size: Annotated[int, typer.Option(help="Slots decoded together (default: the profile's).")] = 0,
    truncate: Annotated[bool, typer.Option(help="Keep the end of over-long prompts instead of failing them.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Start over instead of resuming.")] = False,
    fail_fast: Annotated[bool, typer.Option(help="Stop at the first failed record.")] = False,
    timings: Annotated[bool, typer.Option(help="Write latency_s per record (off: byte-identical reruns).")] = True,
    metrics: Annotated[str | None, typer.Option(help="Write the summary as JSON here.")] = None,
    profile: Annotated[str | None, typer.Option(help="Profile name (default: detected).")] = None,
    backend: Annotated[str | None, typer.Option(help="native | onnxruntime | openvino.")] = None,
    device: Annotated[str | None, typer.Option(help="Execution provider or OpenVINO device.")] = None,
    threads: Annotated[int, typer.Option(help="Threads (default: the profile's).")] = 0,
):
    """Run every prompt of a JSONL file through a model, resumably.

    Input lines: {"id": ..., "prompt": "..."} or {"id": ..., "messages": [...]}, with optional
    max_new_tokens, temperature, top_p, top_k, min_p, repetition_penalty, stop, seed.
    Output lines: id, text, reasoning (R1 models), finish_reason, usage, latency_s; or error.
    Rerunning the same command skips ids already in the output.

    Exit codes: 0 all records ok; 1 some records in the output failed (see their "error"),
    including ones from an earlier run; 2 bad
    arguments, artifact or settings; 130 interrupted (run again to resume).

    Examples:
      edgeds infer --input prompts.jsonl --output results.jsonl
      edgeds infer r1-1.5b-int8 -i prompts.jsonl -o results.jsonl --max-new-tokens 512
    """
    from ..batch import JobOptions, run_job
    from ..batch.progress import format_summary
    from ..default_model import default_artifact
    from ..engine import load
    from ..sampling import SamplingParams
    from .main import EXIT_INTERRUPTED, EXIT_OK, EXIT_RECORDS_FAILED

    if input is None:
        raise ValueError("--input is required (a JSONL file, or '-' for stdin)")
    if input_format not in ("jsonl", "text"):
        raise ValueError("--input-format must be jsonl or text")
    if input != "-" and not Path(input).is_file():
        raise ValueError(f"input file '{input}' does not exist")
    if artifact is None:
        artifact = str(default_artifact())
        typer.echo(f"edgeds: no model given; using the embedded default model ({artifact})", err=True)
    engine = load(artifact, profile=profile, backend=backend, device=device, threads=threads or None)
    d = engine.describe()
    batch = engine.batch_for(batch_size or None)
    typer.echo(f"edgeds: profile {d['profile']}, backend {d['backend']} ({', '.join(d['providers'])}), "
               f"{d['threads']} threads, batch {batch}", err=True)
    for line in d["advice"]:
        typer.echo(f"edgeds: note: {line}", err=True)
    if batch_size and batch < batch_size:
        typer.echo(f"edgeds: --batch-size {batch_size} lowered to {batch}: {engine.cap_reason()}", err=True)
    defaults = SamplingParams(max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, seed,
                              tuple(stop or ()))
    defaults.validate()
    opts = JobOptions(input, output, defaults, input_format == "text", batch_size or None, truncate,
                      overwrite, fail_fast, timings)
    stats = run_job(engine, opts)
    summary = stats.summary()
    typer.echo(format_summary(summary), err=True)
    if metrics:
        Path(metrics).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    sys.stdout.flush()
    if stats.interrupted:
        typer.echo("edgeds: interrupted; run the same command again to resume", err=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    raise typer.Exit(EXIT_RECORDS_FAILED if stats.failed or stats.skipped_failed else EXIT_OK)
