"""The backends edgeds can run, each behind one entry that answers three questions:

- `unsupported(artifact, hardware, profile)`: why it cannot run this artifact here (not
  installed, no graph of its format, an export or CPU its decoder does not take), or None;
- `plan(...)`: the settings it would run with here (a `selection.Choice`, with its reasons);
- `open(artifact, profile, choice, gpu)`: the loaded backend.

Selection, `edgeds doctor` and the engine ask these entries and never test a backend's name.
Each entry imports its backend's module only when asked to plan or open it: OpenVINO is not
imported unless it is chosen, and a missing extra costs nothing. The order of `REGISTRY` is the
order `--backend` lists them in; a profile's `backends` list decides which is tried first.
"""

from __future__ import annotations

import os
from importlib.util import find_spec
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:  # the annotations only: importing selection here would be circular
    from ..artifact import Artifact
    from ..hardware import Hardware
    from ..profiles import Profile
    from ..selection import Choice
    from .base import Backend


class BackendEntry:
    """What every entry declares; the subclasses below fill it in."""

    name: str
    graph_format: str  # the artifact graph it reads ("onnx", "openvino")
    module: str | None = None  # the Python package it needs installed (None: nothing beyond edgeds)

    def installed(self) -> bool:
        return self.module is None or find_spec(self.module) is not None

    def threads(self, profile: Profile, hw: Hardware, threads: int | None) -> int:
        """Threads it runs with: the caller's, else the profile's, else the machine's cores."""
        return threads or profile.onnxruntime.threads or hw.physical_cores or os.cpu_count() or 1

    def unsupported(self, artifact: Artifact | None, hw: Hardware,
                    profile: Profile | None = None) -> str | None:
        """Why it cannot run `artifact` (None: what this machine would run) here, or None."""
        if not self.installed():
            return "not installed"
        if artifact is not None and self.graph_format not in artifact.formats:
            return f"artifact has no {self.graph_format} graph"
        return None

    def plan(self, profile: Profile, hw: Hardware, artifact: Artifact | None,
             device: str | None, threads: int, reasons: list[str]) -> Choice:
        """The settings it runs with here; `reasons` so far (the backends passed over) lead."""
        raise NotImplementedError

    def backend_class(self, artifact: Artifact | None = None) -> type:
        """The class that runs it (for this artifact, where given), imported but not loaded:
        what `edgeds doctor` asks about a backend's abilities (its class attributes)."""
        raise NotImplementedError

    def open(
        self, artifact: Artifact, profile: Profile, choice: Choice, gpu: str = "gpu"
    ) -> Backend:
        """`gpu`: what names this device in the TensorRT engine cache's key (the Jetson module)."""
        raise NotImplementedError


class NativeEntry(BackendEntry):
    """edgeds' own decoder loops (backends/native.py, native_mla.py): int8 exports, x86 CPUs
    with AVX-512 VNNI (or AVX2, FMA and F16C: the AVX2 build) and a C compiler."""

    name, graph_format = "native", "onnx"

    def unsupported(self, artifact, hw, profile=None):
        from ..native import unavailable

        if (why := unavailable(hw.flags)) is not None:
            return why
        if artifact is None:  # what this machine would run: int8 exports here, the rest elsewhere
            return None
        from .native import unsupported

        return unsupported(artifact)

    def plan(self, profile, hw, artifact, device, threads, reasons):
        from ..native import build_for
        from ..selection import Choice
        from .native import is_mla

        mla = artifact is not None and is_mla(artifact)
        if build_for(hw.flags) == "avx2":
            isa = " (its AVX2 build: 256-bit kernels, exact int8 products by vpmaddubsw)"
        else:
            isa = ("" if "amx_int8" not in hw.flags or mla
                   else " (AMX tiles for calls of more than 16 rows)")
        kind = ""
        if mla:
            from .native_mla import DECODE_KERNEL_WORDS, default_decode_kernel

            words = DECODE_KERNEL_WORDS[default_decode_kernel(hw.flags)]
            kind = (f" for MLA + MoE (latent cache, absorbed attention in {words} at decode, "
                    "experts by token group)")
        which = ("" if artifact is not None
                 else " for int8 exports, dense and DeepSeek-V2/V3 (others: the next backend)")
        reasons.append(f"backend native: edgeds' own decoder loops{kind}{isa}{which}, "
                       f"{threads} threads")
        return Choice("native", ["cpu"], threads, reasons)

    def backend_class(self, artifact=None):
        from .native import NativeBackend, is_mla

        if artifact is not None and is_mla(artifact):
            from .native_mla import NativeMlaBackend

            return NativeMlaBackend
        return NativeBackend

    def open(self, artifact, profile, choice, gpu="gpu"):
        from .native import open_native

        return open_native(artifact, choice.threads)


class OnnxRuntimeEntry(BackendEntry):
    """Every export, on ONNX Runtime's CPU and GPU providers (backends/onnxruntime/); which
    providers, and why, is backends/onnxruntime/plan.py's."""

    name, graph_format, module = "onnxruntime", "onnx", "onnxruntime"

    def plan(self, profile, hw, artifact, device, threads, reasons):
        from .onnxruntime.plan import plan

        return plan(profile, hw, artifact, device, threads, reasons)

    def backend_class(self, artifact=None):
        from .onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend

    def open(self, artifact, profile, choice, gpu="gpu"):
        from .. import tensorrt
        from .onnxruntime import OnnxRuntimeBackend

        opts = profile.onnxruntime.provider_options
        providers = [(p, dict(opts.get(p, {}))) for p in choice.providers]
        trt = artifact.graph("onnx").tensorrt if "onnx" in artifact.formats else None
        if trt and providers and providers[0][0] == tensorrt.PROVIDER:
            options = tensorrt.provider_options(trt, providers[0][1], artifact.digest, gpu)
            providers[0] = (tensorrt.PROVIDER, options)
            tensorrt.announce(options)
        return OnnxRuntimeBackend(artifact, providers, choice.threads,
                                  profile.onnxruntime.session_options,
                                  small_batch_max=choice.small_batch_max)


class OpenVinoEntry(BackendEntry):
    """The OpenVINO IR on an OpenVINO device (backends/openvino.py), with the extra installed."""

    name, graph_format, module = "openvino", "openvino", "openvino"

    def threads(self, profile, hw, threads):
        return threads or profile.openvino.threads or hw.physical_cores or os.cpu_count() or 1

    def plan(self, profile, hw, artifact, device, threads, reasons):
        from ..selection import Choice

        dev = device or profile.openvino.device
        reasons.append(f"backend openvino: installed, device {dev}, {threads} threads")
        return Choice("openvino", [dev], threads, reasons)

    def backend_class(self, artifact=None):
        from .openvino import OpenVinoBackend

        return OpenVinoBackend

    def open(self, artifact, profile, choice, gpu="gpu"):
        from .openvino import OpenVinoBackend

        ov = profile.openvino
        return OpenVinoBackend(artifact, choice.providers[0], choice.threads, {
            "INFERENCE_PRECISION_HINT": ov.inference_precision,
            "KV_CACHE_PRECISION": ov.kv_cache_precision,
        })


REGISTRY: dict[str, BackendEntry] = {
    e.name: e for e in (NativeEntry(), OnnxRuntimeEntry(), OpenVinoEntry())
}


def get(name: str) -> BackendEntry:
    """The entry of backend `name`; a ConfigError naming the others for an unknown one."""
    if (entry := REGISTRY.get(name)) is None:
        raise ConfigError(f"unknown backend '{name}'; choose from {', '.join(REGISTRY)}")
    return entry


def installed_backends() -> dict[str, bool]:
    """Which optional backend packages this environment holds (the native backend needs none)."""
    return {name: e.installed() for name, e in REGISTRY.items() if e.module is not None}
