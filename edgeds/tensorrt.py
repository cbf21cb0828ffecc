"""ONNX Runtime's TensorRT provider options for a `--target tensorrt` artifact.

- Optimization profiles: the manifest's min/opt/max shapes of the prefill and decode calls
  (export/tensorrt_profiles.py) become `trt_profile_min_shapes` / `_opt_` / `_max_`, one
  profile per call kind (ONNX Runtime reads a tensor named again as the next profile's). A call
  outside every profile would make TensorRT rebuild the engine mid-job.
- The engine cache is keyed by the artifact's digest, the TensorRT version and the GPU: an
  engine built for one of them is never loaded for another (TensorRT refuses engines from
  another version or GPU, and a re-export changes the digest). The timing cache sits beside it,
  so a rebuild after an upgrade reuses the kernel timings.

TensorRT is not installed where edgeds is developed: these options are tested as data
(tests/test_tensorrt_runtime.py), not against a running TensorRT.
"""

from __future__ import annotations

import ctypes
import logging
import re
from collections.abc import Mapping
from pathlib import Path

from .manifest import TensorrtProfiles

log = logging.getLogger("edgeds")

PROVIDER = "TensorrtExecutionProvider"
DEFAULT_CACHE = "~/.cache/edgeds/trt-engines"
LIBRARIES = ("libnvinfer.so.10", "libnvinfer.so")


def tensorrt_version() -> str:
    """The TensorRT library's version ("10.3.0"), read from libnvinfer itself; "unknown"
    where it cannot be loaded (the provider then fails to start and ONNX Runtime falls back)."""
    for name in LIBRARIES:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        v = int(
            lib.getInferLibVersion()
        )  # e.g. 100300 = 10.3.0 (major * 10000 + minor * 100 + patch)
        return f"{v // 10000}.{v // 100 % 100}.{v % 100}"
    return "unknown"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower() or "gpu"


def _shapes(level: Mapping[str, tuple[int, ...]]) -> str:
    return ",".join(f"{name}:{'x'.join(map(str, dims))}" for name, dims in level.items())


def profile_options(entry: TensorrtProfiles) -> dict[str, str]:
    """The trt_profile_*_shapes options of a manifest's `graphs.onnx.tensorrt` entry."""
    profiles = entry.profiles
    return {
        f"trt_profile_{level}_shapes": ",".join(_shapes(p[level]) for p in profiles.values())
        for level in ("min", "opt", "max")
    }


def engine_cache_folder(base: str, digest: str, version: str, gpu: str) -> Path:
    return Path(base).expanduser() / f"{digest[:16]}-trt{version}-{_slug(gpu)}"


def provider_options(
    entry: TensorrtProfiles, options: dict, digest: str, gpu: str, version: str | None = None
) -> dict:
    """The profile's TensorRT options with the artifact's profiles and its own engine cache."""
    version = version or tensorrt_version()
    folder = engine_cache_folder(
        str(options.get("trt_engine_cache_path", DEFAULT_CACHE)), digest, version, gpu
    )
    merged = (
        dict(options)
        | profile_options(entry)
        | {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(folder),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(folder.parent / f"timing-trt{version}-{_slug(gpu)}"),
        }
    )
    return merged


def announce(options: dict) -> str:
    """What the progress output says before the session loads: a first run builds the engines."""
    folder = Path(options["trt_engine_cache_path"])
    folder.mkdir(parents=True, exist_ok=True)  # the provider writes its engines there
    if folder.is_dir() and any(folder.iterdir()):
        message = f"TensorRT: loading engines built by an earlier run ({folder})"
        log.info(message)
    else:
        message = (
            f"TensorRT: the first run on this device builds the engines (minutes; a Jetson Orin "
            f"takes longest); later runs load them from {folder}"
        )
        log.warning(message)
    return message
