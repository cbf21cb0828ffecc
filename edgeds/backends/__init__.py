"""Backends behind one interface (`base.Backend`); imported lazily so a missing one costs nothing."""

from __future__ import annotations

from importlib.util import find_spec


def installed_backends() -> dict[str, bool]:
    return {name: find_spec(name) is not None for name in ("onnxruntime", "openvino")}


def backend_class(name: str, artifact=None):
    """The class that runs backend `name` (for this artifact, where given), imported but not
    loaded: what `edgeds doctor` asks about a backend's abilities (its class attributes)."""
    if name == "native":
        from .native import NativeBackend, is_mla

        if artifact is not None and is_mla(artifact):
            from .native_mla import NativeMlaBackend

            return NativeMlaBackend
        return NativeBackend
    if name == "openvino":
        from .openvino import OpenVinoBackend

        return OpenVinoBackend
    if name == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend
    raise ValueError(f"no backend {name!r}")
