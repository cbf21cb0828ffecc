from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..errors import UsageError

NAME = "compare"


def command(
    artifact_a: Annotated[str, typer.Argument(help="Artifact A (e.g. the one in production).")],
    artifact_b: Annotated[str, typer.Argument(help="Artifact B (e.g. a new export).")],
    input: Annotated[str, typer.Option("--input", "-i", help="JSONL prompts, as for infer.")],
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="JSON report here (default: compare.json beside the input's name).",
        show_default=False)] = None,
    plot: Annotated[str | None, typer.Option(
        help="PNG of the latency distributions (default: the report's name with .png).",
        show_default=False)] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Default per record.")] = 128,
    temperature: Annotated[float, typer.Option(help="0 means greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option()] = 1.0,
    top_k: Annotated[int, typer.Option()] = 0,
    seed: Annotated[int, typer.Option(help="Job seed; both sides sample with the same seeds.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Slots decoded together (default: the profile's).",
                                            show_default=False)] = 0,
    threads: Annotated[int, typer.Option(help="Threads for both (default: A's profile's).",
                                         show_default=False)] = 0,
    backend_a: Annotated[str | None, typer.Option(help="Backend of A (default: chosen).")] = None,
    backend_b: Annotated[str | None, typer.Option(help="Backend of B (default: chosen).")] = None,
    profile: Annotated[str | None, typer.Option(help="Profile name (default: detected).")] = None,
):
    """Compare two exports of one model on the same prompts: agreement and speed side by side.

    A runs, then B (each in a process of its own, same threads): exact-match rate of texts,
    greedy token agreement and first divergence, each one's outputs scored under the other
    (teacher-forced agreement and mean log-probability), tokens/s, TTFT and latency
    P50/P90/P99, peak RSS. Writes a table to stdout, a JSON report and a PNG plot.
    Artifacts of different models or tokenizers are refused.

    Examples:
      edgeds compare prod-int8 new-int4 --input prompts.jsonl
      edgeds compare r1-int8 r1-fp32 -i prompts.jsonl -o ab.json --temperature 0.7
    """
    from ..compare import compare, format_table
    from ..compare_plot import write_plot
    from ..engine import check_threads
    from ..sampling import SamplingParams

    defaults = SamplingParams(max_new_tokens, temperature, top_k, top_p, seed=seed)
    defaults.validate()
    check_threads(threads)
    if batch_size < 0:
        raise UsageError(f"--batch-size must be >= 1 (0: the profile's), not {batch_size}")
    if Path(input).is_dir() or not Path(input).exists():
        raise UsageError(f"input '{input}' is not a file")
    report = Path(output) if output else Path(input).with_suffix(".compare.json")
    png = Path(plot) if plot else report.with_suffix(".png")
    for name, p in (("output", report), ("plot", png)):
        if p.is_dir() or not p.parent.is_dir():
            raise UsageError(f"{name} '{p}': give a file path in an existing folder")
    result = compare(artifact_a, artifact_b, input, defaults, threads or None, backend_a,
                     backend_b, profile, batch_size or None,
                     log=lambda msg: typer.echo(f"edgeds: {msg}", err=True))
    for line in result["skipped"]:
        typer.echo(f"edgeds: skipped {line}", err=True)
    typer.echo(format_table(result))
    report.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    note = write_plot(result["latencies"], png, {"a": artifact_a, "b": artifact_b})
    if note:
        typer.echo(f"edgeds: note: {note}", err=True)
    typer.echo(f"edgeds: wrote {report} and {png}", err=True)
