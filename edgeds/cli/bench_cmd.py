from __future__ import annotations

import json
from typing import Annotated

import typer

NAME = "bench"


def command(
    artifact: Annotated[
        str | None, typer.Argument(help="Artifact folder; omitted: the embedded default model.")
    ] = None,
    prompt_tokens: Annotated[int, typer.Option(help="Synthetic prompt length.")] = 128,
    new_tokens: Annotated[
        int, typer.Option(help="Tokens generated per prompt (EOS ignored).")
    ] = 64,
    batch_size: Annotated[
        int,
        typer.Option(help="Batch measured besides 1 (default: the profile's).", show_default=False),
    ] = 0,
    profile: Annotated[str | None, typer.Option(help="Profile name (default: detected).")] = None,
    backend: Annotated[str | None, typer.Option(help="native | onnxruntime | openvino.")] = None,
    threads: Annotated[
        int, typer.Option(help="Threads (default: the profile's).", show_default=False)
    ] = 0,
    context: Annotated[
        int,
        typer.Option(
            help="Context in force (default: the profile's; at most the artifact's).",
            show_default=False,
        ),
    ] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
):
    """Measure load time, time to first token, decode speed and memory on this machine.

    Examples:
      edgeds bench
      edgeds bench r1-1.5b-int8
      edgeds bench r1-1.5b-int8 --batch-size 8 --json
    """
    from ..bench import format_bench, run_bench

    result = run_bench(artifact, prompt_tokens, new_tokens, batch_size or None, profile, backend,
                       threads or None, context or None)
    typer.echo(json.dumps(result, indent=2) if as_json else format_bench(result))
