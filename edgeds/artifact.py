"""The artifact manifest, `edgeds.json`: the one contract between exporter and runtime.

The runtime learns everything about a model from here (architecture, quantization, graph
input/output names, KV cache layout, tokenizer files) and refuses an artifact whose files do
not match the checksums recorded at export. What each field means, and the checks on it, are
`manifest.py`'s; this module is the folder: its files, their paths and their checksums.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from . import checksum_stamps
from . import manifest as manifest_module
from .errors import ArtifactError
from .manifest import FORMAT, FORMAT_VERSION, MANIFEST, FileEntry, Graph, Manifest, Model, inside

__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST", "Artifact", "load_artifact", "sha256_file"]


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def describe_files(folder: Path, names: list[str]) -> dict[str, dict]:
    return {n: {"size": (folder / n).stat().st_size, "sha256": sha256_file(folder / n)}
            for n in names}


@dataclass(frozen=True)
class Artifact:
    root: Path
    manifest: Manifest

    @property
    def model(self) -> Model:
        return self.manifest.model

    @property
    def formats(self) -> list[str]:
        return self.manifest.formats

    def graph(self, fmt: str) -> Graph:
        return self.manifest.graph(fmt)

    def path(self, name: str) -> Path:
        """A file the manifest names (checked there to be a relative name inside the folder),
        refused if a symbolic link leads it out of the folder."""
        return inside(self.root, name)

    def files_for(self, fmt: str, small_batch: bool = False) -> list[str]:
        """The files a backend of this format reads: its graph and weights (with `small_batch`,
        the small-batch graph's too), and the tokenizer."""
        graph, tok = self.graph(fmt), self.manifest.tokenizer
        names = [graph.file, *(p.file for p in graph.parts), graph.data_file, graph.tensors]
        if small_batch and (small := graph.small_batch):
            names += [small.file, *(p.file for p in small.parts), small.data_file]
        names += [tok.file, tok.chat_template]
        return list(dict.fromkeys(n for n in names if n))

    def verify(self, names: list[str] | None = None) -> None:
        """Check files against their recorded sha256 (all of them by default)."""
        files = self.manifest.files
        unknown = [n for n in names or [] if n not in files]
        if unknown:
            raise ArtifactError(f"artifact files {unknown} are not in its manifest")
        verify_files(self.root, dict(files) if names is None else {n: files[n] for n in names})

    @property
    def digest(self) -> str:
        """A hash of the manifest, which itself holds every file's hash."""
        return hashlib.sha256((self.root / MANIFEST).read_bytes()).hexdigest()


def load_artifact(folder: str | Path, verify: bool = True) -> Artifact:
    """Read and check an artifact folder; raises ArtifactError before anything runs."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ArtifactError(f"artifact folder '{folder}' does not exist")
    artifact = Artifact(root, manifest_module.read(root))
    if verify:
        artifact.verify()
    return artifact


def verify_files(root: Path, files: dict[str, FileEntry]) -> None:
    for name, meta in files.items():
        path = inside(root, name)
        if not path.is_file():
            raise ArtifactError(f"artifact file '{name}' is missing")
        st = path.stat()
        if st.st_size != meta.size:
            raise ArtifactError(f"artifact file '{name}' has the wrong size; it was changed or "
                                "truncated")
        if checksum_stamps.is_stamped(path, st, meta.sha256):
            continue  # the very file that matched before (edgeds/checksum_stamps.py)
        started = time.time_ns()
        if sha256_file(path) != meta.sha256:
            raise ArtifactError(f"artifact file '{name}' does not match its sha256; refusing to "
                                "run it")
        checksum_stamps.record(path, st, meta.sha256, started)
