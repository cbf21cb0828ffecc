"""The artifact manifest, `edgeds.json`: the one contract between exporter and runtime.

The runtime learns everything about a model from here (architecture, quantization, graph
input/output names, KV cache layout, tokenizer files) and refuses an artifact whose files do
not match the checksums recorded at export. What each field means, and the checks on it, are
`manifest.py`'s; this module is the folder: its files, their paths and their checksums.
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from . import checksum_stamps
from . import manifest as manifest_module
from .errors import ArtifactError
from .manifest import FORMAT, FORMAT_VERSION, MANIFEST, FileEntry, Graph, Manifest, Model, inside

__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST", "Artifact", "load_artifact", "sha256_file"]


def sha256_file(path: Path) -> str:
    return sha256_range(path, 0, None)


def sha256_range(path: Path, start: int, length: int | None, chunk: int = 1 << 20) -> str:
    """The sha256 of `length` bytes of the file from `start` (None: to its end). hashlib and
    file reads release the GIL, so ranges hash on as many cores as there are threads. One
    buffer a call, read into: a new bytes object per read can leave freed ones held in each
    thread's malloc arena (a verified load on 16 threads peaked 200 MB above a stamped one)."""
    digest, buf = hashlib.sha256(), memoryview(bytearray(chunk))
    left = float("inf") if length is None else length
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        while left > 0 and (n := f.readinto(buf[: int(min(chunk, left))])):
            digest.update(buf[:n])
            left -= n
    return digest.hexdigest()


# Files above this are also hashed per piece at export, so that a load verifies them on every
# core, not one (a 15 GB MoE artifact's single sha256 took 17-25 s of its first load).
PIECE_BYTES = 1 << 26


def _piece_digests(path: Path, size: int, piece_bytes: int, pool: ThreadPoolExecutor) -> list[str]:
    return list(pool.map(lambda s: sha256_range(path, s, piece_bytes), range(0, size, piece_bytes)))


def describe_files(folder: Path, names: list[str]) -> dict[str, dict]:
    """Each file's size and sha256, and for a large one the sha256 of each PIECE_BYTES."""
    out = {}
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for n in names:
            path = folder / n
            size = path.stat().st_size
            whole = pool.submit(sha256_file, path)
            pieces = _piece_digests(path, size, PIECE_BYTES, pool) if size > PIECE_BYTES else None
            out[n] = {"size": size, "sha256": whole.result()}
            if pieces:
                out[n]["pieces"] = {"bytes": PIECE_BYTES, "sha256": pieces}
    return out


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
        names += [tok.compact or tok.file, tok.chat_template]
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
        if meta.pieces:  # every piece, on every core
            with ThreadPoolExecutor(min(os.cpu_count() or 1, len(meta.pieces))) as pool:
                matches = _piece_digests(path, meta.size, meta.piece_bytes, pool) == list(
                    meta.pieces)
        else:
            matches = sha256_file(path) == meta.sha256
        if not matches:
            raise ArtifactError(f"artifact file '{name}' does not match its sha256; refusing to "
                                "run it")
        checksum_stamps.record(path, st, meta.sha256, started)
