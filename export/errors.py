"""The one exception type the exporter raises for problems the user can fix."""


class ExportError(Exception):
    """A clear, one-line reason the export cannot go on; the CLI prints it and exits non-zero."""
