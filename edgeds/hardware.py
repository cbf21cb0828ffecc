"""What this machine is: CPU ISA flags, cores, memory, and NVIDIA Jetson modules.

Everything is read from files under a root folder (normally "/"), so tests cover every target
with a fake root: /proc/cpuinfo, /proc/meminfo, /etc/nv_tegra_release, /proc/device-tree/model.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

ISA_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
JETSON_MODULES = {  # substring of /proc/device-tree/model -> profile module name
    "agx orin": "agx-orin",
    "orin nx": "orin-nx",
    "orin nano": "orin-nano",
}
# L4T major release -> JetPack major version (TensorRT: R35 8.5, R36.3 8.6, R36.4 10.3, R38 10.13+).
JETPACK_OF_L4T = {"35": "5", "36": "6", "38": "7"}


@dataclass(frozen=True)
class Hardware:
    arch: str
    cpu_model: str
    flags: frozenset[str]
    physical_cores: int
    logical_cores: int
    memory_bytes: int
    jetson_model: str | None = None
    jetson_module: str | None = None
    l4t_release: str | None = None  # "R36.4.3", from /etc/nv_tegra_release
    notes: tuple[str, ...] = field(default=())

    @property
    def isa(self) -> list[str]:
        return [f for f in ISA_FLAGS if f in self.flags]

    def describe(self) -> dict:
        return {
            "arch": self.arch, "cpu": self.cpu_model, "isa": self.isa,
            "physical_cores": self.physical_cores, "logical_cores": self.logical_cores,
            "memory_gib": round(self.memory_bytes / 2**30, 1),
            "jetson": self.jetson_model,
            **({"l4t": self.l4t_release, "jetpack": self.jetpack} if self.jetson_model else {}),
        }

    @property
    def jetpack(self) -> str | None:
        """The JetPack major version of the L4T release ("6"), None where unknown."""
        if not self.l4t_release:
            return None
        return JETPACK_OF_L4T.get(self.l4t_release[1:].split(".")[0])


def detect(root: str | Path = "/") -> Hardware:
    root = Path(root)
    cpuinfo = _read(root / "proc/cpuinfo")
    blocks = [b for b in cpuinfo.split("\n\n") if b.strip()]
    fields = [_fields(b) for b in blocks]
    flags: set[str] = set()
    model = "unknown"
    arch = "x86_64"
    for f in fields:
        if "flags" in f:
            flags |= set(f["flags"].split())
        if "features" in f:
            flags |= set(f["features"].split())
            arch = "aarch64"
        model = f.get("model name", f.get("hardware", model))
    logical = sum(1 for f in fields if "processor" in f) or os.cpu_count() or 1
    cores = {
        (f.get("physical id", "0"), f.get("core id", f.get("processor")))
        for f in fields
        if "processor" in f
    }
    physical = len(cores) if any("core id" in f for f in fields) else logical
    memory = _meminfo_total(_read(root / "proc/meminfo"))
    jetson_model = None
    module = None
    release = _l4t_release(_read(root / "etc/nv_tegra_release"))
    dt_model = _read(root / "proc/device-tree/model").strip("\x00\n ")
    if (root / "etc/nv_tegra_release").exists() or "jetson" in dt_model.lower():
        jetson_model = dt_model or "NVIDIA Jetson (unknown module)"
        arch = "aarch64"
        module = next((m for key, m in JETSON_MODULES.items() if key in dt_model.lower()), None)
    return Hardware(arch, model, frozenset(flags), max(physical, 1), max(logical, 1), memory,
                    jetson_model, module, release if jetson_model else None)


def _l4t_release(text: str) -> str | None:
    """ "# R36 (release), REVISION: 4.3, ..." -> "R36.4.3"."""
    found = re.match(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"R{found.group(1)}.{found.group(2)}" if found else None


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _fields(block: str) -> dict[str, str]:
    out = {}
    for line in block.splitlines():
        if ":" in line:
            key, _, value = line.partition(":")
            out[key.strip().lower()] = value.strip()
    return out


def _meminfo_total(text: str) -> int:
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0
