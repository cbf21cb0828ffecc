"""The artifact manifest, `edgeds.json`: the one contract between exporter and runtime.

The runtime learns everything about a model from here (architecture, quantization, graph
input/output names, KV cache layout, tokenizer files) and refuses an artifact whose files do
not match the checksums recorded at export.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from . import checksum_stamps
from .errors import ArtifactError

MANIFEST = "edgeds.json"
FORMAT = "edgeds-artifact"
FORMAT_VERSION = 1


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def describe_files(folder: Path, names: list[str]) -> dict[str, dict]:
    return {n: {"size": (folder / n).stat().st_size, "sha256": sha256_file(folder / n)} for n in names}


def cache_values_per_token(model: dict) -> int:
    """KV cache values one token takes across all layers: the MLA latent, or per-head K and V."""
    if "kv_lora_rank" in model:
        return model["num_layers"] * (model["kv_lora_rank"] + model["qk_rope_head_dim"])
    return 2 * model["num_layers"] * model["num_kv_heads"] * model["head_dim"]


def kv_cache_dtype(graph: dict) -> str:
    """The cache type a graph entry of the manifest declares; float32 where it says none (the
    OpenVINO plugin keeps its own cache)."""
    return graph.get("kv_cache", {}).get("dtype", "float32")


@dataclass(frozen=True)
class Artifact:
    root: Path
    manifest: dict

    @property
    def model(self) -> dict:
        return self.manifest["model"]

    @property
    def formats(self) -> list[str]:
        return list(self.manifest["graphs"])

    def graph(self, fmt: str) -> dict:
        if fmt not in self.manifest["graphs"]:
            raise ArtifactError(f"artifact has no {fmt} graph (it has: {', '.join(self.formats)})")
        return self.manifest["graphs"][fmt]

    def path(self, name: str) -> Path:
        return self.root / name

    def files_for(self, fmt: str, small_batch: bool = False) -> list[str]:
        """The files a backend of this format reads: its graph and weights (with `small_batch`,
        the small-batch graph's too), and the tokenizer."""
        graph, tok = self.graph(fmt), self.manifest["tokenizer"]
        names = []
        for g in (graph, small_batch and graph.get("small_batch")):
            if g:
                names += [g["file"], *(part["file"] for part in g.get("parts", [])), g["data_file"], g.get("tensors")]
        names += [tok["file"], tok.get("chat_template")]
        return [n for n in names if n]

    def verify(self, names: list[str] | None = None) -> None:
        """Check files against their recorded sha256 (all of them by default)."""
        files = self.manifest.get("files", {})
        unknown = [n for n in names or [] if n not in files]
        if unknown:
            raise ArtifactError(f"artifact files {unknown} are not in its manifest")
        verify_files(self.root, files if names is None else {n: files[n] for n in names})

    @property
    def digest(self) -> str:
        """A hash of the manifest, which itself holds every file's hash."""
        return hashlib.sha256((self.root / MANIFEST).read_bytes()).hexdigest()


def load_artifact(folder: str | Path, verify: bool = True) -> Artifact:
    """Read and check an artifact folder; raises ArtifactError before anything runs."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ArtifactError(f"artifact folder '{folder}' does not exist")
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"'{folder}' has no {MANIFEST}; is it an edgeds artifact?")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{MANIFEST} is not valid JSON: {exc}") from exc
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{MANIFEST} is not an edgeds manifest (format={manifest.get('format')!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"artifact format version {version} is not supported by this edgeds "
            f"(supports {FORMAT_VERSION}); re-export it or upgrade edgeds"
        )
    if verify:
        verify_files(root, manifest.get("files", {}))
    return Artifact(root, manifest)


def verify_files(root: Path, files: dict[str, dict]) -> None:
    for name, meta in files.items():
        path = root / name
        if not path.is_file():
            raise ArtifactError(f"artifact file '{name}' is missing")
        st = path.stat()
        if st.st_size != meta["size"]:
            raise ArtifactError(f"artifact file '{name}' has the wrong size; it was changed or truncated")
        if checksum_stamps.is_stamped(path, st, meta["sha256"]):
            continue  # the very file that matched before (edgeds/checksum_stamps.py)
        started = time.time_ns()
        if sha256_file(path) != meta["sha256"]:
            raise ArtifactError(f"artifact file '{name}' does not match its sha256; refusing to run it")
        checksum_stamps.record(path, st, meta["sha256"], started)
