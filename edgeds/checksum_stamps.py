"""Stamps of artifact files that matched their sha256, so that an unchanged artifact is not
hashed again at every start (the 1.5B INT8 weights, 1.8 GB, take ~1.1 s of a core; a 70B
model's ~45 s).

A stamp keeps a file's device, inode, size, mtime and ctime beside the sha256 it matched. A
write, a truncation, or a file copied or renamed over it changes the ctime or the inode, so the
next load hashes it again. ctime carries the guarantee because user space cannot set it (short
of changing the clock); mtime alone can be put back with `touch -d`. A file changed less than
SETTLE_NS before its hash began gets no stamp: coarse file-system clocks, or a write racing the
hash, could otherwise leave a changed file with its old stat.

Stamps do not guard against whoever can write the stamp folder itself (by default the user's
own cache folder). `EDGEDS_VERIFY=always` hashes every file at every load.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

SETTLE_NS = 2_000_000_000


def cache_folder() -> Path | None:
    """edgeds' cache folder ($EDGEDS_CACHE_DIR, else the XDG cache folder); None without a home."""
    root = os.environ.get("EDGEDS_CACHE_DIR")
    if root:
        return Path(root)
    try:
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgeds"
    except RuntimeError:  # no home folder (a bare service account)
        return None


def stamp_folder() -> Path | None:
    """Where stamps live; None: no stamps (EDGEDS_VERIFY=always, or no cache folder)."""
    if os.environ.get("EDGEDS_VERIFY") == "always" or (root := cache_folder()) is None:
        return None
    return root / "verified"


def _identity(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _stamp_path(folder: Path, path: Path) -> Path:
    return folder / f"{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32]}.json"


def is_stamped(path: Path, st: os.stat_result, sha256: str) -> bool:
    """True when `path`, as `st` finds it now, is the file that matched `sha256` before."""
    folder = stamp_folder()
    if folder is None:
        return False
    try:
        stamp = json.loads(_stamp_path(folder, path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return stamp == {"sha256": sha256, "stat": _identity(st)}


def record(path: Path, st: os.stat_result, sha256: str, hash_started_ns: int) -> None:
    """Stamp `path` after it matched `sha256` in a hash begun at `hash_started_ns` (wall clock)
    on a file that `st` described before the hash."""
    folder = stamp_folder()
    if folder is None:
        return
    if max(st.st_mtime_ns, st.st_ctime_ns) > hash_started_ns - SETTLE_NS:
        return  # changed too recently to tell a later change apart
    try:
        if _identity(path.stat()) != _identity(st):
            return  # changed while it was hashed
        folder.mkdir(parents=True, exist_ok=True)
        target = _stamp_path(folder, path)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"sha256": sha256, "stat": _identity(st)}), encoding="utf-8")
        os.replace(tmp, target)
    except OSError:
        pass  # a read-only cache folder: every load hashes, as without stamps
