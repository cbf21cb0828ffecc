"""The `edgeds` command. Each command is a thin layer over one library function.

Exit codes (one place): 0 success; 1 a batch job finished but some records failed;
2 bad input or configuration (a clear one-line message); 3 the output cannot be written
(disk full, read-only; an error's `exit_code` says so); 70 an internal error (a bug: one line
naming the log file that holds its traceback); 130 interrupted (resumable).
`edgeds --debug ...` (or EDGEDS_DEBUG=1) shows tracebacks instead.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..errors import UserError

EXIT_OK, EXIT_RECORDS_FAILED, EXIT_USAGE, EXIT_OUTPUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_INTERNAL = 70  # sysexits.h EX_SOFTWARE
_DEBUG = False  # `edgeds --debug`

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  pretty_exceptions_enable=False,
                  help="Run DeepSeek models offline on CPUs and edge devices.")


def user_errors(fn):
    """Map a UserError (and the OS's errors about a file the user named) to its one line on
    stderr and its exit code; anything else is a bug: one "internal error" line naming the log
    file that holds the traceback (exit 70)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except Exception as exc:
            if _debug():
                raise
            if isinstance(exc, (UserError, FileNotFoundError, PermissionError)):
                typer.echo(f"edgeds: error: {exc}", err=True)
                raise typer.Exit(getattr(exc, "exit_code", EXIT_USAGE)) from None
            typer.echo(f"edgeds: internal error: {_one_line(exc)} ({_where(exc)})", err=True)
            raise typer.Exit(EXIT_INTERNAL) from None
        except KeyboardInterrupt:
            typer.echo("edgeds: interrupted", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper


def _debug() -> bool:
    return _DEBUG or bool(os.environ.get("EDGEDS_DEBUG"))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def _where(exc: BaseException) -> str:
    """Writes the traceback to a log file in edgeds' cache folder (else the temporary folder)
    and says where, or says how to see it where no file can be written."""
    import tempfile
    import time
    import traceback

    from .. import __version__
    from ..checksum_stamps import cache_folder

    text = "".join(traceback.format_exception(exc))
    command = " ".join(sys.argv)
    name = f"internal-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for folder in (cache_folder(), Path(tempfile.gettempdir()) / "edgeds"):
        if folder is None:
            continue
        try:
            (folder / "logs").mkdir(parents=True, exist_ok=True)
            path = folder / "logs" / name
            path.write_text(f"edgeds {__version__}: {command}\n{text}", encoding="utf-8")
        except OSError:
            continue
        return f"a bug: the traceback is in {path}; `edgeds --debug ...` shows it here"
    return "a bug: `edgeds --debug ...` shows the traceback"


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"edgeds {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print edgeds' version and exit.")] = False,
          debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error "
                                              "instead of its one line.")] = False) -> None:
    """Run DeepSeek models offline on CPUs and edge devices."""
    global _DEBUG
    _DEBUG = debug


def _help(doc: str) -> str:
    """A command's docstring as its --help, its Examples block kept line by line (click rewraps
    every paragraph not marked with \\b)."""
    return inspect.cleandoc(doc).replace("\nExamples:\n", "\n\b\nExamples:\n")


def _register() -> None:
    from . import bench_cmd, compare_cmd, doctor_cmd, export_cmd, infer_cmd

    for module in (export_cmd, infer_cmd, doctor_cmd, bench_cmd, compare_cmd):
        register = app.command(module.NAME, help=_help(module.command.__doc__ or ""))
        register(user_errors(module.command))


_register()


def main() -> None:  # pragma: no cover - console entry
    sys.exit(app())
