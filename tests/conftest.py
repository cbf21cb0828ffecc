from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import make_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


class _CheckoutExporter(importlib.abc.MetaPathFinder):
    """`edgeds_export` from this checkout's export/ folder, which pyproject's package-dir maps
    to that name: the tests then exercise this checkout's exporter, as they do its `edgeds`,
    whichever checkout an editable install points at (or an install that predates the name)."""

    def find_spec(self, name, path=None, target=None):
        if name != "edgeds_export":
            return None  # submodules resolve through the package's __path__
        folder = REPO / "export"
        return importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])


sys.meta_path.insert(0, _CheckoutExporter())
SHARED = REPO.parent / "shared"
CONTEXT = 128


@pytest.fixture(autouse=True)
def _own_stamp_folder(tmp_path_factory, monkeypatch):
    """Each test starts with no checksum stamps and never writes the user's cache folder."""
    monkeypatch.setenv("EDGEDS_CACHE_DIR", str(tmp_path_factory.mktemp("edgeds-cache")))
    monkeypatch.delenv("EDGEDS_VERIFY", raising=False)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """kind -> folder of a tiny random checkpoint; built once per session."""
    root = tmp_path_factory.mktemp("checkpoints")
    cache = {}

    def get(kind: str) -> Path:
        if kind not in cache:
            cache[kind] = make_checkpoint(root / kind, kind, seed=0)
        return cache[kind]

    return get


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory, checkpoints):
    """(kind, weights) -> exported artifact folder (both formats); built once per session."""
    from edgeds_export import export_checkpoint

    root = tmp_path_factory.mktemp("artifacts")
    cache = {}

    def get(kind: str, weights: str = "fp32", kv_cache: str = "float32") -> Path:
        if (kind, weights, kv_cache) not in cache:
            out = root / f"{kind}-{weights}-{kv_cache}"
            export_checkpoint(checkpoints(kind), out, weights=weights, context=CONTEXT,
                              kv_cache=kv_cache)
            cache[kind, weights, kv_cache] = out
        return cache[kind, weights, kv_cache]

    return get


@pytest.fixture(scope="session")
def trt_artifacts(tmp_path_factory, checkpoints):
    """(kind, weights) -> a `--target tensorrt` export (ONNX only, batches up to 8)."""
    from edgeds_export import export_checkpoint

    root, cache = tmp_path_factory.mktemp("trt"), {}

    def get(kind: str, weights: str = "int8") -> Path:
        if (kind, weights) not in cache:
            out = root / f"{kind}-{weights}"
            export_checkpoint(
                checkpoints(kind),
                out,
                formats=("onnx",),
                weights=weights,
                context=CONTEXT,
                target="tensorrt",
                max_batch=8,
            )
            cache[kind, weights] = out
        return cache[kind, weights]

    return get
