"""Who may do what in the data portal: log-ins, a user's destinations and operations, safe paths.

Every front-end (HTTPS, S3, FTP, SFTP) authenticates here and asks `Principal.check`
before touching a destination, so one set of rules holds for all of them.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
from dataclasses import dataclass
from urllib.parse import unquote

import asyncssh
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from ecpds.core.db import session_scope
from ecpds.core.models import (
    AccessKey,
    ApiToken,
    DataUser,
    DataUserDestination,
    DataUserPolicy,
    Destination,
    Operation,
    PolicyDestination,
)
from ecpds.core.secrets import CredentialBox, token_digest, verify_password


class AccessError(Exception):
    """A request the portal refuses; `status` is the HTTP code the front-ends map from."""

    status = 403


class AuthenticationFailed(AccessError):
    status = 401


class AccessDenied(AccessError):
    status = 403


class NotFound(AccessError):
    status = 404


class BadPath(AccessError):
    status = 400


@dataclass(frozen=True)
class Principal:
    """A logged-in data user: the destinations it reaches and what it may do there."""

    user_id: int
    name: str
    admin: bool
    operations: frozenset[str]
    destinations: tuple[str, ...]
    path_pattern: str | None = None

    def check(self, operation: Operation, destination: str, name: str = "") -> None:
        """Raise unless this user may run `operation` on `destination/name`."""
        if destination not in self.destinations:
            # Same answer for "absent" and "not yours": no probing of other users' names.
            raise NotFound(f"no destination {destination!r}")
        if operation.value not in self.operations:
            raise AccessDenied(f"user {self.name} may not {operation.value} in {destination}")
        if name and not self.matches(destination, name):
            raise AccessDenied(f"{destination}/{name} is outside the paths of user {self.name}")

    def matches(self, destination: str, name: str) -> bool:
        """Whether `destination/name` fits the user's path pattern (a full-match regex)."""
        if not self.path_pattern:
            return True
        return re.fullmatch(self.path_pattern, f"{destination}/{name}") is not None


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


# --- authentication ---------------------------------------------------------------------------


def _destinations_of(session: Session, user: DataUser) -> tuple[str, ...]:
    if user.admin:
        rows = session.exec(select(Destination.name)).all()
    else:
        direct = select(Destination.name).join(
            DataUserDestination, col(DataUserDestination.destination_id) == Destination.id
        )
        direct = direct.where(DataUserDestination.user_id == user.id)
        via_policy = (
            select(Destination.name)
            .join(PolicyDestination, col(PolicyDestination.destination_id) == Destination.id)
            .join(DataUserPolicy, col(DataUserPolicy.policy_id) == PolicyDestination.policy_id)
            .where(DataUserPolicy.user_id == user.id)
        )
        rows = list(session.exec(direct).all()) + list(session.exec(via_policy).all())
    return tuple(sorted(set(rows)))


def principal_for(session: Session, user: DataUser) -> Principal:
    assert user.id is not None
    return Principal(
        user_id=user.id,
        name=user.name,
        admin=user.admin,
        operations=frozenset(user.operations),
        destinations=_destinations_of(session, user),
        path_pattern=user.path_pattern,
    )


def _active_user(session: Session, name: str) -> DataUser | None:
    user = session.exec(select(DataUser).where(DataUser.name == name)).first()
    return user if user is not None and user.active else None


# argon2 is slow on purpose; a password already checked against the same hash is not
# checked again, so clients that open a connection per file pay for it once.
_verified: set[tuple[int, str, str]] = set()
_VERIFIED_MAX = 4096


def login_password(engine: Engine, name: str, password: str) -> Principal:
    """The principal for a name and password (argon2: call it off the event loop)."""
    with session_scope(engine) as session:
        user = _active_user(session, name)
        if user is None or user.id is None or not user.password_hash:
            raise AuthenticationFailed(f"wrong user name or password for {name!r}")
        key = (user.id, user.password_hash, hashlib.sha256(password.encode()).hexdigest())
        if key not in _verified:
            if not verify_password(user.password_hash, password):
                raise AuthenticationFailed(f"wrong user name or password for {name!r}")
            if len(_verified) >= _VERIFIED_MAX:
                _verified.clear()
            _verified.add(key)
        return principal_for(session, user)


def login_token(engine: Engine, token: str) -> Principal:
    with session_scope(engine) as session:
        row = session.exec(
            select(ApiToken).where(ApiToken.token_sha256 == token_digest(token))
        ).first()
        user = session.get(DataUser, row.user_id) if row else None
        if user is None or not user.active:
            raise AuthenticationFailed("unknown or revoked token")
        return principal_for(session, user)


def login_public_key(engine: Engine, name: str, key: asyncssh.SSHKey) -> Principal:
    """The principal whose registered SSH keys include `key`."""
    wanted = key.export_public_key("openssh").decode().split()[:2]
    with session_scope(engine) as session:
        user = _active_user(session, name)
        if user is not None:
            for line in user.ssh_keys:
                if line.split()[:2] == wanted:
                    return principal_for(session, user)
        raise AuthenticationFailed(f"public key not accepted for {name!r}")


def user_has_keys(engine: Engine, name: str) -> bool:
    with session_scope(engine) as session:
        user = _active_user(session, name)
        return bool(user and user.ssh_keys)


def login_access_key(
    engine: Engine, box: CredentialBox, access_key_id: str
) -> tuple[Principal, str]:
    """The principal owning an S3 access key id, and the key's secret to check a signature."""
    with session_scope(engine) as session:
        row = session.exec(
            select(AccessKey).where(AccessKey.access_key_id == access_key_id)
        ).first()
        user = session.get(DataUser, row.user_id) if row else None
        if row is None or user is None or not user.active:
            raise AuthenticationFailed(f"unknown access key {access_key_id!r}")
        secret = box.open(row.secret_encrypted)["secret"]
        return principal_for(session, user), secret


def create_access_key(session: Session, box: CredentialBox, user: DataUser) -> tuple[str, str]:
    """A new (access key id, secret) for `user`; the secret is shown once and kept sealed."""
    assert user.id is not None
    alphabet = string.ascii_uppercase + string.digits
    key_id = "EC" + "".join(secrets.choice(alphabet) for _ in range(18))
    secret = secrets.token_urlsafe(30)
    sealed = box.seal({"secret": secret})
    assert sealed is not None
    session.add(AccessKey(user_id=user.id, access_key_id=key_id, secret_encrypted=sealed))
    session.flush()
    return key_id, secret
