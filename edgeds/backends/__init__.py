"""Backends behind one interface (`base.Backend`), listed in `registry.py`; each is imported only
when chosen, so a missing one costs nothing."""

from __future__ import annotations

from .registry import installed_backends


def backend_class(name: str, artifact=None):
    """The class that runs backend `name` (for this artifact, where given), imported but not
    loaded: what `edgeds doctor` asks about a backend's abilities (its class attributes)."""
    from . import registry

    return registry.get(name).backend_class(artifact)


__all__ = ["backend_class", "installed_backends"]
