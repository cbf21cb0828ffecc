"""A local Hugging Face checkpoint folder, read tensor by tensor from safetensors.

Only safetensors are ever read: pickle-based weights (.bin, .pt) can run arbitrary code when
loaded, so they are refused with a hint, never opened. Nothing here touches the network.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from edgeds.artifact import sha256_file

from .errors import ExportError
from .fp8 import FP8_DTYPE, SCALE_DTYPES, SCALE_SUFFIX, Fp8Config, check_scales, dequantize
from .safetensors_reader import SafetensorsFile

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
CONVERT_HINT = (
    "convert it to safetensors on a trusted machine first, e.g. "
    "`python -c \"from transformers import AutoModelForCausalLM as M; "
    "M.from_pretrained('SRC').save_pretrained('DST', safe_serialization=True)\"`"
)


class Checkpoint:
    """config.json plus the safetensors shards of one local checkpoint. An FP8 checkpoint
    (`quantization_config`, DeepSeek's block-scaled e4m3) reads as float32 all the same, each
    weight dequantized with its scales when it is read (`fp8`: its validated config, else None)."""

    def __init__(self, src: str | Path):
        self.root = resolve_local_folder(src)
        self.config = _read_json(self.root / "config.json", "config.json")
        q = self.config.get("quantization_config")
        self.fp8 = Fp8Config.parse(q) if q is not None else None
        self.shards = _find_shards(self.root)
        self._index = self._build_index()
        fp8 = next((n for n in self._index if self.dtype(n) == FP8_DTYPE), None)
        if self.fp8 is None and fp8:
            raise ExportError(f"tensor '{fp8}' is {FP8_DTYPE} but config.json has no "
                              "quantization_config to say how it is scaled")

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

    def dtype(self, name: str) -> str:
        return self._index[name].dtype(name)

    def tensor(self, name: str) -> np.ndarray:
        """One tensor as a float32 numpy array (bf16/fp16 widened, FP8 dequantized: one tensor at
        a time)."""
        if name not in self._index:
            raise ExportError(f"tensor '{name}' is missing from the checkpoint's safetensors")
        if self.fp8 and self.dtype(name) == FP8_DTYPE:
            return self._dequantized(name)
        return self._index[name].read(name)

    def _dequantized(self, name: str) -> np.ndarray:
        raw = self._index[name].read_raw(name)
        if raw.ndim != 2:
            raise ExportError(f"FP8 tensor '{name}' has shape {list(raw.shape)}; block scales "
                              "need a matrix")
        scale = name + SCALE_SUFFIX
        if scale not in self._index:
            raise ExportError(f"scale tensor '{scale}' of FP8 weight '{name}' is missing from "
                              "the checkpoint")
        if self.dtype(scale) not in SCALE_DTYPES:
            raise ExportError(f"scale tensor '{scale}' has dtype {self.dtype(scale)}; supported: "
                              f"{', '.join(SCALE_DTYPES)}")
        scales = self._index[scale].read(scale)
        check_scales(scale, scales, self.fp8.scale_shape(raw.shape))
        if np.count_nonzero((raw & 0x7F) == 0x7F):  # e4m3fn's only non-finite value
            raise ExportError(f"FP8 tensor '{name}' holds NaN; the checkpoint is corrupt")
        return dequantize(raw, scales, self.fp8.block_rows, self.fp8.block_cols)

    def parameter_count(self) -> int:
        """Elements of every tensor but the FP8 scales (what an export stores, give or take)."""
        return sum(math.prod(h.shape(n)) for n, h in self._index.items()
                   if not (self.fp8 and n.endswith(SCALE_SUFFIX)))

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
            f"only pickle weights found ({', '.join(pickles)}); edgeds never unpickles: "
            f"{CONVERT_HINT}"
        )
    raise ExportError(f"no *.safetensors weights in '{root}'")
