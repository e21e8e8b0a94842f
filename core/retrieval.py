"""Asynchronous push: register files by their source URL, to be fetched into the store later.

`register_sources` records metadata only (a DataFile without bytes, its transfers INIT or
HOLD); a RetrievalBatchWorkflow then fetches them, many at a time, through `core.sources`.
A file whose metadata carries a WIS2 `integrity` value is checked against it on the way.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import posixpath
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from urllib.parse import unquote

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from ecpds.core import catalog
from ecpds.core.db import session_scope, table_of
from ecpds.core.models import (
    Alias,
    DataFile,
    DataTransfer,
    DataUser,
    Destination,
    TransferStatus,
    new_data_file_id,
    utcnow,
)
from ecpds.core.protocols import ProtocolError, parse_url
from ecpds.core.push import IngestError, PushOptions, check_file_name, check_target, plan_push
from ecpds.core.secrets import CredentialBox
from ecpds.core.sources import resolve_source

MAX_SOURCES = 10_000
BATCH = 1000  # files fetched by one RetrievalBatchWorkflow
# WIS2 integrity methods (the notification's `integrity.method`) and their hashlib names.
INTEGRITY_METHODS = {
    "sha256": "sha256",
    "sha384": "sha384",
    "sha512": "sha512",
    "sha3-256": "sha3_256",
    "sha3-384": "sha3_384",
    "sha3-512": "sha3_512",
    "md5": "md5",
}
# A file still to fetch: not arrived, and a transfer waits for it (a failed fetch fails them).
UNFETCHED = (TransferStatus.INIT, TransferStatus.FETC, TransferStatus.HOLD)


class IntegrityFailure(ProtocolError):
    """The fetched bytes are not those the notification described: never retried."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


@dataclass(frozen=True)
class Integrity:
    """An expected digest of a file's bytes, from its metadata's `integrity` value."""

    method: str
    value: str  # base64, as the notification gave it

    @classmethod
    def parse(cls, text: str) -> Integrity:
        """`<method>:<base64 value>`; a value that cannot be checked is an IntegrityFailure."""
        method, _, value = text.partition(":")
        method = method.strip().lower()
        if method not in INTEGRITY_METHODS:
            raise IntegrityFailure(
                f"integrity method {method!r} is not supported "
                f"(one of {', '.join(INTEGRITY_METHODS)})"
            )
        try:
            base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise IntegrityFailure(
                f"integrity value {value.strip()!r} is not base64 ({method})"
            ) from None
        return cls(method, value.strip())

    def checked(self, chunks: Iterable[bytes]) -> Generator[bytes]:
        """`chunks` passed on; after the last, an IntegrityFailure if the digest differs.

        Raised from inside the stream, so the store discards what it was writing.
        """
        digest = hashlib.new(INTEGRITY_METHODS[self.method])
        for chunk in chunks:
            digest.update(chunk)
            yield chunk
        computed = digest.digest()
        if computed != base64.b64decode(self.value):
            raise IntegrityFailure(
                f"integrity check failed: {self.method} of the fetched bytes is "
                f"{base64.b64encode(computed).decode()}, the notification said {self.value}"
            )


@dataclass
class SourceSpec:
    """One file to fetch: its URL, and optionally its name, target (default: basename) and
    metadata of its own."""

    url: str
    name: str | None = None
    target: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)  # over the push's own
    reqid: str | None = None  # its own request id (see `register_new`)


@dataclass
class Registered:
    id: str
    name: str
    source: str
    transfers: list[int] = field(default_factory=list)


def _transfer_row(
    planned: DataTransfer, data_file_id: str, target: str, now: datetime
) -> dict[str, Any]:
    """The catalog row of one planned transfer, waiting for its file (INIT) unless on hold."""
    return {
        "data_file_id": data_file_id,
        "destination_id": planned.destination_id,
        "target": target,
        "priority": planned.priority,
        "scheduled": planned.scheduled,
        "expires": planned.expires,
        "status": planned.status if planned.status == TransferStatus.HOLD else TransferStatus.INIT,
        "queued": now,
        "bytes_sent": 0,
        "start_count": 0,
        "requeue_count": 0,
        "deleted": False,
    }


def _reqids(reqid: str | None, count: int) -> list[str | None]:
    if reqid is None:
        return [None] * count
    return [reqid] if count == 1 else [f"{reqid}-{i}" for i in range(count)]


def _existing(session: Session, reqids: list[str | None]) -> list[Registered] | None:
    """The files an earlier request with the same request id registered, if any."""
    if reqids[0] is None:
        return None
    files = session.exec(select(DataFile).where(col(DataFile.reqid).in_(reqids))).all()
    if not files:
        return None
    by_reqid = {f.reqid: f for f in files}
    found = []
    for rid in reqids:
        data_file = by_reqid.get(rid)
        if data_file is None:
            raise IngestError(f"request id {reqids[0]!r} was used for another request", 409)
        ids = session.exec(
            select(DataTransfer.id).where(DataTransfer.data_file_id == data_file.id)
        ).all()
        found.append(
            Registered(
                data_file.id, data_file.name, data_file.source or "", list(filter(None, ids))
            )
        )
    return found


def register_sources(
    engine: Engine,
    box: CredentialBox,
    *,
    destination: str,
    sources: list[SourceSpec],
    user: DataUser | None = None,
    options: PushOptions | None = None,
) -> tuple[list[Registered], bool]:
    """Register every source (all or nothing); (files, whether they are new).

    Each source names its own target, so `options.target` must be unset. The same
    request id again returns the files registered the first time.
    """
    options = options or PushOptions()
    if not sources:
        raise IngestError("no source given")
    if len(sources) > MAX_SOURCES:
        raise IngestError(f"{len(sources)} sources in one request: the limit is {MAX_SOURCES}")
    if options.target is not None:
        raise IngestError("a target belongs to each source, not to the whole request")
    own = [s.reqid for s in sources]
    if any(own) and options.reqid is not None:
        raise IngestError("a request id belongs to the request or to each source, not both")
    reqids = own if any(own) else _reqids(options.reqid, len(sources))
    with session_scope(engine) as session:
        earlier = None if any(own) else _existing(session, reqids)
        if earlier is not None:
            return earlier, False
        # Without target patterns on aliases, every file gets the same legs: plan once.
        uniform = (
            session.exec(
                select(Alias.id).where(col(Alias.active).is_(True), col(Alias.pattern).is_not(None))
            ).first()
            is None
        )
        dest = catalog.find_destination(session, name=destination)
        if dest is None:
            raise IngestError(f"unknown destination {destination!r}", 404)
        # Other users fetch only through the hosts of the destination they push to:
        # the site's other logins (and the workers' own files) are not theirs to read.
        hosts = (
            None
            if user is None or user.admin
            else [h.name for h in catalog.destination_hosts(session, destination=dest)]
        )
        resolved: set[str] = set()
        first: list[DataTransfer] | None = None
        now = utcnow()
        files: list[dict[str, Any]] = []
        legs: list[list[dict[str, Any]]] = []
        for spec, rid in zip(sources, reqids, strict=True):
            folder, _, last = spec.url.rpartition("/")
            if folder in resolved and "?" not in last and "#" not in last:
                # The folder's URL was checked with the first file in it: only the name is new.
                name = spec.name or unquote(last)
            else:
                try:
                    parsed = parse_url(spec.url)
                    if folder not in resolved:
                        resolve_source(session, box, spec.url, hosts=hosts)
                        resolved.add(folder)
                except ProtocolError as exc:
                    raise IngestError(str(exc)) from None
                name = spec.name or posixpath.basename(parsed.path)
            check_file_name(name)
            target = spec.target or name
            if first is None or not uniform:
                # The request ids were checked above, one per file.
                push = replace(options, target=target, reqid=None)
                plan = plan_push(session, destination=destination, options=push, user=user)
                first = plan.transfers
            else:
                check_target(target)
            data_file_id = new_data_file_id()
            files.append(
                {
                    "id": data_file_id,
                    "name": name,
                    "size": 0,
                    "meta": dict(options.metadata) | spec.metadata,
                    "group": options.group,
                    "source": spec.url,
                    "reqid": rid,
                    "created": now,
                    "expires": max(t.expires for t in first),
                    "locations": [],
                    "deleted": False,
                }
            )
            legs.append(
                [
                    _transfer_row(t, data_file_id, target if uniform else t.target, now)
                    for t in first
                ]
            )
        # Core inserts, not the ORM's bulk path: at 10,000 files its per-row bookkeeping
        # costs more than the statements.
        connection = session.connection()
        connection.execute(table_of(DataFile).insert(), files)
        rows = [row for file_legs in legs for row in file_legs]
        ids = iter(
            connection.execute(
                table_of(DataTransfer)
                .insert()
                .returning(table_of(DataTransfer).c.id, sort_by_parameter_order=True),
                rows,
            ).scalars()
            if rows
            else ()
        )
        registered = [
            Registered(f["id"], f["name"], f["source"], [next(ids) for _ in file_legs])
            for f, file_legs in zip(files, legs, strict=True)
        ]
    return registered, True


def register_new(
    engine: Engine,
    box: CredentialBox,
    *,
    destination: str,
    sources: list[SourceSpec],
    options: PushOptions | None = None,
) -> tuple[list[Registered], int]:
    """Register, in one transaction, the sources whose own request ids are new: a burst of
    notifications, some of them seen before (from another broker, say).

    (the files registered, how many sources were known already). A source registered by
    someone else meanwhile makes the insert fail on the request id's unique index: the
    known ones are then looked up again, once.
    """
    for attempt in range(2):
        wanted = [s.reqid for s in sources]
        if None in wanted:
            raise IngestError("each source needs its own request id here")
        with session_scope(engine) as session:
            known = set(
                session.exec(select(DataFile.reqid).where(col(DataFile.reqid).in_(wanted))).all()
            )
        fresh: list[SourceSpec] = []
        for spec in sources:
            if spec.reqid not in known:
                known.add(spec.reqid)  # the same notification twice in one burst: once
                fresh.append(spec)
        if not fresh:
            return [], len(sources)
        try:
            files, _ = register_sources(
                engine, box, destination=destination, sources=fresh, options=options
            )
        except IntegrityError:
            if attempt:
                raise
            continue
        return files, len(sources) - len(fresh)
    raise AssertionError("unreachable")


def unfetched(session: Session, *, limit: int) -> dict[str, list[str]]:
    """Files registered by source and not yet in the store, by destination.

    Their retrieval may never have started (the workflow engine was down when they were
    registered); starting one that runs already changes nothing.
    """
    rows = session.exec(
        select(DataFile.id, Destination.name)
        .join(DataTransfer, col(DataTransfer.data_file_id) == col(DataFile.id))
        .join(Destination, col(Destination.id) == col(DataTransfer.destination_id))
        .where(col(DataFile.source).is_not(None))
        .where(col(DataFile.arrived).is_(None))
        .where(col(DataFile.deleted).is_(False))
        .where(col(DataTransfer.deleted).is_(False))
        .where(col(DataTransfer.status).in_(list(UNFETCHED)))
        .order_by(col(DataFile.id))
        .limit(limit)
    ).all()
    found: dict[str, list[str]] = {}
    seen: set[str] = set()
    for data_file_id, destination in rows:
        if data_file_id not in seen:
            seen.add(data_file_id)
            found.setdefault(destination, []).append(data_file_id)
    return found
