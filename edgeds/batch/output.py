"""The output JSONL of a batch job: append-only, flushed per line, fsynced every few seconds.

On resume it reads what is there: every complete line is a finished record (kept), and a last
line cut by a crash is cut off so its record is done again. A sidecar (`OUT.job.json`) holds
the job's settings and the artifact's hash; a resume with other settings is refused.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..errors import EdgedsError

FSYNC_EVERY_S = 2.0


class ResumeError(EdgedsError):
    pass


class OutputLog:
    def __init__(self, path: Path | None, settings: dict, overwrite: bool):
        """path None writes to stdout (no resume)."""
        self.path = path
        self.done_ids: set = set()
        self.done_lines: set[int] = set()
        self.resumed = 0
        self.resumed_failed = 0
        self._last_sync = time.monotonic()
        if path is None:
            import sys

            self._f = sys.stdout
            return
        sidecar = path.with_name(path.name + ".job.json")
        if overwrite:
            path.unlink(missing_ok=True)
            sidecar.unlink(missing_ok=True)
        if path.exists() and path.stat().st_size:
            self._check_settings(sidecar, settings)
            self._load_done(path)
        sidecar.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        self._f = open(path, "a", encoding="utf-8")

    def _check_settings(self, sidecar: Path, settings: dict) -> None:
        if not sidecar.exists():
            raise ResumeError(f"{self.path} exists but has no {sidecar.name}; pass --overwrite to start over")
        old = json.loads(sidecar.read_text(encoding="utf-8"))
        changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if changed:
            raise ResumeError(
                f"cannot resume {self.path}: settings differ from the first run ({', '.join(changed)}); "
                "pass --overwrite to start over, or another --output"
            )

    def _load_done(self, path: Path) -> None:
        good_end = 0
        with open(path, "rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    break  # a line cut by a crash: drop it, its record is redone
                try:
                    rec = json.loads(raw)
                except ValueError:
                    break
                if rec.get("id") is not None:
                    self.done_ids.add(_key(rec["id"]))
                if "line" in rec:
                    self.done_lines.add(rec["line"])
                if "error" in rec:
                    self.resumed_failed += 1
                good_end += len(raw)
                self.resumed += 1
        if good_end != path.stat().st_size:
            with open(path, "r+b") as f:
                f.truncate(good_end)

    def is_done(self, line: int, rid) -> bool:
        return line in self.done_lines or (rid is not None and _key(rid) in self.done_ids)

    def write(self, record: dict) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()
        if self.path is not None and time.monotonic() - self._last_sync >= FSYNC_EVERY_S:
            os.fsync(self._f.fileno())
            self._last_sync = time.monotonic()

    def close(self) -> None:
        self._f.flush()
        if self.path is not None:
            os.fsync(self._f.fileno())
            self._f.close()


def _key(rid) -> str:
    return json.dumps(rid)
