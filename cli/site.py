"""Site files (configuration as code): read and checked here, applied by the portal.

String values may say "${VAR}" to take a secret from the environment, so site files
can live in git without passwords.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlmodel import SQLModel

from ecpds.cli.client import CliError
from ecpds.core.models import AliasCreate, DataUserCreate, DestinationCreate, HostCreate

# Tables in the order the portal applies them: hosts before the destinations using them.
TABLES: dict[str, type[SQLModel]] = {
    "host": HostCreate,
    "destination": DestinationCreate,
    "alias": AliasCreate,
    "user": DataUserCreate,
}
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(value: Any, where: str, key: str) -> Any:
    if isinstance(value, str):

        def lookup(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise CliError(f"{where}: environment variable '{name}' (in '{key}') is not set")
            return os.environ[name]

        return ENV_REFERENCE.sub(lookup, value)
    if isinstance(value, list):
        return [_expand(item, where, key) for item in value]
    if isinstance(value, dict):
        return {k: _expand(v, where, f"{key}.{k}") for k, v in value.items()}
    return value


def _unknown_key(where: str, key: str, known: list[str]) -> CliError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return CliError(f"{where}: unknown key '{key}'{hint}")


def _check_entry(label: str, table: str, index: int, entry: Any) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise CliError(f"{label}: '{table}' must be an array of tables [[{table}]]")
    name = entry.get("name")
    where = f"{label}: {table} '{name}'" if name else f"{label}: {table} #{index + 1}"
    if not name:
        raise CliError(f"{where}: missing key 'name'")
    model = TABLES[table]
    known = list(model.model_fields)
    for key in entry:
        if key not in known:
            raise _unknown_key(where, key, known)
    expanded = {key: _expand(value, where, key) for key, value in entry.items()}
    try:
        model.model_validate(expanded)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = ".".join(str(part) for part in error["loc"])
        raise CliError(f"{where}: {loc}: {error['msg']}") from None
    return expanded


def load_site(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The site file as the JSON body of POST /apply, or CliError naming the first problem."""
    label = path.name
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CliError(f"{label}: not valid TOML: {exc}") from None
    for table in raw:
        if table not in TABLES:
            hint = ", ".join(f"[[{name}]]" for name in TABLES)
            raise CliError(f"{label}: unknown table '{table}' (expected {hint})")
    spec: dict[str, list[dict[str, Any]]] = {}
    for table in TABLES:
        entries = raw.get(table, [])
        if not isinstance(entries, list):
            raise CliError(f"{label}: '{table}' must be an array of tables [[{table}]]")
        seen: set[str] = set()
        checked = []
        for index, entry in enumerate(entries):
            item = _check_entry(label, table, index, entry)
            if item["name"] in seen:
                raise CliError(f"{label}: {table} '{item['name']}' appears twice")
            seen.add(item["name"])
            checked.append(item)
        spec[table] = checked
    return spec
