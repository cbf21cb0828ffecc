"""Backends behind one interface (`base.Backend`); imported lazily so a missing one costs nothing."""

from __future__ import annotations

from importlib.util import find_spec


def installed_backends() -> dict[str, bool]:
    return {name: find_spec(name) is not None for name in ("onnxruntime", "openvino")}
