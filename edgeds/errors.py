"""Errors for what the user can fix; anything else the CLI reports as an internal error (a bug).

A `UserError` carries one clear line naming what is wrong; the CLI prints it and exits with
its `exit_code` (2: bad input or configuration). The exporter's `ExportError` is one too.
"""


class UserError(Exception):
    """Base: a clear, one-line message about something the user gave or can change."""

    exit_code = 2


EdgedsError = UserError  # the name this base had before: callers that catch it keep working


class UsageError(UserError, ValueError):
    """A bad argument, option or value (a ValueError too: callers of the Python API that catch
    ValueError keep catching it)."""


class ArtifactError(UserError):
    """The artifact is missing, of an unknown format, or does not match its checksums."""


class ConfigError(UserError):
    """A profile or an option is invalid, or asks for what this machine does not have."""
