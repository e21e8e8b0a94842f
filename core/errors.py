"""The one family of refusals: bad input, unknown names, conflicts, failed log-ins, denials.

Each carries `status`, the HTTP code the REST API answers with; the other doors (S3,
FTP, SFTP, MQTT) map the same classes to their own codes.
"""

import difflib
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import ValidationError


class EcpdsError(Exception):
    """A request ecpds refuses, with a one-line message saying what was wrong."""

    status = 400


class BadPath(EcpdsError):
    status = 400


class Unauthenticated(EcpdsError):
    status = 401


class Denied(EcpdsError):
    status = 403


class NotFound(EcpdsError):
    status = 404


class Conflict(EcpdsError):
    status = 409


class Invalid(EcpdsError):
    status = 422


class Unavailable(EcpdsError):
    """A service the request needs (the workflow engine) does not answer; try again later."""

    status = 503


def unknown(kind: str, name: str, known: Iterable[str]) -> str:
    """The words for a name not found: "unknown host 'h1' (did you mean 'h2'?)" when one
    of `known` is close.

    `known` must hold only names the caller may see: a suggestion discloses a name.
    """
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {kind} {name!r}{hint}"


OUT_OF_RANGE = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def validation_message(errors: ValidationError | Sequence[Any]) -> str:
    """Pydantic errors as one line: `where: what` for each problem, joined by `; `."""
    parts = []
    for error in errors.errors() if isinstance(errors, ValidationError) else errors:
        where = ".".join(str(p) for p in error["loc"] if p not in ("body", "query", "path"))
        what = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        what = what.removeprefix("Value error, ")  # our own checks' messages stand alone
        if where and error["type"] in OUT_OF_RANGE:
            where = f"{where} {error['input']}"  # "priority 120: ...", as core's own checks say
        parts.append(f"{where}: {what}" if where else what)
    return "; ".join(parts)
