"""Catalog functions: keyword-only reads and writes of every entity, each taking a session.

Bad input raises one of `ecpds.core.errors` (`NotFound`, `Conflict`, `Invalid`): one line
naming the problem, with the HTTP code the REST API answers with as `status`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, get_args

from sqlalchemy import Engine, func, or_
from sqlmodel import Session, SQLModel, col, select

from ecpds.core.db import session_scope
from ecpds.core.errors import Conflict, Invalid, NotFound, unknown
from ecpds.core.models import (
    FINAL_STATUSES,
    QUEUED_STATUSES,
    Alias,
    AliasCreate,
    AliasPublic,
    AliasUpdate,
    ApiToken,
    DataFile,
    DataTransfer,
    DataTransferPublic,
    DataUser,
    DataUserCreate,
    DataUserDestination,
    DataUserPolicy,
    DataUserPublic,
    DataUserUpdate,
    Destination,
    DestinationCreate,
    DestinationHost,
    DestinationPublic,
    DestinationStatus,
    DestinationUpdate,
    ExpectedProduct,
    ExpectedProductCreate,
    ExpectedProductUpdate,
    Host,
    HostCreate,
    HostKind,
    HostPublic,
    HostUpdate,
    Notification,
    OperationEvent,
    Policy,
    PolicyDestination,
    PolicyPublic,
    TransferStatus,
)
from ecpds.core.notifications import PUBLISHER_USER
from ecpds.core.protocols import ProtocolError, check_host
from ecpds.core.secrets import (
    CredentialBox,
    hash_password,
    new_password,
    new_token,
    token_digest,
    verify_password,
)
from ecpds.core.settings import Settings


def _nullable(table: type[SQLModel], key: str) -> bool:
    """Whether a column takes None: an update's null clears it, else leaves it as it is."""
    return type(None) in get_args(table.model_fields[key].annotation)


def _check_name_free(session: Session, table: Any, kind: str, name: str) -> None:
    if session.exec(select(table).where(table.name == name)).first() is not None:
        raise Conflict(f"{kind} {name!r} already exists")


# --- hosts --------------------------------------------------------------------------------


def find_host(session: Session, *, name: str) -> Host | None:
    return session.exec(select(Host).where(Host.name == name)).first()


def get_host(session: Session, *, name: str) -> Host:
    host = find_host(session, name=name)
    if host is None:
        raise NotFound(unknown("host", name, session.exec(select(Host.name)).all()))
    return host


def list_hosts(
    session: Session,
    *,
    destinations: Sequence[str] | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> Sequence[Host]:
    """By name; `destinations` keeps the hosts in one of their host lists."""
    query = select(Host)
    if destinations is not None:
        query = query.where(
            col(Host.id).in_(
                select(DestinationHost.host_id)
                .join(Destination, col(Destination.id) == col(DestinationHost.destination_id))
                .where(col(Destination.name).in_(destinations))
            )
        )
    query = query.order_by(Host.name).offset(offset)
    return session.exec(query if limit is None else query.limit(limit)).all()


def host_destinations(
    session: Session, *, hosts: Sequence[Host], destinations: Sequence[str] | None = None
) -> dict[int, list[str]]:
    """The destinations listing each of `hosts` (of `destinations` only, if given), by name."""
    query = (
        select(DestinationHost.host_id, Destination.name)
        .join(Destination, col(Destination.id) == col(DestinationHost.destination_id))
        .where(col(DestinationHost.host_id).in_([h.id for h in hosts]))
        .order_by(Destination.name)
    )
    if destinations is not None:
        query = query.where(col(Destination.name).in_(destinations))
    found: dict[int, list[str]] = {h.id: [] for h in hosts if h.id is not None}
    for host_id, name in session.exec(query):
        found[host_id].append(name)
    return found


# Credentials an acquisition host may have besides its protocol's (the broker's password).
ACQUISITION_CREDENTIALS = frozenset({"mqtt_password"})


def _check_host_settings(
    name: str,
    url: str,
    options: dict[str, Any],
    credentials: dict[str, str],
    *,
    kind: HostKind,
    acquisition: dict[str, Any] | None,
) -> None:
    if acquisition is not None and kind != HostKind.ACQUISITION:
        raise Invalid(f"host {name!r}: acquisition settings are for hosts of kind acquisition")
    if kind == HostKind.ACQUISITION:
        credentials = {k: v for k, v in credentials.items() if k not in ACQUISITION_CREDENTIALS}
    try:
        check_host(url, options, credentials)
    except ProtocolError as exc:
        raise Invalid(f"host {name!r}: {exc}") from exc


def create_host(session: Session, *, box: CredentialBox, data: HostCreate) -> Host:
    _check_name_free(session, Host, "host", data.name)
    _check_host_settings(
        data.name,
        data.url,
        data.options,
        data.credentials,
        kind=data.kind,
        acquisition=data.acquisition,
    )
    host = Host.model_validate(data.model_dump(exclude={"credentials"}))
    host.credentials_encrypted = box.seal(data.credentials)
    session.add(host)
    session.flush()
    return host


def update_host(session: Session, *, box: CredentialBox, name: str, data: HostUpdate) -> Host:
    host = get_host(session, name=name)
    changes = data.model_dump(exclude_unset=True)
    credentials = changes.pop("credentials", None)
    current = box.open(host.credentials_encrypted)
    _check_host_settings(
        name,
        changes.get("url") or host.url,
        changes["options"] if changes.get("options") is not None else host.options,
        current if credentials is None else credentials,
        kind=changes.get("kind") or host.kind,
        acquisition=changes["acquisition"]
        if changes.get("acquisition") is not None
        else host.acquisition,
    )
    for key, value in changes.items():
        if value is not None:
            setattr(host, key, value)
    if credentials is not None and credentials != current:
        host.credentials_encrypted = box.seal(credentials)
    session.add(host)
    session.flush()
    return host


def delete_host(session: Session, *, name: str, force: bool = False) -> None:
    """Delete a host; one still in a destination's host list needs `force`."""
    host = get_host(session, name=name)
    links = session.exec(
        select(DestinationHost, Destination.name)
        .join(Destination, col(Destination.id) == col(DestinationHost.destination_id))
        .where(DestinationHost.host_id == host.id)
        .order_by(Destination.name)
    ).all()
    if links and not force:
        users = ", ".join(
            f"{d!r} (primary)" if link.position == 0 else repr(d) for link, d in links
        )
        raise Conflict(f"host {name!r} is used by destinations {users}: delete with force")
    for link, _ in links:
        session.delete(link)
    session.flush()
    for link, _ in links:
        _renumber_hosts(session, link.destination_id)
    session.delete(host)
    session.flush()


def _renumber_hosts(session: Session, destination_id: int) -> None:
    """Close the gap a removed host leaves, so the first one left is the primary."""
    links = session.exec(
        select(DestinationHost)
        .where(DestinationHost.destination_id == destination_id)
        .order_by(col(DestinationHost.position))
    ).all()
    for position, link in enumerate(links):
        link.position = position
        session.add(link)
    session.flush()


def host_credentials(session: Session, *, box: CredentialBox, name: str) -> dict[str, str]:
    """The decrypted credentials of a host, for the activity that connects to it."""
    return box.open(get_host(session, name=name).credentials_encrypted)


def host_login(session: Session, *, box: CredentialBox, name: str) -> dict[str, str]:
    """The credentials a host's protocol logs in with (without a broker's password)."""
    credentials = host_credentials(session, box=box, name=name)
    return {k: v for k, v in credentials.items() if k not in ACQUISITION_CREDENTIALS}


def host_public(session: Session, host: Host, *, box: CredentialBox) -> HostPublic:
    keys = sorted(box.open(host.credentials_encrypted))
    return HostPublic.model_validate(
        host.model_dump() | {"has_credentials": bool(keys), "credential_keys": keys}
    )


# --- destinations -------------------------------------------------------------------------


def find_destination(session: Session, *, name: str) -> Destination | None:
    return session.exec(select(Destination).where(Destination.name == name)).first()


def get_destination(session: Session, *, name: str) -> Destination:
    destination = find_destination(session, name=name)
    if destination is None:
        # Only admins' requests get here (data users' go through `ecpds.core.access`):
        # every name may be suggested.
        known = session.exec(select(Destination.name)).all()
        raise NotFound(unknown("destination", name, known))
    return destination


def _destination_query(
    query: Any,
    names: Sequence[str] | None,
    contains: str | None,
    status: DestinationStatus | None,
) -> Any:
    if names is not None:
        query = query.where(col(Destination.name).in_(names))
    if contains:
        query = query.where(col(Destination.name).contains(contains, autoescape=True))
    if status is not None:
        query = query.where(Destination.status == status)
    return query


def list_destinations(
    session: Session,
    *,
    names: Sequence[str] | None = None,
    contains: str | None = None,
    status: DestinationStatus | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> Sequence[Destination]:
    """By name; `contains` keeps those whose name contains it."""
    query = _destination_query(select(Destination), names, contains, status)
    query = query.order_by(Destination.name).offset(offset)
    return session.exec(query if limit is None else query.limit(limit)).all()


def count_destinations(
    session: Session,
    *,
    names: Sequence[str] | None = None,
    contains: str | None = None,
    status: DestinationStatus | None = None,
) -> int:
    query = select(func.count()).select_from(Destination)
    return session.exec(_destination_query(query, names, contains, status)).one()


def destination_counts(
    session: Session, *, names: Sequence[str] | None = None
) -> dict[DestinationStatus, int]:
    """Destinations per status, in one GROUP BY."""
    query = _destination_query(select(Destination.status, func.count()), names, None, None)
    rows = session.exec(query.group_by(col(Destination.status))).all()
    return {DestinationStatus(status): count for status, count in rows}


def destination_hosts(session: Session, *, destination: Destination) -> list[Host]:
    """The destination's hosts in order: the primary first."""
    rows = session.exec(
        select(Host)
        .join(DestinationHost, col(DestinationHost.host_id) == col(Host.id))
        .where(DestinationHost.destination_id == destination.id)
        .order_by(col(DestinationHost.position))
    ).all()
    return list(rows)


@dataclass
class HostState:
    """How one of a destination's hosts fares, from the catalog's transfers to it."""

    host: Host
    primary: bool
    running: int
    last_delivered: datetime | None
    retrying: int  # failed a cycle on it and wait for their retry_at
    failed: int  # failed for good on it since the time asked about


def host_states(session: Session, *, destination: Destination, since: datetime) -> list[HostState]:
    """Each host of the destination, the primary first, with its transfers' state.

    Each query is one range (or one seek, for the last delivery) of the host index
    (destination, host, status, finished); only the running and the retrying transfers'
    rows are read besides. So a few lookups per host, however many transfers there are.
    """

    def on(host: Host, *statuses: TransferStatus) -> Any:
        return select(func.count()).where(
            DataTransfer.destination_id == destination.id,
            DataTransfer.host_id == host.id,
            col(DataTransfer.status).in_(statuses),
        )

    states = []
    for position, host in enumerate(destination_hosts(session, destination=destination)):
        running = on(host, TransferStatus.EXEC).where(col(DataTransfer.deleted).is_(False))
        retrying = on(host, TransferStatus.WAIT, TransferStatus.RETR).where(
            col(DataTransfer.retry_at).is_not(None), col(DataTransfer.deleted).is_(False)
        )
        failed = on(host, TransferStatus.FAIL).where(col(DataTransfer.finished) >= since)
        last = select(func.max(DataTransfer.finished)).where(
            DataTransfer.destination_id == destination.id,
            DataTransfer.host_id == host.id,
            DataTransfer.status == TransferStatus.DONE,
        )
        states.append(
            HostState(
                host=host,
                primary=position == 0,
                running=session.exec(running).one(),
                last_delivered=session.exec(last).one(),
                retrying=session.exec(retrying).one(),
                failed=session.exec(failed).one(),
            )
        )
    return states


def traffic_host(states: Sequence[HostState]) -> HostState | None:
    """The host carrying the destination's traffic: the one running the most transfers,
    else the one that delivered last; None before anything went anywhere."""
    busy = [s for s in states if s.running]
    if busy:
        return max(busy, key=lambda s: s.running)
    delivered = [(s.last_delivered, s) for s in states if s.last_delivered is not None]
    return max(delivered, key=lambda pair: pair[0])[1] if delivered else None


def _set_destination_hosts(session: Session, destination: Destination, names: list[str]) -> None:
    if len(set(names)) != len(names):
        raise Invalid(f"destination {destination.name!r}: a host is listed twice in {names}")
    hosts = []
    for name in names:
        host = find_host(session, name=name)
        if host is None:
            known = session.exec(select(Host.name)).all()
            raise Invalid(f"destination {destination.name!r}: {unknown('host', name, known)}")
        hosts.append(host)
    for link in session.exec(
        select(DestinationHost).where(DestinationHost.destination_id == destination.id)
    ).all():
        session.delete(link)
    session.flush()
    for position, host in enumerate(hosts):
        assert destination.id is not None and host.id is not None
        session.add(
            DestinationHost(destination_id=destination.id, host_id=host.id, position=position)
        )
    session.flush()


def _seal_notification_password(
    destination: Destination, password: str, box: CredentialBox | None
) -> None:
    """Keep the external broker's password encrypted like host credentials ("" removes it)."""
    if box is None:
        raise ValueError("notification_password: no credential key to encrypt it with")
    destination.notification_password_encrypted = box.seal(
        {"password": password} if password else {}
    )


def create_destination(
    session: Session, *, data: DestinationCreate, box: CredentialBox | None = None
) -> Destination:
    _check_name_free(session, Destination, "destination", data.name)
    destination = Destination.model_validate(
        data.model_dump(exclude={"hosts", "notification_password"})
    )
    if data.notification_password is not None:
        _seal_notification_password(destination, data.notification_password, box)
    session.add(destination)
    session.flush()
    _set_destination_hosts(session, destination, data.hosts)
    return destination


def update_destination(
    session: Session, *, name: str, data: DestinationUpdate, box: CredentialBox | None = None
) -> Destination:
    destination = get_destination(session, name=name)
    changes = data.model_dump(exclude_unset=True)
    hosts = changes.pop("hosts", None)
    password = changes.pop("notification_password", None)
    if password is not None:
        _seal_notification_password(destination, password, box)
    for key, value in changes.items():
        if value is not None or _nullable(Destination, key):
            setattr(destination, key, value)
    session.add(destination)
    session.flush()
    if hosts is not None:
        _set_destination_hosts(session, destination, hosts)
    return destination


def destination_users(session: Session, *, destination: Destination) -> list[str]:
    """What would be orphaned by deleting the destination, one phrase each."""
    uses = []
    pending = pending_transfers(session, destination=destination)
    if pending:
        uses.append(f"{pending} unfinished transfer{'s' if pending != 1 else ''}")
    aliases = session.exec(
        select(Alias.name)
        .where(or_(Alias.source_id == destination.id, Alias.target_id == destination.id))
        .order_by(Alias.name)
    ).all()
    uses += [f"alias {a!r}" for a in aliases]
    users = session.exec(
        select(DataUser.name)
        .join(DataUserDestination, col(DataUserDestination.user_id) == col(DataUser.id))
        .where(DataUserDestination.destination_id == destination.id)
        .order_by(DataUser.name)
    ).all()
    uses += [f"user {u!r}" for u in users]
    policies = session.exec(
        select(Policy.name)
        .join(PolicyDestination, col(PolicyDestination.policy_id) == col(Policy.id))
        .where(PolicyDestination.destination_id == destination.id)
        .order_by(Policy.name)
    ).all()
    uses += [f"policy {p!r}" for p in policies]
    return uses


def delete_destination(session: Session, *, name: str, force: bool = False) -> list[int]:
    """Delete a destination; one in use needs `force`. Returns the transfers it stopped.

    Its transfers outlive it: unfinished ones are stopped, and all keep their history
    (with the destination's name) until the garbage collector retires them at expiry.
    """
    destination = get_destination(session, name=name)
    uses = destination_users(session, destination=destination)
    if uses and not force:
        raise Conflict(f"destination {name!r} is used by {', '.join(uses)}: delete with force")
    transfers = session.exec(
        select(DataTransfer).where(DataTransfer.destination_id == destination.id)
    ).all()
    stopped = []
    for transfer in transfers:
        if transfer.status not in FINAL_STATUSES:
            transfer.status = TransferStatus.STOP
            transfer.last_error = f"destination {name!r} deleted"
            assert transfer.id is not None
            stopped.append(transfer.id)
        transfer.destination_id = None
        transfer.destination_name = name
        session.add(transfer)
    session.flush()
    session.delete(destination)
    session.flush()
    return stopped


def destination_public(session: Session, destination: Destination) -> DestinationPublic:
    hosts = [h.name for h in destination_hosts(session, destination=destination)]
    # The broker password is never returned, sealed or not (nor whether there is one).
    return DestinationPublic.model_validate(
        destination.model_dump(exclude={"notification_password_encrypted"}) | {"hosts": hosts}
    )


def has_dissemination_hosts(session: Session, *, destination: Destination) -> bool:
    return any(
        h.kind in (HostKind.DISSEMINATION, HostKind.BACKUP) and h.active
        for h in destination_hosts(session, destination=destination)
    )


def pending_transfers(session: Session, *, destination: Destination) -> int:
    """Transfers of the destination not yet in a final status."""
    return session.exec(
        select(func.count())
        .select_from(DataTransfer)
        .where(
            DataTransfer.destination_id == destination.id,
            col(DataTransfer.status).not_in(list(FINAL_STATUSES)),
            col(DataTransfer.deleted).is_(False),
        )
    ).one()


# --- aliases ------------------------------------------------------------------------------


def find_alias(session: Session, *, name: str) -> Alias | None:
    return session.exec(select(Alias).where(Alias.name == name)).first()


def get_alias(session: Session, *, name: str) -> Alias:
    alias = find_alias(session, name=name)
    if alias is None:
        raise NotFound(f"unknown alias {name!r}")
    return alias


def list_aliases(session: Session) -> Sequence[Alias]:
    return session.exec(select(Alias).order_by(Alias.name)).all()


def _alias_end(session: Session, alias_name: str, role: str, destination: str) -> int:
    found = find_destination(session, name=destination)
    if found is None or found.id is None:
        raise Invalid(f"alias {alias_name!r}: unknown {role} destination {destination!r}")
    return found.id


def _check_alias(alias: Alias) -> None:
    if alias.source_id == alias.target_id:
        raise Invalid(f"alias {alias.name!r}: source and target are the same destination")
    if alias.rewrite is not None and alias.pattern is None:
        raise Invalid(f"alias {alias.name!r}: a rewrite needs a pattern")
    if alias.pattern is not None:
        try:
            re.compile(alias.pattern)
        except re.error as exc:
            raise Invalid(f"alias {alias.name!r}: bad pattern {alias.pattern!r}: {exc}") from exc


def create_alias(session: Session, *, data: AliasCreate) -> Alias:
    _check_name_free(session, Alias, "alias", data.name)
    alias = Alias.model_validate(
        data.model_dump(exclude={"source", "target"})
        | {
            "source_id": _alias_end(session, data.name, "source", data.source),
            "target_id": _alias_end(session, data.name, "target", data.target),
        }
    )
    _check_alias(alias)
    session.add(alias)
    session.flush()
    return alias


def update_alias(session: Session, *, name: str, data: AliasUpdate) -> Alias:
    alias = get_alias(session, name=name)
    changes = data.model_dump(exclude_unset=True)
    for role in ("source", "target"):
        if changes.get(role) is not None:
            setattr(alias, f"{role}_id", _alias_end(session, name, role, changes.pop(role)))
        changes.pop(role, None)
    for key, value in changes.items():
        if value is not None or _nullable(Alias, key):
            setattr(alias, key, value)
    _check_alias(alias)
    session.add(alias)
    session.flush()
    return alias


def delete_alias(session: Session, *, name: str) -> None:
    session.delete(get_alias(session, name=name))
    session.flush()


def alias_public(session: Session, alias: Alias) -> AliasPublic:
    source = session.get(Destination, alias.source_id)
    target = session.get(Destination, alias.target_id)
    assert source is not None and target is not None
    return AliasPublic.model_validate(
        alias.model_dump() | {"source": source.name, "target": target.name}
    )


def aliases_for(
    session: Session, *, destination: Destination, target: str
) -> list[tuple[Destination, str, Alias]]:
    """Every destination a file for `destination` also goes to, with its target name.

    Aliases chain (A -> B -> C); each destination is reached at most once.
    """
    found: list[tuple[Destination, str, Alias]] = []
    seen = {destination.id}
    pending = [(destination, target)]
    while pending:
        source, source_target = pending.pop(0)
        aliases = session.exec(
            select(Alias)
            .where(Alias.source_id == source.id, col(Alias.active).is_(True))
            .order_by(Alias.name)
        ).all()
        for alias in aliases:
            if alias.target_id in seen:
                continue
            name = source_target
            if alias.pattern is not None:
                if re.search(alias.pattern, source_target) is None:
                    continue
                if alias.rewrite is not None:
                    name = re.sub(alias.pattern, alias.rewrite, source_target)
            other = session.get(Destination, alias.target_id)
            if other is None:
                continue
            seen.add(other.id)
            found.append((other, name, alias))
            pending.append((other, name))
    return found


# --- data users and tokens ----------------------------------------------------------------


def find_user(session: Session, *, name: str) -> DataUser | None:
    return session.exec(select(DataUser).where(DataUser.name == name)).first()


def get_user(session: Session, *, name: str) -> DataUser:
    user = find_user(session, name=name)
    if user is None:
        raise NotFound(f"unknown user {name!r}")
    return user


def list_users(
    session: Session, *, limit: int | None = None, offset: int = 0
) -> Sequence[DataUser]:
    query = select(DataUser).order_by(DataUser.name).offset(offset)
    return session.exec(query if limit is None else query.limit(limit)).all()


def user_policies(session: Session, *, user: DataUser) -> list[str]:
    """The policies `user` is a member of, by name."""
    rows = session.exec(
        select(Policy.name)
        .join(DataUserPolicy, col(DataUserPolicy.policy_id) == col(Policy.id))
        .where(DataUserPolicy.user_id == user.id)
        .order_by(Policy.name)
    ).all()
    return list(rows)


def _linked_destinations(session: Session, user: DataUser) -> list[str]:
    """The destinations linked to `user` itself (the field it is edited by); the ones it
    reaches, policies included, are `ecpds.core.access.user_destinations`."""
    rows = session.exec(
        select(Destination.name)
        .join(DataUserDestination, col(DataUserDestination.destination_id) == col(Destination.id))
        .where(DataUserDestination.user_id == user.id)
        .order_by(Destination.name)
    ).all()
    return list(rows)


def _set_user_destinations(session: Session, user: DataUser, names: list[str]) -> None:
    ids = []
    for name in dict.fromkeys(names):
        destination = find_destination(session, name=name)
        if destination is None:
            known = session.exec(select(Destination.name)).all()
            raise Invalid(f"user {user.name!r}: {unknown('destination', name, known)}")
        ids.append(destination.id)
    for link in session.exec(
        select(DataUserDestination).where(DataUserDestination.user_id == user.id)
    ).all():
        session.delete(link)
    session.flush()
    for destination_id in ids:
        assert user.id is not None and destination_id is not None
        session.add(DataUserDestination(user_id=user.id, destination_id=destination_id))
    session.flush()


def create_user(session: Session, *, data: DataUserCreate) -> DataUser:
    if data.name == PUBLISHER_USER:
        raise Invalid(f"user {data.name!r}: the name is the workers' own broker login")
    _check_name_free(session, DataUser, "user", data.name)
    user = DataUser.model_validate(data.model_dump(exclude={"password", "destinations"}))
    if data.password is not None:
        user.password_hash = hash_password(data.password)
    session.add(user)
    session.flush()
    _set_user_destinations(session, user, data.destinations)
    return user


def update_user(
    session: Session, *, name: str, data: DataUserUpdate, caller: DataUser | None = None
) -> DataUser:
    """Change a user; an admin stays one for itself, and the last active admin stays one."""
    user = get_user(session, name=name)
    changes = data.model_dump(exclude_unset=True)
    if user.admin and (changes.get("admin") is False or changes.get("active") is False):
        if caller is not None and caller.id == user.id:
            raise Conflict(f"user {name!r} cannot demote or deactivate itself: ask another admin")
        if user.active and not _other_admins(session, user):
            raise Conflict(f"user {name!r} is the last admin: make another user admin first")
    password = changes.pop("password", None)
    destinations = changes.pop("destinations", None)
    for key, value in changes.items():
        if value is not None:
            setattr(user, key, value)
    if password is not None and not verify_password(user.password_hash, password):
        user.password_hash = hash_password(password)
    session.add(user)
    session.flush()
    if destinations is not None:
        _set_user_destinations(session, user, destinations)
    return user


def _other_admins(session: Session, user: DataUser) -> int:
    """How many active admins there are besides `user`: the last one must stay."""
    return session.exec(
        select(func.count())
        .select_from(DataUser)
        .where(col(DataUser.admin).is_(True), col(DataUser.active).is_(True))
        .where(DataUser.id != user.id)
    ).one()


def delete_user(session: Session, *, name: str, caller: DataUser | None = None) -> None:
    """Delete a user, never the caller itself nor the last active admin."""
    user = get_user(session, name=name)
    if caller is not None and caller.id == user.id:
        raise Conflict(f"user {name!r} cannot delete itself: ask another admin")
    if user.admin and user.active and not _other_admins(session, user):
        raise Conflict(f"user {name!r} is the last admin: make another user admin first")
    session.delete(user)
    session.flush()


def user_public(session: Session, user: DataUser) -> DataUserPublic:
    return DataUserPublic.model_validate(
        user.model_dump() | {"destinations": _linked_destinations(session, user)}
    )


def create_token(session: Session, *, user: DataUser, label: str = "") -> str:
    """A new bearer token for `user`; only its digest is stored, so show it once."""
    assert user.id is not None
    token = new_token()
    session.add(ApiToken(user_id=user.id, token_sha256=token_digest(token), label=label))
    session.flush()
    return token


def bootstrap_admin(engine: Engine, settings: Settings) -> str | None:
    """On first start, create user "admin": with the password of admin_password_file, or
    a random one kept in var/admin.toml. The password when admin is made, else None."""
    given = settings.admin_password()
    with session_scope(engine) as session:
        if find_user(session, name="admin") is not None:
            return None
        password = given or new_password()
        create_user(
            session,
            data=DataUserCreate(name="admin", admin=True, password=password),
        )
        if given is not None:
            return password
        path = settings.admin_file
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".part")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(f'api_user = "admin"\napi_password = "{password}"\n')
        partial.replace(path)
    return password


# --- policies -----------------------------------------------------------------------------


def get_policy(session: Session, *, name: str) -> Policy:
    policy = session.exec(select(Policy).where(Policy.name == name)).first()
    if policy is None:
        raise NotFound(f"unknown policy {name!r}")
    return policy


def list_policies(session: Session) -> Sequence[Policy]:
    return session.exec(select(Policy).order_by(Policy.name)).all()


def policy_public(session: Session, policy: Policy) -> PolicyPublic:
    destinations = session.exec(
        select(Destination.name)
        .join(PolicyDestination, col(PolicyDestination.destination_id) == Destination.id)
        .where(PolicyDestination.policy_id == policy.id)
        .order_by(Destination.name)
    ).all()
    users = session.exec(
        select(DataUser.name)
        .join(DataUserPolicy, col(DataUserPolicy.user_id) == DataUser.id)
        .where(DataUserPolicy.policy_id == policy.id)
        .order_by(DataUser.name)
    ).all()
    return PolicyPublic(
        name=policy.name, comment=policy.comment, destinations=list(destinations), users=list(users)
    )


# --- data files and transfers -------------------------------------------------------------


def get_data_file(session: Session, *, id: str) -> DataFile:
    data_file = session.get(DataFile, id)
    if data_file is None or data_file.deleted:
        raise NotFound(f"unknown data file {id!r}")
    return data_file


# A data user's files: up to this many destinations, found from their transfers (cost in
# their transfers: 7 ms for one of 1,000 destinations with a million transfers, 56 ms for
# 10); past it, by walking the files newest first until a page has matched, each file one
# probe of ix_datatransfer_file (5 to 11 ms there, but 160 ms per 10,000 files walked when
# few match, as for a destination without transfers).
FEW_DESTINATIONS = 10


def list_data_files(
    session: Session,
    *,
    destinations: Sequence[str] | None = None,
    name: str | None = None,
    contains: str | None = None,
    group: str | None = None,
    metadata: dict[str, str] | None = None,
    arrived_since: datetime | None = None,
    arrived_until: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[DataFile]:
    """Newest first; `destinations` keeps files with a transfer to one of them, `contains`
    those whose name contains it."""
    query = select(DataFile).where(col(DataFile.deleted).is_(False))
    if destinations is not None:
        ids = list(
            session.exec(select(Destination.id).where(col(Destination.name).in_(destinations)))
        )
        sent = select(DataTransfer.data_file_id).where(col(DataTransfer.destination_id).in_(ids))
        if len(ids) <= FEW_DESTINATIONS:
            query = query.where(col(DataFile.id).in_(sent))
        else:
            query = query.where(sent.where(DataTransfer.data_file_id == DataFile.id).exists())
    if name is not None:
        query = query.where(DataFile.name == name)
    if contains:
        query = query.where(col(DataFile.name).contains(contains, autoescape=True))
    if group is not None:
        query = query.where(DataFile.group == group)
    if arrived_since is not None:
        query = query.where(col(DataFile.arrived) >= arrived_since)
    if arrived_until is not None:
        query = query.where(col(DataFile.arrived) < arrived_until)
    query = query.order_by(col(DataFile.created).desc()).offset(offset)
    if not metadata:
        return list(session.exec(query.limit(limit)).all())
    # JSON operators differ between SQLite and PostgreSQL: filter metadata here.
    matches = []
    for data_file in session.exec(query).all():
        if all(data_file.meta.get(k) == v for k, v in metadata.items()):
            matches.append(data_file)
            if len(matches) >= limit:
                break
    return matches


def delete_data_file(session: Session, *, id: str) -> DataFile:
    """Mark the file and its transfers deleted; the caller removes the bytes from the store."""
    data_file = get_data_file(session, id=id)
    data_file.deleted = True
    session.add(data_file)
    for transfer in session.exec(
        select(DataTransfer).where(DataTransfer.data_file_id == data_file.id)
    ).all():
        transfer.deleted = True
        if transfer.status not in FINAL_STATUSES:
            transfer.status = TransferStatus.STOP
        session.add(transfer)
    session.flush()
    return data_file


def get_transfer(session: Session, *, id: int) -> DataTransfer:
    transfer = session.get(DataTransfer, id)
    if transfer is None:
        raise NotFound(f"unknown transfer {id}")
    return transfer


def list_transfers(
    session: Session,
    *,
    destinations: Sequence[str] | None = None,
    status: TransferStatus | None = None,
    data_file_id: str | None = None,
    host_id: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    target: str | None = None,
    with_error: bool = False,
    limit: int = 100,
    offset: int = 0,
) -> Sequence[DataTransfer]:
    """Newest first; `target` keeps those whose target name contains it, `since` and
    `until` those queued in that time."""
    query = select(DataTransfer).where(col(DataTransfer.deleted).is_(False))
    if target:
        query = query.where(col(DataTransfer.target).contains(target, autoescape=True))
    if with_error:
        query = query.where(col(DataTransfer.last_error).is_not(None))
    if destinations is not None:
        query = query.join(
            Destination, col(Destination.id) == col(DataTransfer.destination_id)
        ).where(col(Destination.name).in_(destinations))
    if status is not None:
        query = query.where(DataTransfer.status == status)
    if data_file_id is not None:
        query = query.where(DataTransfer.data_file_id == data_file_id)
    if host_id is not None:
        query = query.where(DataTransfer.host_id == host_id)
    if since is not None:
        query = query.where(col(DataTransfer.queued) >= since)
    if until is not None:
        query = query.where(col(DataTransfer.queued) < until)
    query = query.order_by(col(DataTransfer.id).desc()).offset(offset)
    return session.exec(query.limit(limit)).all()


def transfer_counts(
    session: Session, *, destinations: Sequence[str] | None = None
) -> dict[TransferStatus, int]:
    """Transfers (not deleted) per status, of `destinations` (None: all), in one GROUP BY.

    Grouped by destination and status, then summed here: that walks the covering index
    ix_datatransfer_counts in its order (80 ms for a million transfers on SQLite), where
    grouping by status alone reads every row for `deleted` (over 500 ms).
    """
    query = select(DataTransfer.status, func.count()).where(col(DataTransfer.deleted).is_(False))
    if destinations is not None:
        query = query.join(
            Destination, col(Destination.id) == col(DataTransfer.destination_id)
        ).where(col(Destination.name).in_(destinations))
    grouped = query.group_by(col(DataTransfer.destination_id), col(DataTransfer.status))
    counts: dict[TransferStatus, int] = {}
    for status, count in session.exec(grouped):
        counts[TransferStatus(status)] = counts.get(TransferStatus(status), 0) + count
    return counts


def waiting_transfers(session: Session, *, destination: Destination) -> int:
    """The destination's queue length: its WAIT, SCHE and RETR transfers (the queue index)."""
    return session.exec(
        select(func.count())
        .select_from(DataTransfer)
        .where(
            DataTransfer.destination_id == destination.id,
            col(DataTransfer.status).in_(list(QUEUED_STATUSES)),
            col(DataTransfer.deleted).is_(False),
        )
    ).one()


def transfer_public(session: Session, transfer: DataTransfer) -> DataTransferPublic:
    destination = (
        session.get(Destination, transfer.destination_id)
        if transfer.destination_id is not None
        else None
    )
    host = session.get(Host, transfer.host_id) if transfer.host_id is not None else None
    data_file = session.get(DataFile, transfer.data_file_id)
    size = data_file.size if data_file is not None else 0
    return DataTransferPublic.model_validate(
        transfer.model_dump()
        | {
            "destination": destination.name if destination else transfer.destination_name or "",
            "host": host.name if host else None,
            "size": size,
            "eta": transfer_eta(transfer, size),
        }
    )


def transfers_public(
    session: Session, transfers: Sequence[DataTransfer]
) -> list[DataTransferPublic]:
    """The public views of many transfers in three queries, not three per transfer: their
    destinations, hosts and data files are loaded first, where `session.get` finds them."""
    loaded: list[Any] = []  # held: the session keeps only weak references
    for model, ids in (
        (Destination, {t.destination_id for t in transfers}),
        (Host, {t.host_id for t in transfers}),
        (DataFile, {t.data_file_id for t in transfers}),
    ):
        ids.discard(None)
        if ids:
            loaded += session.exec(select(model).where(col(model.id).in_(ids))).all()  # type: ignore[attr-defined]
    return [transfer_public(session, t) for t in transfers]


def transfer_eta(transfer: DataTransfer, size: int) -> float | None:
    """Seconds left of a running transfer at its last rate (compressed: an estimate)."""
    if transfer.status is not TransferStatus.EXEC or not transfer.rate:
        return None
    return max(size - transfer.bytes_sent, 0) / transfer.rate


# --- notification history --------------------------------------------------------------------


def published_notifications(
    session: Session,
    *,
    destinations: list[str] | None,
    since: datetime | None = None,
    after: int = 0,
    limit: int = 1000,
) -> Sequence[Notification]:
    """Published outbox rows in publication order (by id), for listeners that catch up.

    `destinations` None means all of them; `after` is the id of the last row already read.
    """
    query = select(Notification).where(
        col(Notification.pending).is_(False),
        col(Notification.published).is_not(None),
        col(Notification.id) > after,
    )
    if destinations is not None:
        query = query.where(col(Notification.destination).in_(destinations))
    if since is not None:
        query = query.where(col(Notification.created) >= since)
    return session.exec(query.order_by(col(Notification.id)).limit(limit)).all()


# --- expected products ------------------------------------------------------------------


def _expected_destination(session: Session, name: str, destination: str) -> None:
    if find_destination(session, name=destination) is None:
        raise Invalid(f"expected product {name!r}: unknown destination {destination!r}")


def get_expected(session: Session, *, name: str) -> ExpectedProduct:
    found = session.exec(select(ExpectedProduct).where(ExpectedProduct.name == name)).first()
    if found is None:
        raise NotFound(f"unknown expected product {name!r}")
    return found


def list_expected(
    session: Session, *, destinations: Sequence[str] | None = None
) -> Sequence[ExpectedProduct]:
    """All expected products, or those of `destinations`, by due time."""
    query = select(ExpectedProduct)
    if destinations is not None:
        query = query.where(col(ExpectedProduct.destination).in_(destinations))
    return session.exec(query.order_by(ExpectedProduct.due, ExpectedProduct.name)).all()


def create_expected(session: Session, *, data: ExpectedProductCreate) -> ExpectedProduct:
    _check_name_free(session, ExpectedProduct, "expected product", data.name)
    _expected_destination(session, data.name, data.destination)
    expected = ExpectedProduct.model_validate(data.model_dump())
    session.add(expected)
    session.flush()
    return expected


def update_expected(session: Session, *, name: str, data: ExpectedProductUpdate) -> ExpectedProduct:
    expected = get_expected(session, name=name)
    changes = {k: v for k, v in data.model_dump(exclude_unset=True).items() if v is not None}
    if "destination" in changes:
        _expected_destination(session, name, changes["destination"])
    for key, value in changes.items():
        setattr(expected, key, value)
    session.add(expected)
    session.flush()
    return expected


def delete_expected(session: Session, *, name: str) -> None:
    session.delete(get_expected(session, name=name))
    session.flush()


def notification_backlog(session: Session, *, destinations: Sequence[str] | None = None) -> int:
    """Announcements in the outbox not yet published (the pending index)."""
    query = select(func.count()).select_from(Notification).where(col(Notification.pending))
    if destinations is not None:
        query = query.where(col(Notification.destination).in_(destinations))
    return session.exec(query).one()


# --- the event log ----------------------------------------------------------------------


def list_events(
    session: Session, *, user: str | None = None, since: datetime | None = None, limit: int = 100
) -> Sequence[OperationEvent]:
    """The operations recorded, latest first."""
    query = select(OperationEvent)
    if user is not None:
        query = query.where(OperationEvent.user == user)
    if since is not None:
        query = query.where(col(OperationEvent.time) >= since)
    return session.exec(query.order_by(col(OperationEvent.id).desc()).limit(limit)).all()
