"""Backends behind one interface (`base.Backend`), listed in `registry.py`; each is imported only
when chosen, so a missing one costs nothing."""

from __future__ import annotations

from .registry import installed_backends

__all__ = ["installed_backends"]
