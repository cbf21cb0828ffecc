from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..errors import UsageError

NAME = "infer"


def command(
    artifact: Annotated[str | None, typer.Argument(
        help="Artifact folder; omitted: the embedded default model.")] = None,
    input: Annotated[str | None, typer.Option(
        "--input", "-i", help="JSONL (or text) input; '-' for stdin.")] = None,
    output: Annotated[str, typer.Option(
        "--output", "-o", help="JSONL output; '-' for stdout. Resumed if it exists.")] = "-",
    input_format: Annotated[str, typer.Option(
        help="jsonl | text (one prompt per line, id = line number).")] = "jsonl",
    max_new_tokens: Annotated[int, typer.Option(help="Default per record.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 means greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option()] = 1.0,
    top_k: Annotated[int, typer.Option()] = 0,
    min_p: Annotated[float, typer.Option()] = 0.0,
    repetition_penalty: Annotated[float, typer.Option()] = 1.0,
    seed: Annotated[int, typer.Option(
        help="Job seed; a record samples with it mixed with its id.")] = 0,
    stop: Annotated[list[str] | None, typer.Option(help="Stop string (repeatable).")] = None,
    batch_size: Annotated[int, typer.Option(
        help="Slots decoded together (default: the profile's).")] = 0,
    context: Annotated[int, typer.Option(
        help="Tokens a sequence may hold, prompt and answer (default: the profile's; at most the "
             "artifact's exported context).", show_default=False)] = 0,
    truncate: Annotated[bool, typer.Option(
        help="Cut over-long prompts to their opening (BOS, template start) and end, dropping the "
             "middle, instead of failing them.")] = False,
    max_line_bytes: Annotated[int, typer.Option(
        help="Longest input line; a longer one is an error record, never read whole.")] = 1 << 20,
    overwrite: Annotated[bool, typer.Option(help="Start over instead of resuming.")] = False,
    fail_fast: Annotated[bool, typer.Option(help="Stop at the first failed record.")] = False,
    timings: Annotated[bool, typer.Option(
        help="Write latency_s per record (off: byte-identical reruns).")] = True,
    metrics: Annotated[str | None, typer.Option(help="Write the summary as JSON here.")] = None,
    prometheus_file: Annotated[str | None, typer.Option(
        help="Prometheus text-format metrics, rewritten every 5 s (node_exporter textfile).",
        show_default=False)] = None,
    prometheus_port: Annotated[int | None, typer.Option(
        help="Serve Prometheus metrics on /metrics at this port (needs edgeds[metrics]).",
        show_default=False)] = None,
    prometheus_host: Annotated[str, typer.Option(
        help="Address --prometheus-port listens on.")] = "127.0.0.1",
    profile: Annotated[str | None, typer.Option(help="Profile name (default: detected).")] = None,
    backend: Annotated[str | None, typer.Option(help="native | onnxruntime | openvino.")] = None,
    device: Annotated[str | None, typer.Option(
        help="Execution provider or OpenVINO device.")] = None,
    threads: Annotated[int, typer.Option(help="Threads (default: the profile's).")] = 0,
    no_prefix_cache: Annotated[bool, typer.Option(
        "--no-prefix-cache", help="Prefill every prompt whole (default: reuse shared prefixes' "
        "KV cache blocks within the job where the backend can: `edgeds doctor` says).")] = False,
    prefix_cache: Annotated[str | None, typer.Option(
        "--prefix-cache", help="Folder that keeps prefix cache blocks for later runs and other "
        "processes (created if missing).")] = None,
    prefix_cache_size: Annotated[str, typer.Option(
        help="Most bytes --prefix-cache keeps (4G, 500M, ...); least recently used go first.")]
        = "4G",
    ray: Annotated[bool, typer.Option(
        "--ray", help="Run on Ray Data: one engine per worker, this process the only writer "
        "(needs edgeds[ray]).")] = False,
    ray_address: Annotated[str | None, typer.Option(
        help="Ray cluster to join ('auto': the one `ray start` made here; default: a local "
        "Ray over this machine's CPUs).", show_default=False)] = None,
    workers: Annotated[int, typer.Option(
        help="--ray: engines (Ray actors) to run; default one per node. --threads is each "
        "one's threads (default: its node's CPUs shared by the workers on it).")] = 0,
):
    """Run every prompt of a JSONL file through a model, resumably.

    Input lines: {"id": ..., "prompt": "..."} or {"id": ..., "messages": [...]}, with optional
    max_new_tokens, temperature, top_p, top_k, min_p, repetition_penalty, stop, seed.
    Output lines: id, text, reasoning (R1 models), finish_reason, usage, latency_s, ttft_s,
    line, request_digest, artifact_sha256, backend, settings (seed included); or id, line,
    field, error. OUTPUT.job.json: the job's settings, command line and versions.
    Rerunning the same command resumes: a record is kept when its id and request (prompt,
    settings, model) are unchanged; changed ones are redone (the old record moves to
    OUTPUT.replaced.jsonl) and failed ones retried. One process writes an output at a time.

    Exit codes: 0 all records ok; 1 some records failed (see their "error"); 2 bad arguments,
    artifact or settings, or the output is in use; 3 the output cannot be written (disk full,
    read-only: it ends on a whole record, rerun to resume); 130 interrupted (run again to
    resume).

    Examples:
      edgeds infer --input prompts.jsonl --output results.jsonl
      edgeds infer r1-1.5b-int8 -i prompts.jsonl -o results.jsonl --max-new-tokens 512
      edgeds infer r1-1.5b-int8 -i p.jsonl -o r.jsonl --prometheus-file /var/lib/node/edgeds.prom
      edgeds infer r1-1.5b-int8 -i p.jsonl -o r.jsonl --ray --workers 4 --threads 4
      edgeds infer /shared/r1-1.5b-int8 -i p.jsonl -o r.jsonl --ray --ray-address auto
    """
    from ..batch import JobOptions, run_job
    from ..batch.job import open_output
    from ..batch.metrics import MetricsPublisher
    from ..default_model import default_artifact
    from ..engine import load
    from ..sampling import SamplingParams

    # Until the job takes over signals, SIGTERM ends a load as Ctrl-C does (exit 130).
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        # Everything that can be wrong with the arguments is said before the model loads.
        defaults = SamplingParams(max_new_tokens, temperature, top_k, top_p, min_p,
                                  repetition_penalty, seed, tuple(stop or ()))
        defaults.validate()
        _check_arguments(input, output, input_format, batch_size, threads, max_line_bytes, metrics,
                         prometheus_file, prometheus_port, ray)
        store_bytes = _check_prefix_cache(prefix_cache, prefix_cache_size, no_prefix_cache)
        _check_ray(ray, ray_address, workers)
        if context < 0:
            raise UsageError(f"--context must be >= 2 (0: the profile's), not {context}")
        if ray and context:
            raise UsageError("--context does not work with --ray yet (the workers run the "
                             "profile's context)")
        opts = JobOptions(input, output, defaults, input_format == "text", batch_size or None,
                          truncate, overwrite, fail_fast, timings, max_line_bytes)
        if ray:
            from ..ray.cluster import import_ray

            import_ray()  # not installed: one line, before the output is touched
            with open_output(opts) as out, MetricsPublisher(
                    prometheus_file, prometheus_port, prometheus_host) as publisher:
                stats = _run_on_ray(opts, out, artifact, ray_address, workers, threads, profile,
                                    backend, device, prefix_cache or not no_prefix_cache,
                                    store_bytes, publisher)
            return _finish(stats, metrics)
        # locked: a second job on this output stops here; a port in use, before the model loads
        with open_output(opts) as out, \
                MetricsPublisher(prometheus_file, prometheus_port, prometheus_host) as publisher:
            if artifact is None:
                artifact = str(default_artifact())
                typer.echo("edgeds: no model given; using the embedded default model "
                           f"({artifact})", err=True)
            engine = load(artifact, profile=profile, backend=backend, device=device,
                          threads=threads or None, context=context or None,
                          prefix_cache=prefix_cache or not no_prefix_cache,
                          prefix_cache_size=store_bytes)
            _announce(engine, batch_size, out, output)
            stats = run_job(engine, opts, out, metrics=publisher)
        return _finish(stats, metrics)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _announce(engine, batch_size: int, out, output: str) -> None:
    """What the job runs with, on stderr before it starts: profile, backend, batch, context,
    the cache's memory, advice, a lowered --batch-size and a resume."""
    d = engine.describe()
    batch = engine.batch_for(batch_size or None)
    typer.echo(f"edgeds: profile {d['profile']}, backend {d['backend']} "
               f"({', '.join(d['providers'])}), {d['threads']} threads, batch {batch}, "
               f"context {d['context']} ({d['context_source']})", err=True)
    if engine.kv_tokens is not None:
        typer.echo(f"edgeds: KV cache in blocks: {engine.memory_note()}", err=True)
    for line in d["advice"]:
        typer.echo(f"edgeds: note: {line}", err=True)
    if batch_size and batch < batch_size:
        typer.echo(f"edgeds: --batch-size {batch_size} lowered to {batch}: "
                   f"{engine.cap_reason()}", err=True)
    if out.resumable:
        typer.echo(f"edgeds: resuming {output}: {out.resumable} records in it", err=True)


def _run_on_ray(opts, out, artifact, address, workers, threads, profile, backend, device,
                prefix_cache, prefix_cache_size, publisher=None):
    from ..ray.job import RayJob, RayOptions

    job = RayJob(opts, RayOptions(artifact, address, workers or None, threads or None, profile,
                                  backend, device, prefix_cache, prefix_cache_size))
    typer.echo(f"edgeds: {job.describe()}", err=True)
    if out.resumable:
        typer.echo(f"edgeds: resuming {opts.output}: {out.resumable} records in it", err=True)
    return job.run(out, metrics=publisher)


def _finish(stats, metrics: str | None):
    """The summary on stderr (and in --metrics), then the job's exit code."""
    from ..batch.progress import format_summary
    from .main import EXIT_INTERRUPTED, EXIT_OK, EXIT_RECORDS_FAILED

    summary = stats.summary()
    typer.echo(format_summary(summary), err=True)
    if stats.input_note:
        typer.echo(f"edgeds: input: {stats.input_note}", err=True)
    if metrics:
        Path(metrics).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    sys.stdout.flush()
    if stats.interrupted:
        typer.echo("edgeds: interrupted; run the same command again to resume", err=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    raise typer.Exit(EXIT_RECORDS_FAILED if stats.failed or stats.input_note else EXIT_OK)


def _interrupt(*_):
    raise KeyboardInterrupt


def _check_ray(ray: bool, address: str | None, workers: int) -> None:
    if not ray:
        for flag, value in (("--ray-address", address), ("--workers", workers or None)):
            if value is not None:
                raise UsageError(f"{flag} needs --ray")
        return
    if workers < 0:
        raise UsageError(f"--workers must be >= 1 (0: one per node), not {workers}")


def _check_prefix_cache(folder: str | None, size: str, off: bool) -> int:
    from ..prefix_store import parse_size

    if folder is not None and off:
        raise UsageError("--prefix-cache and --no-prefix-cache: give one")
    if folder is not None:
        p = Path(folder)
        if p.exists() and not p.is_dir():
            raise UsageError(f"--prefix-cache '{folder}' is a file; give a folder")
        if not p.parent.is_dir():
            raise UsageError(f"--prefix-cache '{folder}': its folder '{p.parent}' does not exist")
    return parse_size(size)


def _check_arguments(input: str | None, output: str, input_format: str, batch_size: int,
                     threads: int, max_line_bytes: int, metrics: str | None,
                     prometheus_file: str | None = None,
                     prometheus_port: int | None = None, ray: bool = False) -> None:
    from ..engine import check_threads

    if input is None:
        raise UsageError("--input is required (a JSONL file, or '-' for stdin)")
    if input_format not in ("jsonl", "text"):
        raise UsageError("--input-format must be jsonl or text")
    if batch_size < 0:
        raise UsageError(f"--batch-size must be >= 1 (0: the profile's), not {batch_size}")
    if ray:  # a worker's threads are checked against its node's CPUs (ray/cluster.py)
        if threads < 0:
            raise UsageError(f"--threads must be >= 1 (0: the default), not {threads}")
    else:
        check_threads(threads)  # before the output is touched; the rule edgeds.load applies
    if max_line_bytes < 1:
        raise UsageError(f"--max-line-bytes must be >= 1, not {max_line_bytes}")
    if prometheus_port is not None and not 0 < prometheus_port < 65536:
        raise UsageError(f"--prometheus-port must be 1 to 65535, not {prometheus_port}")
    if input != "-":
        if Path(input).is_dir():
            raise UsageError(f"input '{input}' is a folder, not a file")
        if not Path(input).exists():
            raise UsageError(f"input file '{input}' does not exist")
    for name, path in (("output", output), ("metrics", metrics),
                       ("prometheus-file", prometheus_file)):
        if path in (None, "-"):
            continue
        p = Path(path)
        if p.is_dir():
            raise UsageError(f"{name} '{path}' is a folder; give a file path")
        if not p.parent.is_dir():
            raise UsageError(f"{name} '{path}': its folder '{p.parent}' does not exist")
        if input != "-" and (p.resolve() == Path(input).resolve()
                             or (p.exists() and os.path.samefile(p, input))):
            raise UsageError(f"{name} '{path}' is the input; give another file")
