"""Errors the runtime raises for problems a user can fix; the CLI maps them to exit codes."""


class EdgedsError(Exception):
    """Base: a clear, one-line message."""


class ArtifactError(EdgedsError):
    """The artifact is missing, of an unknown format, or does not match its checksums."""


class ConfigError(EdgedsError):
    """A profile or an option is invalid, or asks for what this machine does not have."""
