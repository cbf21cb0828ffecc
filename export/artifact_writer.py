"""Assembles an artifact folder: graphs, tokenizer, chat template, generation defaults, manifest.

Everything is written into a temporary sibling folder and renamed into place at the end, so a
failed or interrupted export never leaves a half-written artifact behind, and --overwrite
replaces an old artifact only then (and only an artifact: check_output).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from edgeds.artifact import describe_files
from edgeds.errors import ArtifactError
from edgeds.manifest import MANIFEST, listed_files, parse, seal

from .checkpoint import Checkpoint
from .compact_tokenizer import COMPACT_FILE, write_compact_tokenizer
from .errors import ExportError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
log = logging.getLogger("edgeds.export")


def check_output(out: Path, src: Path, overwrite: bool) -> None:
    """Refuse, before anything is written, an output that is or holds the checkpoint (or lies
    inside it), and an existing output unless --overwrite is given and it is an edgeds artifact
    and nothing else: a folder whose manifest says so, holding only the files it lists."""
    out_r, src_r = out.expanduser().resolve(), src.resolve()
    if out_r == src_r or src_r in out_r.parents or out_r in src_r.parents:
        raise ExportError(
            f"output '{out}' and checkpoint '{src}' overlap; write the artifact to its own folder"
        )
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise ExportError(f"output folder '{out}' already exists; pass --overwrite to replace it")
    if out.is_symlink() or not out.is_dir():
        raise ExportError(f"--overwrite replaces an edgeds artifact folder; '{out}' is "
                          f"{'a symbolic link' if out.is_symlink() else 'not a folder'}")
    if (listed := listed_files(out)) is None:
        raise ExportError(
            f"--overwrite replaces an edgeds artifact; '{out}' has no edgeds manifest "
            f"({MANIFEST}), so it is left alone"
        )
    for entry in sorted(out.iterdir()):
        if entry.name != MANIFEST and (
            entry.name not in listed or entry.is_symlink() or not entry.is_file()
        ):
            raise ExportError(
                f"--overwrite replaces an edgeds artifact and nothing else; '{out}' also holds "
                f"'{entry.name}', which its manifest does not list: move it, or pick another output"
            )


@contextmanager
def staging_folder(out: Path, src: Path, overwrite: bool):
    """Yields a temporary folder next to `out`; swaps it in for `out` only if the block succeeds
    (check_output first): the old artifact is renamed aside, the new one renamed into place, and
    only then is the old one deleted, so a failure at any point leaves one whole artifact."""
    check_output(out, src, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        _swap_in(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno == 28:
            raise ExportError(f"disk full while writing the artifact under '{out.parent}'") from exc
        raise ExportError(f"cannot write the artifact: {exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.rename(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def check_free_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise ExportError(
            f"not enough disk space under '{folder}': the artifact needs about "
            f"{needed / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
        )


def copy_tokenizer(ckpt: Checkpoint, tmp: Path) -> dict:
    if not (ckpt.root / "tokenizer.json").is_file():
        raise ExportError(
            "the checkpoint has no tokenizer.json (the runtime needs the fast tokenizer file)"
        )
    for name in TOKENIZER_FILES:
        if (ckpt.root / name).is_file():
            shutil.copyfile(ckpt.root / name, tmp / name)
    tok_config = _json(ckpt.root / "tokenizer_config.json")
    template = tok_config.get("chat_template")
    if (ckpt.root / "chat_template.jinja").is_file():
        template = (ckpt.root / "chat_template.jinja").read_text(encoding="utf-8")
    if isinstance(template, list):  # a list of named templates: take the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if template:
        (tmp / "chat_template.jinja").write_text(template, encoding="utf-8")
    why = write_compact_tokenizer(tmp / "tokenizer.json", tmp / COMPACT_FILE)
    if why:
        log.info("tokenizer: no compact form (%s); the runtime reads tokenizer.json", why)
    return {
        "file": "tokenizer.json",
        "compact": None if why else COMPACT_FILE,
        "chat_template": "chat_template.jinja" if template else None,
        "bos_token": _token(tok_config.get("bos_token")),
        "eos_token": _token(tok_config.get("eos_token")),
        "add_bos_token": bool(tok_config.get("add_bos_token", False)),
    }


def generation_defaults(ckpt: Checkpoint) -> dict:
    gen = _json(ckpt.root / "generation_config.json")
    eos = gen.get("eos_token_id", ckpt.config.get("eos_token_id"))
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    return {
        "bos_token_id": gen.get("bos_token_id", ckpt.config.get("bos_token_id")),
        "eos_token_ids": eos_ids,
        "temperature": gen.get("temperature") if gen.get("do_sample") else 0.0,
        "top_p": gen.get("top_p", 1.0) if gen.get("do_sample") else 1.0,
        "top_k": gen.get("top_k", 0) if gen.get("do_sample") else 0,
    }


def write_manifest(tmp: Path, manifest_body: dict) -> dict:
    files = sorted(p.name for p in tmp.iterdir() if p.is_file() and p.name != MANIFEST)
    manifest = seal({**manifest_body, "files": describe_files(tmp, files)})
    # The runtime's reading of it: the exporter never leaves a manifest the runtime refuses
    # (its fields and the runtime's are written in two places; this is where they meet).
    try:
        parse(manifest)
    except ArtifactError as exc:  # a defect of the exporter's, not of the user's input
        raise RuntimeError(f"the exporter wrote a manifest the runtime refuses: {exc}") from exc
    (tmp / MANIFEST).write_text(
        json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8"
    )
    return manifest


def library_versions() -> dict:
    versions = {"python": platform.python_version()}
    for pkg in ("edgeds", "torch", "transformers", "safetensors", "onnx", "openvino", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return versions


def _json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ExportError(f"{path.name} is not valid JSON: {exc}") from exc


def _token(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value
