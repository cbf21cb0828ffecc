from __future__ import annotations

import json
from typing import Annotated

import typer

from ..errors import UsageError

NAME = "doctor"


def command(
    artifact: Annotated[
        str | None, typer.Argument(help="Artifact folder to size against this machine.")
    ] = None,
    profile: Annotated[str | None, typer.Option(help="Profile name (default: detected).")] = None,
    backend: Annotated[str | None, typer.Option(help="native | onnxruntime | openvino.")] = None,
    context: Annotated[
        int,
        typer.Option(
            help="Size the memory for this context (default: the profile's).", show_default=False
        ),
    ] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    tensorrt: Annotated[
        bool,
        typer.Option(
            "--tensorrt",
            help="Check every node of the artifact's ONNX graphs against TensorRT 10.3's and the "
                 "newest 10.x's ONNX parser op tables (static; needs the onnx package); exit 1 if "
                 "a node would be rejected.",
        ),
    ] = False,
    ops: Annotated[
        str | None,
        typer.Option(
            help="With --tensorrt: the op tables file (default: the copy shipped with edgeds)."
        ),
    ] = None,
):
    """Show the hardware, installed backends, and what edgeds would choose here, and why.

    Examples:
      edgeds doctor
      edgeds doctor r1-1.5b-int8 --json
      edgeds doctor r1-1.5b-trt --tensorrt
    """
    if tensorrt:
        from ..tensorrt_check import check_artifact, format_report as format_check

        if not artifact:
            raise UsageError("--tensorrt checks an artifact's graphs: give the artifact folder")
        checked = check_artifact(artifact, ops)
        typer.echo(json.dumps(checked, indent=2) if as_json else format_check(checked))
        if not checked["ok"]:
            raise typer.Exit(1)
        return
    from ..doctor import diagnose, format_report

    report = diagnose(artifact, profile, backend, context or None)
    typer.echo(json.dumps(report, indent=2) if as_json else format_report(report))
