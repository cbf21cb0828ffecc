"""The embedded default model: a small dense model trained on Python source, shipped inside
the package so `edgeds infer` works offline before any download."""

from __future__ import annotations

from pathlib import Path

from .errors import ArtifactError

FOLDER = Path(__file__).resolve().parent / "embedded_model"  # r1-distill-tiny-python, INT8


def default_artifact() -> Path:
    if not (FOLDER / "edgeds.json").is_file():
        raise ArtifactError(
            "this edgeds has no embedded default model; pass an artifact folder "
            "(make one with `edgeds export CHECKPOINT -o ARTIFACT`)"
        )
    return FOLDER
