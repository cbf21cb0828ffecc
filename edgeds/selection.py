"""Which backend runs an artifact here: the profile's preference, narrowed by what is installed
and what the artifact holds (each registry entry's `unsupported`); the entry chosen plans its own
settings (ONNX Runtime's providers: backends/onnxruntime/plan.py). Every choice comes with its
reason."""

from __future__ import annotations

from dataclasses import dataclass, field

from .artifact import Artifact
from .backends import registry
from .backends.registry import installed_backends  # noqa: F401 - tests and doctor read it here
from .errors import ConfigError
from .hardware import Hardware
from .profiles import Profile


@dataclass
class Choice:
    backend: str
    providers: list[str]
    threads: int
    reasons: list[str] = field(default_factory=list)
    # What would run better here (another export, usually): also among the reasons, and told
    # at the start of a job, where a reason list is not read.
    advice: list[str] = field(default_factory=list)
    # Decode batches up to this size run the artifact's small-batch graph (0: not loaded).
    small_batch_max: int = 0

    @property
    def artifact_format(self) -> str:
        """The artifact graph this backend reads."""
        return registry.get(self.backend).graph_format


def native_unavailable(hw: Hardware, artifact: Artifact | None) -> str | None:
    """Why the native backend cannot run this artifact here, or None."""
    return registry.get("native").unsupported(artifact, hw)


def choose_backend(profile: Profile, hw: Hardware, artifact: Artifact | None,
                   backend: str | None = None, device: str | None = None,
                   threads: int | None = None) -> Choice:
    """The first backend of the profile's list (or `backend` alone) that can run the artifact
    here, planned; the reasons name every one passed over, and why."""
    reasons: list[str] = []
    moe = artifact is not None and artifact.model.has_experts
    if backend:
        names = [registry.get(backend).name]
    else:
        names = list(profile.runtime.backends_for(moe))
        if moe and profile.runtime.backends_moe:
            reasons.append(f"profile {profile.name}: MoE artifacts try {', '.join(names)}")
    for name in names:
        if (entry := registry.REGISTRY.get(name)) is None:  # a profile's typo: the next one
            reasons.append(f"backend {name}: not one of {', '.join(registry.REGISTRY)}")
            continue
        if (why := entry.unsupported(artifact, hw, profile)) is not None:
            reasons.append(f"backend {entry.name}: {why}")
            continue
        return entry.plan(
            profile, hw, artifact, device, entry.threads(profile, hw, threads), reasons
        )
    raise ConfigError("no usable backend: " + "; ".join(reasons))
