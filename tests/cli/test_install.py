"""`pip install .` (not editable) must ship every package folder and the `ecpds` command.

setuptools installs only the packages pyproject.toml lists, so a new sub-package folder
that is not listed works in the editable development install and is missing everywhere else.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_listed_for_setuptools() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    folders = {folder: package for package, folder in setuptools["package-dir"].items()}
    listed = set(setuptools["packages"])
    found = {
        ".".join([folders[init.relative_to(ROOT).parts[0]], *init.relative_to(ROOT).parts[1:-1]])
        for folder in folders
        for init in (ROOT / folder).rglob("__init__.py")
    }
    assert sorted(found - listed) == [], "add these to [tool.setuptools] packages"
    assert "*.mako" in setuptools["package-data"]["*"]  # alembic's migration template
    assert project["project"]["scripts"]["ecpds"] == "ecpds.cli.main:main"
