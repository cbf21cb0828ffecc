"""Every package of the source tree is one that `pip install .` installs: the package list in
pyproject.toml is explicit, and a package left out of it works in an editable install (the tests'
own) but is missing from a wheel."""

from __future__ import annotations

import tomllib

from conftest import REPO


def test_every_package_folder_is_installed():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    folders = {"edgeds": REPO / "edgeds", "edgeds_export": REPO / "export"}
    found = {
        ".".join([top, *init.parent.relative_to(root).parts])
        for top, root in folders.items()
        for init in root.rglob("__init__.py")
    }
    assert found <= listed, sorted(found - listed)
