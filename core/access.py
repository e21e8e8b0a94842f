"""Who a data user is and what it may do: log-ins, its destinations (direct and by policy).

The one home of the rule every door applies (REST, `/data/`, S3, FTP, SFTP, MQTT and
ingest): each authenticates here and asks `Principal.check` before touching a destination.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
from dataclasses import dataclass

from sqlmodel import Session, col, select

from ecpds.core.errors import Denied, NotFound, Unauthenticated, unknown
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
from ecpds.core.notifications import settings_of as notification_settings
from ecpds.core.notifications import topic_filter
from ecpds.core.secrets import CredentialBox, token_digest, verify_password


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
        self.check_destination(destination)
        if operation.value not in self.operations:
            raise Denied(f"user {self.name} may not {operation.value} in {destination}")
        if name and not self.matches(destination, name):
            raise Denied(f"{destination}/{name} is outside the paths of user {self.name}")

    def check_folder(self, destination: str, path: str) -> None:
        """Raise unless this user may make or remove the folder `destination/path`.

        Both need `mkdir` (removing an empty folder removes no data, so not `delete`),
        and the folder must be within the user's paths, as a file of that name would be.
        """
        self.check(Operation.MKDIR, destination, path)

    def check_destination(self, destination: str) -> None:
        if destination not in self.destinations:
            # Same answer for "absent" and "not yours": no probing of other users' names,
            # and suggestions only from the destinations this user reaches.
            raise NotFound(unknown("destination", destination, self.destinations))

    def matches(self, destination: str, name: str) -> bool:
        """Whether `destination/name` fits the user's path pattern (a full-match regex)."""
        if not self.path_pattern:
            return True
        return re.fullmatch(self.path_pattern, f"{destination}/{name}") is not None

    @property
    def visible(self) -> list[str] | None:
        """The destinations to filter catalog queries by; None means all of them (admins)."""
        return None if self.admin else list(self.destinations)


def user_destinations(session: Session, *, user: DataUser) -> list[str]:
    """The destinations `user` reaches: linked to it, or through one of its policies.

    Admins reach every destination.
    """
    if user.admin:
        return list(session.exec(select(Destination.name).order_by(Destination.name)).all())
    direct = (
        select(Destination.name)
        .join(DataUserDestination, col(DataUserDestination.destination_id) == Destination.id)
        .where(DataUserDestination.user_id == user.id)
    )
    via_policy = (
        select(Destination.name)
        .join(PolicyDestination, col(PolicyDestination.destination_id) == Destination.id)
        .join(DataUserPolicy, col(DataUserPolicy.policy_id) == PolicyDestination.policy_id)
        .where(DataUserPolicy.user_id == user.id)
    )
    return sorted(set(session.exec(direct).all()) | set(session.exec(via_policy).all()))


def principal_for(session: Session, user: DataUser) -> Principal:
    assert user.id is not None
    return Principal(
        user_id=user.id,
        name=user.name,
        admin=user.admin,
        operations=frozenset(user.operations),
        destinations=tuple(user_destinations(session, user=user)),
        path_pattern=user.path_pattern,
    )


def topic_filters(session: Session, principal: Principal) -> tuple[str, ...]:
    """The MQTT topic filters a user may subscribe to: its own and its destinations' topics."""
    user = session.get(DataUser, principal.user_id)
    filters = list(user.mqtt_topics) if user is not None else []
    rows = session.exec(
        select(Destination.name, Destination.notification).where(
            col(Destination.name).in_(principal.destinations)
        )
    ).all()
    for name, notification in rows:
        wanted = topic_filter(notification_settings(notification), name)
        if wanted:
            filters.append(wanted)
    return tuple(filters)


# --- log-ins ---------------------------------------------------------------------------------


def _active_user(session: Session, name: str) -> DataUser | None:
    user = session.exec(select(DataUser).where(DataUser.name == name)).first()
    return user if user is not None and user.active else None


# argon2 is slow on purpose; a password already checked against the same hash is not
# checked again, so clients that push many files or open a connection per file pay once.
# It holds only immutable facts ("this password matches this hash"): the user, its
# active flag and its hash are read from the catalog at every log-in, so a change made
# on another replica counts at once.
_verified: set[tuple[int, str, str]] = set()
_VERIFIED_MAX = 4096


def password_user(session: Session, *, name: str, password: str) -> DataUser:
    """The active user with this name and password (argon2: call it off the event loop)."""
    user = _active_user(session, name)
    if user is None or user.id is None or not user.password_hash:
        raise Unauthenticated(f"wrong user name or password for {name!r}")
    key = (user.id, user.password_hash, hashlib.sha256(password.encode()).hexdigest())
    if key not in _verified:
        if not verify_password(user.password_hash, password):
            raise Unauthenticated(f"wrong user name or password for {name!r}")
        if len(_verified) >= _VERIFIED_MAX:
            _verified.clear()
        _verified.add(key)
    return user


def token_user(session: Session, *, token: str) -> DataUser:
    """The active user owning a bearer token."""
    row = session.exec(select(ApiToken).where(ApiToken.token_sha256 == token_digest(token))).first()
    user = session.get(DataUser, row.user_id) if row else None
    if user is None or not user.active:
        raise Unauthenticated("unknown or revoked token")
    return user


def public_key_user(session: Session, *, name: str, public_key: str) -> DataUser:
    """The active user `name` whose registered SSH keys include `public_key` (OpenSSH text)."""
    wanted = public_key.split()[:2]
    user = _active_user(session, name)
    if user is not None and any(line.split()[:2] == wanted for line in user.ssh_keys):
        return user
    raise Unauthenticated(f"public key not accepted for {name!r}")


def has_ssh_keys(session: Session, *, name: str) -> bool:
    user = _active_user(session, name)
    return bool(user and user.ssh_keys)


def access_key_user(
    session: Session, *, box: CredentialBox, access_key_id: str
) -> tuple[DataUser, str]:
    """The active user owning an S3 access key id, and the key's secret to check a signature."""
    row = session.exec(select(AccessKey).where(AccessKey.access_key_id == access_key_id)).first()
    user = session.get(DataUser, row.user_id) if row else None
    if row is None or user is None or not user.active:
        raise Unauthenticated(f"unknown access key {access_key_id!r}")
    return user, box.open(row.secret_encrypted)["secret"]


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
