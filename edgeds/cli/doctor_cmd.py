from __future__ import annotations

import json
from typing import Annotated

import typer

NAME = "doctor"


def command(
    artifact: Annotated[str | None, typer.Argument(help="Artifact folder to size against this machine.")] = None,
    profile: Annotated[str | None, typer.Option(help="Profile name (default: detected).")] = None,
    backend: Annotated[str | None, typer.Option(help="native | onnxruntime | openvino.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
):
    """Show the hardware, installed backends, and what edgeds would choose here, and why.

    Examples:
      edgeds doctor
      edgeds doctor r1-1.5b-int8 --json
    """
    from ..doctor import diagnose, format_report

    report = diagnose(artifact, profile, backend)
    typer.echo(json.dumps(report, indent=2) if as_json else format_report(report))
