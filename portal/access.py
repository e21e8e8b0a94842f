"""The data portal's log-ins and safe paths, over the access layer in `ecpds.core.access`.

Every front end (HTTPS, S3, FTP, SFTP, MQTT) logs its users in here and asks
`Principal.check` before touching a destination, so one set of rules holds for all.
"""

from __future__ import annotations

from urllib.parse import unquote

import asyncssh
from sqlalchemy import Engine

from ecpds.core import access
from ecpds.core.access import Principal
from ecpds.core.db import session_scope
from ecpds.core.errors import BadPath
from ecpds.core.secrets import CredentialBox

# --- paths ------------------------------------------------------------------------------------


def split_path(path: str, cwd: str = "/") -> tuple[str, ...]:
    """The parts of `path` (resolved against `cwd`) inside the user's root, or BadPath.

    Percent-encoding is undone until stable so `%2e%2e` and `%252e%252e` are `..`;
    backslashes count as separators; NUL and control characters are refused;
    `..` above the root is refused rather than clamped, so nobody mistakes where it lands.
    """
    text = path
    for _ in range(4):
        decoded = unquote(text)
        if decoded == text:
            break
        text = decoded
    else:
        raise BadPath(f"path {path!r} is encoded too many times")
    if any(ch in text for ch in "\x00\r\n") or any(ord(ch) < 32 for ch in text):
        raise BadPath(f"path {path!r} contains control characters")
    text = text.replace("\\", "/")
    if not text.startswith("/"):
        text = cwd.rstrip("/") + "/" + text
    parts: list[str] = []
    for part in text.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise BadPath(f"path {path!r} leaves the root")
            parts.pop()
            continue
        parts.append(part)
    return tuple(parts)


def join_path(parts: tuple[str, ...] | list[str]) -> str:
    return "/" + "/".join(parts)


# --- log-ins --------------------------------------------------------------------------------


def login_password(engine: Engine, name: str, password: str) -> Principal:
    """The principal for a name and password (argon2: call it off the event loop)."""
    with session_scope(engine) as session:
        user = access.password_user(session, name=name, password=password)
        return access.principal_for(session, user)


def login_token(engine: Engine, token: str) -> Principal:
    with session_scope(engine) as session:
        return access.principal_for(session, access.token_user(session, token=token))


def login_public_key(engine: Engine, name: str, key: asyncssh.SSHKey) -> Principal:
    """The principal whose registered SSH keys include `key`."""
    public_key = key.export_public_key("openssh").decode()
    with session_scope(engine) as session:
        user = access.public_key_user(session, name=name, public_key=public_key)
        return access.principal_for(session, user)


def user_has_keys(engine: Engine, name: str) -> bool:
    with session_scope(engine) as session:
        return access.has_ssh_keys(session, name=name)


def login_access_key(
    engine: Engine, box: CredentialBox, access_key_id: str
) -> tuple[Principal, str]:
    """The principal owning an S3 access key id, and the key's secret to check a signature."""
    with session_scope(engine) as session:
        user, secret = access.access_key_user(session, box=box, access_key_id=access_key_id)
        return access.principal_for(session, user), secret
