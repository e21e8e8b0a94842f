"""A non-editable build (what `pip install .` installs) ships every package and the command.

The wheel is built from the committed tree (`git archive HEAD`), as a fresh clone would.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("core", "workflows", "activities", "workers", "portal", "cli")


def committed_tree(dest: Path) -> Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: cannot take the committed tree")
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", "HEAD"], capture_output=True
    )
    if archive.returncode != 0:
        pytest.skip(f"git archive failed: {archive.stderr.decode().strip()[:200]}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def test_wheel_has_every_package_and_the_ecpds_command(tmp_path: Path) -> None:
    source = committed_tree(tmp_path / "src")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
    )
    if build.returncode != 0 and "setuptools" in build.stderr and "version" in build.stderr:
        pytest.skip(f"pip cannot fetch the build backend: {build.stderr.strip()[-200:]}")
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("ecpds-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    missing = [
        str(init.parent.relative_to(source))
        for folder in FOLDERS
        for init in (source / folder).rglob("__init__.py")
        if f"ecpds/{init.relative_to(source).as_posix()}" not in names
    ]
    assert missing == [], "add these packages to [tool.setuptools] packages in pyproject.toml"
    assert "ecpds/core/migrations/script.py.mako" in names
    assert "ecpds = ecpds.cli.main:main" in scripts
