"""The `edgeds` command. Each command is a thin layer over one library function.

Exit codes (one place): 0 success; 1 a batch job finished but some records failed;
2 bad input or configuration (a clear one-line message); 3 the output cannot be written
(disk full, read-only; an error's `exit_code` says so); 130 interrupted (resumable).
Set EDGEDS_DEBUG=1 to see tracebacks.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from typing import Annotated

import typer

from ..errors import EdgedsError

EXIT_OK, EXIT_RECORDS_FAILED, EXIT_USAGE, EXIT_OUTPUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  pretty_exceptions_enable=False,
                  help="Run DeepSeek models offline on CPUs and edge devices.")


def user_errors(fn):
    """Map known errors to one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except Exception as exc:
            known = isinstance(exc, (EdgedsError, FileNotFoundError, PermissionError, ValueError)) or \
                type(exc).__name__ == "ExportError"
            if not known or os.environ.get("EDGEDS_DEBUG"):
                raise
            typer.echo(f"edgeds: error: {exc}", err=True)
            raise typer.Exit(getattr(exc, "exit_code", EXIT_USAGE)) from None
        except KeyboardInterrupt:
            typer.echo("edgeds: interrupted", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"edgeds {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print edgeds' version and exit.")] = False) -> None:
    """Run DeepSeek models offline on CPUs and edge devices."""


def _help(doc: str) -> str:
    """A command's docstring as its --help, its Examples block kept line by line (click rewraps
    every paragraph not marked with \\b)."""
    return inspect.cleandoc(doc).replace("\nExamples:\n", "\n\b\nExamples:\n")


def _register() -> None:
    from . import bench_cmd, compare_cmd, doctor_cmd, export_cmd, infer_cmd

    for module in (export_cmd, infer_cmd, doctor_cmd, bench_cmd, compare_cmd):
        app.command(module.NAME, help=_help(module.command.__doc__ or ""))(user_errors(module.command))


_register()


def main() -> None:  # pragma: no cover - console entry
    sys.exit(app())
