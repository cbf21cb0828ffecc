"""An artifact's chat template: compiled once at load, where a syntax error is refused with the
file and line, and rendered in Jinja's immutable sandbox within bounds of time and size.

The template comes from the checkpoint and the messages from the user; either may be hostile.
The sandbox keeps the template from touching anything; the bounds keep one request from holding
the job: nested loops (the sandbox's range() alone allows 100,000 items, so two nested loops run
10^10 times), string or list products, and output beyond MAX_CHARS end that request's render
with a TemplateLimit error, which the batch job records for that request alone.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path

from jinja2.exceptions import TemplateError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import ArtifactError

MAX_SECONDS = 2.0  # a chat template renders in well under a millisecond
MAX_CHARS = 4 << 20  # longer than any prompt a model's context holds
TEMPLATE_CODE = "<template>"  # the file name Jinja compiles a template from a string under


class TemplateLimit(TemplateError):
    """A render that ran past MAX_SECONDS, or would have written more than MAX_CHARS."""


def _raise(message: str):
    raise TemplateError(message)


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context, operator, left, right):
        """`'x' * 10**9` would be built whole before any output bound could see it."""
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if (
                    isinstance(seq, (str, list, tuple))
                    and isinstance(times, int)
                    and len(seq) * times > MAX_CHARS
                ):
                    raise TemplateLimit(f"the chat template builds a value over {MAX_CHARS} items")
        if operator == "**" and isinstance(right, int) and abs(right) > 64:
            raise TemplateLimit(f"the chat template raises to the power {right}")
        return super().call_binop(context, operator, left, right)


class ChatTemplate:
    def __init__(self, path: Path):
        env = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self.template = env.from_string(path.read_text(encoding="utf-8"))
        except TemplateSyntaxError as exc:
            raise ArtifactError(f"{path.name}, line {exc.lineno}: {exc.message}") from None
        except UnicodeDecodeError as exc:
            raise ArtifactError(
                f"{path.name} is not UTF-8 text ({exc.reason} at byte {exc.start})"
            ) from None

    def render(self, **context) -> str:
        """The template's text, or TemplateLimit. Time is checked at every line the compiled
        template runs (a trace function on the template's own frames only: the cost falls on
        the render, a few microseconds, and on nothing else)."""
        deadline = time.monotonic() + MAX_SECONDS

        def on_line(frame, event, arg):
            if time.monotonic() > deadline:
                raise TemplateLimit(
                    f"the chat template ran past {MAX_SECONDS:g} s (a loop that does not end?)"
                )
            return on_line

        def on_call(frame, event, arg):
            return on_line if frame.f_code.co_filename == TEMPLATE_CODE else None

        pieces, size = [], 0
        outer = sys.gettrace()  # a debugger's or coverage's tracer, put back after
        sys.settrace(on_call)
        try:
            for piece in self.template.generate(**context):
                size += len(piece)
                if size > MAX_CHARS:
                    raise TemplateLimit(f"the chat template wrote more than {MAX_CHARS} characters")
                pieces.append(piece)
        except RecursionError:
            raise TemplateLimit("the chat template recursed too deep") from None
        finally:
            sys.settrace(outer)
        return "".join(pieces)
