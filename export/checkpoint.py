"""A local Hugging Face checkpoint folder, read tensor by tensor from safetensors.

Only safetensors are ever read: pickle-based weights (.bin, .pt) can run arbitrary code when
loaded, so they are refused with a hint, never opened. Nothing here touches the network.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from edgeds.artifact import sha256_file

from .errors import ExportError
from .safetensors_reader import SafetensorsFile

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
CONVERT_HINT = (
    "convert it to safetensors on a trusted machine first, e.g. "
    "`python -c \"from transformers import AutoModelForCausalLM as M; "
    "M.from_pretrained('SRC').save_pretrained('DST', safe_serialization=True)\"`"
)


class Checkpoint:
    """config.json plus the safetensors shards of one local checkpoint."""

    def __init__(self, src: str | Path):
        self.root = resolve_local_folder(src)
        self.config = _read_json(self.root / "config.json", "config.json")
        self.shards = _find_shards(self.root)
        self._index = self._build_index()

    def _build_index(self) -> dict[str, SafetensorsFile]:
        index: dict[str, SafetensorsFile] = {}
        for shard in self.shards:
            handle = SafetensorsFile(shard)
            for name in handle.keys():
                index[name] = handle
        return index

    def has(self, name: str) -> bool:
        return name in self._index

    def names(self) -> list[str]:
        return list(self._index)

    def tensor(self, name: str) -> np.ndarray:
        """One tensor as a float32 numpy array (bf16/fp16 widened here, one tensor at a time)."""
        if name not in self._index:
            raise ExportError(f"tensor '{name}' is missing from the checkpoint's safetensors")
        return self._index[name].read(name)

    def file_hashes(self) -> dict[str, str]:
        files = [p for p in sorted(self.root.iterdir()) if p.is_file()]
        return {p.name: sha256_file(p) for p in files}


def resolve_local_folder(src: str | Path) -> Path:
    path = Path(src).expanduser()
    if not path.exists():
        if HUB_ID.match(str(src)) and not str(src).startswith((".", "/")):
            raise ExportError(
                f"'{src}' is not a local folder; it looks like a Hugging Face hub id, and edgeds "
                f"never downloads: fetch it first (e.g. `hf download {src} --local-dir DIR`) "
                "and pass DIR"
            )
        raise ExportError(f"checkpoint folder '{src}' does not exist")
    if not path.is_dir():
        raise ExportError(f"'{src}' is not a folder; pass the checkpoint's folder")
    if not (path / "config.json").is_file():
        raise ExportError(f"'{src}' has no config.json; is it a Hugging Face checkpoint folder?")
    return path


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read {what}: {exc}") from exc


def _find_shards(root: Path) -> list[Path]:
    index_file = root / "model.safetensors.index.json"
    if index_file.is_file():
        weight_map = _read_json(index_file, index_file.name).get("weight_map", {})
        shards = sorted({root / f for f in weight_map.values()})
        missing = [s.name for s in shards if not s.is_file()]
        if missing:
            raise ExportError(f"safetensors shard(s) listed in the index are missing: {missing}")
        return shards
    shards = sorted(root.glob("*.safetensors"))
    if shards:
        return shards
    pickles = [p.name for p in root.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise ExportError(
            f"only pickle weights found ({', '.join(pickles)}); edgeds never unpickles: {CONVERT_HINT}"
        )
    raise ExportError(f"no *.safetensors weights in '{root}'")
