"""Target names at remote sites: a destination's template filled in for one transfer."""

from __future__ import annotations

import posixpath
import string
from datetime import datetime
from typing import Any

TOKENS = ("destination", "target", "dirname", "basename", "data_file_id", "transfer_id", "date")


class NamingError(ValueError):
    """A template that cannot produce a safe target path."""


def target_path(
    template: str,
    *,
    destination: str,
    target: str,
    data_file_id: str,
    transfer_id: int,
    when: datetime,
) -> str:
    """Fill `template`; `{date:%Y%m%d}` takes any strftime format (default `%Y%m%d`).

    The result is relative to the host's directory and may not climb out of it.
    """
    values: dict[str, Any] = {
        "destination": destination,
        "target": target.lstrip("/"),
        "dirname": posixpath.dirname(target.lstrip("/")),
        "basename": posixpath.basename(target),
        "data_file_id": data_file_id,
        "transfer_id": transfer_id,
        "date": DateToken(when),
    }
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template)]
    except ValueError as exc:
        raise NamingError(f"target template {template!r} is malformed: {exc}") from None
    for name in names:
        if name is not None and name not in values:
            raise NamingError(
                f"unknown token {{{name}}} in target template {template!r}: "
                f"use {', '.join('{' + t + '}' for t in TOKENS)}"
            )
    try:
        path = template.format_map(values)
    except (ValueError, IndexError) as exc:
        raise NamingError(f"target template {template!r} is malformed: {exc}") from None
    path = posixpath.normpath(path.lstrip("/"))
    if path in ("", ".") or path == ".." or path.startswith("../"):
        raise NamingError(f"target template {template!r} gives an unsafe path {path!r}")
    return path


class DateToken:
    """`{date}` in a template: strftime by its format spec (default %Y%m%d)."""

    def __init__(self, when: datetime) -> None:
        self.when = when

    def __format__(self, spec: str) -> str:
        return self.when.strftime(spec or "%Y%m%d")
