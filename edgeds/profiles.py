"""profiles/*.toml -> typed, frozen settings; which profile fits this machine, and why.

Unknown keys are errors, so a typo in a profile fails loudly instead of being ignored.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from .errors import ConfigError
from .hardware import Hardware


@dataclass(frozen=True)
class Match:
    arch: str | None = None
    cpu_flags: tuple[str, ...] = ()
    jetson_module: str | None = None

    def why_not(self, hw: Hardware) -> str | None:
        """None if `hw` matches, else the first reason it does not."""
        if self.arch and hw.arch != self.arch:
            return f"arch {hw.arch} is not {self.arch}"
        missing = [f for f in self.cpu_flags if f not in hw.flags]
        if missing:
            return f"CPU lacks {', '.join(missing)}"
        if self.jetson_module and hw.jetson_module != self.jetson_module:
            return f"not a Jetson {self.jetson_module}"
        return None


@dataclass(frozen=True)
class RuntimeSettings:
    backends: tuple[str, ...] = ("onnxruntime", "openvino")
    # MoE artifacts (DeepSeek-V2/V3) in this order instead, where set: a CPU may run one kind of
    # model best on one backend and the other kind on another.
    backends_moe: tuple[str, ...] = ()
    batch_size: int = 8
    context: int = 4096
    allow_fallback: bool = True

    def backends_for(self, moe: bool) -> tuple[str, ...]:
        return self.backends_moe if moe and self.backends_moe else self.backends


@dataclass(frozen=True)
class OnnxRuntimeSettings:
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    threads: int = 0
    provider_options: dict = field(default_factory=dict)
    session_options: dict = field(default_factory=dict)
    # Decode batches up to this size run an artifact's small-batch graph, where it has one
    # (export --small-batch-graph); 0: never load it. MoE models have their own limit: each
    # expert sees a fraction of the batch, so the one-row kernel pays up to larger batches.
    small_batch_max: int = 0
    small_batch_max_moe: int = 0


@dataclass(frozen=True)
class OpenVinoSettings:
    device: str = "CPU"
    threads: int = 0
    inference_precision: str = "f32"
    kv_cache_precision: str = "f32"


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    priority: int
    match: Match
    runtime: RuntimeSettings
    onnxruntime: OnnxRuntimeSettings
    openvino: OpenVinoSettings


def _typed(cls, data: dict, where: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def parse_profile(name: str, text: str) -> Profile:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"profile {name}: invalid TOML: {exc}") from exc
    top = {"description", "priority", "match", "runtime", "onnxruntime", "openvino"}
    unknown = sorted(set(data) - top)
    if unknown:
        raise ConfigError(f"profile {name}: unknown key(s) {unknown}; known: {sorted(top)}")
    return Profile(
        name=name,
        description=data.get("description", ""),
        priority=int(data.get("priority", 0)),
        match=_typed(Match, data.get("match", {}), f"profile {name} [match]"),
        runtime=_typed(RuntimeSettings, data.get("runtime", {}), f"profile {name} [runtime]"),
        onnxruntime=_typed(
            OnnxRuntimeSettings, data.get("onnxruntime", {}), f"profile {name} [onnxruntime]"
        ),
        openvino=_typed(OpenVinoSettings, data.get("openvino", {}), f"profile {name} [openvino]"),
    )


def profile_folder() -> Path:
    """The profiles shipped with edgeds (the repo's profiles/, installed as edgeds/profiles)."""
    repo = Path(__file__).resolve().parent.parent / "profiles"
    if repo.is_dir():
        return repo
    return Path(__file__).resolve().parent / "profiles_data"


def load_profiles(folder: Path | None = None) -> dict[str, Profile]:
    folder = folder or profile_folder()
    return {
        p.stem: parse_profile(p.stem, p.read_text(encoding="utf-8"))
        for p in sorted(folder.glob("*.toml"))
    }


def choose_profile(
    hw: Hardware, profiles: dict[str, Profile], name: str | None = None
) -> tuple[Profile, list[str]]:
    """The named profile, or the highest-priority one that matches `hw`; with the reasons."""
    if name:
        if name not in profiles:
            raise ConfigError(f"unknown profile '{name}'; available: {', '.join(sorted(profiles))}")
        return profiles[name], [f"profile {name}: chosen with --profile"]
    reasons = []
    matching = []
    for p in sorted(profiles.values(), key=lambda p: -p.priority):
        why_not = p.match.why_not(hw)
        reasons.append(
            f"profile {p.name}: " + ("matches" if why_not is None else f"skipped ({why_not})")
        )
        if why_not is None:
            matching.append(p)
    if not matching:
        raise ConfigError(
            "no profile matches this machine; pass --profile NAME\n" + "\n".join(reasons)
        )
    return matching[0], reasons
