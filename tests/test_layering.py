"""The layering rule: workflow modules import nothing that touches SQL, fsspec or a Temporal client.

The rule, checked on the source of every `workflows/*.py` module:

1. Outside `with workflow.unsafe.imports_passed_through():` a workflow module imports only
   the standard library, `temporalio` (any part but `temporalio.client`), the engine's
   names module `ecpds.core.engine` and other workflow modules.
2. Inside that block it imports only activity modules (`ecpds.activities.*`, for the
   activity classes whose methods it names), the names module and other workflow modules
   (passed through so the sandbox does not import them again for every run).
3. Nothing a workflow module imports, directly or through any ecpds module on the way
   that is not an activity module (package `__init__`s included), is `sqlalchemy`,
   `sqlmodel`, `fsspec` or `temporalio.client`. Activity modules may use all of these:
   the worker runs them outside the workflow sandbox.

The names module itself imports only the standard library and `temporalio.common`, and
importing it loads none of the forbidden modules (checked in a fresh interpreter).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted(p for p in (ROOT / "workflows").glob("*.py") if p.name != "__init__.py")
NAMES = "ecpds.core.engine"
FORBIDDEN = ("sqlalchemy", "sqlmodel", "fsspec", "temporalio.client")


def _module_name(path: Path) -> str:
    return f"ecpds.{path.parent.name}.{path.stem}"


def _is_passed_through(node: ast.With) -> bool:
    return any(
        isinstance(item.context_expr, ast.Call)
        and ast.unparse(item.context_expr.func).endswith("imports_passed_through")
        for item in node.items
    )


def _imported(node: ast.Import | ast.ImportFrom, package: str) -> list[str]:
    """The modules an import statement names (relative imports resolved in `package`)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.module == "__future__":
        return []
    base = node.module or ""
    if node.level:
        parts = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*parts, base] if base else parts)
    # `from pkg import name` may import the submodule pkg.name: count both.
    return [base, *(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")]


def _imports(path: Path, package: str) -> tuple[list[str], list[str]]:
    """(imports outside pass-through blocks, imports inside them), anywhere in the module."""
    outside: list[str] = []
    inside: list[str] = []

    def visit(node: ast.AST, passed: bool) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom):
            (inside if passed else outside).extend(_imported(node, package))
        for child in ast.iter_child_nodes(node):
            visit(child, passed or (isinstance(node, ast.With) and _is_passed_through(node)))

    visit(ast.parse(path.read_text(), str(path)), False)
    return outside, inside


def _source(module: str) -> Path | None:
    """The file of an ecpds module (a package's `__init__.py`), None if it is not one.

    Found by path, not imported: `ecpds.X.Y` is `X/Y.py` (setuptools `package-dir`).
    """
    parts = module.split(".")
    if parts[0] != "ecpds" or len(parts) < 2:
        return None
    base = ROOT.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _is_stdlib(module: str) -> bool:
    return module.split(".")[0] in sys.stdlib_module_names


def _allowed_outside(module: str) -> bool:
    if _is_stdlib(module) or module in ("ecpds", "ecpds.core", "ecpds.workflows", NAMES):
        return True
    if module == "temporalio" or module.startswith("temporalio."):
        return not _is_forbidden(module)
    return module.startswith((f"{NAMES}.", "ecpds.workflows."))


def _allowed_inside(module: str) -> bool:
    return module in ("ecpds", "ecpds.activities", NAMES) or module.startswith(
        (f"{NAMES}.", "ecpds.activities.", "ecpds.workflows.")
    )


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _is_forbidden(module: str) -> bool:
    return any(_under(module, f) for f in FORBIDDEN)


def _is_activity(module: str) -> bool:
    return module.startswith("ecpds.activities.")


def _reached(start: str) -> dict[str, str]:
    """Every module imported from `start`, through ecpds modules that are not activities.

    Maps each module to the ecpds module that imports it, to say where a bad one comes from.
    """
    seen: dict[str, str] = {}
    todo = [start]
    while todo:
        current = todo.pop()
        path = _source(current)
        if path is None:
            continue
        package = current if path.name == "__init__.py" else current.rpartition(".")[0]
        outside, inside = _imports(path, package)
        for module in outside + inside:
            # Importing a.b.c runs the __init__ of a and a.b first.
            parts = module.split(".")
            for n in range(1, len(parts) + 1):
                name = ".".join(parts[:n])
                if name in seen or name == current:
                    continue
                seen[name] = current
                if name.startswith("ecpds.") and not _is_activity(name):
                    todo.append(name)
    return seen


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_module_imports_follow_the_rule(path: Path) -> None:
    module = _module_name(path)
    outside, inside = _imports(path, module.rpartition(".")[0])
    wrong_outside = sorted({m for m in outside if not _allowed_outside(m)})
    assert not wrong_outside, f"{path.name} imports outside imports_passed_through: {wrong_outside}"
    wrong_inside = sorted({m for m in inside if not _allowed_inside(m)})
    assert not wrong_inside, (
        f"{path.name} passes through what is not an activity, workflow or names module: "
        + str(wrong_inside)
    )


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_module_reaches_no_sql_fsspec_or_client(path: Path) -> None:
    reached = _reached(_module_name(path))
    bad = sorted(
        {f"{f} (imported by {by})" for m, by in reached.items() for f in FORBIDDEN if _under(m, f)}
    )
    assert not bad, f"{path.name} reaches, through modules that are not activities: {bad}"


def test_the_names_module_imports_only_the_standard_library_and_temporalio_common() -> None:
    path = _source(NAMES)
    assert path is not None, f"{NAMES} is missing"
    outside, inside = _imports(path, "ecpds.core")
    # The roles module holds only what settings need too; it imports the standard library.
    assert {m.removeprefix("ecpds.core.").split(".")[0] for m in inside} <= {"roles"}
    roles_outside, roles_inside = _imports(ROOT / "core" / "roles.py", "ecpds.core")
    assert not roles_inside and all(_is_stdlib(m) for m in roles_outside)
    others = sorted(
        m
        for m in set(outside)
        if not (
            _is_stdlib(m)
            or m == "temporalio"
            or _under(m, "temporalio.common")
            or _under(m, "ecpds.core.roles")
        )
    )
    assert not others, f"{NAMES} imports {others}"
    package_imports = _imports(ROOT / "core" / "__init__.py", "ecpds.core")
    assert package_imports == ([], []), "ecpds.core's __init__ must import nothing"


def test_importing_the_names_module_loads_no_sql_fsspec_or_client() -> None:
    probe = (
        f"import sys, {NAMES}\n"
        f"print(' '.join(m for m in sys.modules if m.split('.')[0] in "
        f"('sqlalchemy', 'sqlmodel', 'fsspec', 'pydantic') or m.startswith('temporalio.client')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    assert loaded == [], f"importing {NAMES} loads {sorted(loaded)}"


def test_the_rule_catches_a_bad_import(tmp_path: Path) -> None:
    """The checker itself: a workflow that imports the catalog outside and inside the block."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from temporalio import workflow\n"
        "from temporalio.client import Client\n"
        "with workflow.unsafe.imports_passed_through():\n"
        "    from ecpds.core.db import session_scope\n"
        "    from ecpds.activities.storage import StorageActivities\n"
    )
    outside, inside = _imports(bad, "ecpds.workflows")
    assert [m for m in outside if not _allowed_outside(m)] == [
        "temporalio.client",
        "temporalio.client.Client",
    ]
    assert [m for m in inside if not _allowed_inside(m)] == [
        "ecpds.core.db",
        "ecpds.core.db.session_scope",
    ]
    assert _is_forbidden("sqlalchemy.orm") and not _is_forbidden("temporalio.common")
