"""The one exception type the exporter raises for problems the user can fix."""

from edgeds.errors import UserError


class ExportError(UserError):
    """A clear, one-line reason the export cannot go on; the CLI prints it and exits 2."""
