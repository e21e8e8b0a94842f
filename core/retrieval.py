"""Asynchronous push: register files by their source URL, to be fetched into the store later.

`register_sources` records metadata only (a DataFile without bytes, its transfers INIT or
HOLD); a RetrievalWorkflow per file then fetches it. A source's credentials come from
the registered host whose URL covers it, so they never travel with the request.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, insert
from sqlmodel import Session, col, select

from ecpds.core import catalog
from ecpds.core.db import session_scope
from ecpds.core.ingest import IngestError, _plan
from ecpds.core.models import (
    Alias,
    DataFile,
    DataTransfer,
    DataUser,
    Destination,
    Host,
    HostKind,
    TransferStatus,
    new_data_file_id,
    utcnow,
)
from ecpds.core.protocols import HostUrl, ProtocolError, check_host, open_remote, parse_url
from ecpds.core.secrets import CredentialBox

MAX_SOURCES = 10_000
BATCH = 1000  # retrievals started by one RetrievalBatchWorkflow


@dataclass
class SourceSpec:
    """One file to fetch: its URL, and optionally its name and target (default: basename)."""

    url: str
    name: str | None = None
    target: str | None = None


@dataclass
class Registered:
    id: str
    name: str
    source: str
    transfers: list[int] = field(default_factory=list)


@dataclass
class Source:
    """Where and how to open one source file; `credentials` stay in the process."""

    host_name: str
    folder_url: str
    file_name: str
    options: dict[str, Any]
    credentials: dict[str, str]


def _same_server(a: HostUrl, b: HostUrl) -> bool:
    return (a.scheme, a.host, a.port, a.user) == (b.scheme, b.host, b.port, b.user or a.user)


def resolve_source(
    session: Session, box: CredentialBox, url: str, *, hosts: list[str] | None = None
) -> Source:
    """The host covering `url` (longest folder prefix, acquisition hosts first) and its login.

    With `hosts`, only those may be used and one of them must cover the URL. Raises
    ProtocolError (one line) when the URL is invalid or no host can log in to it.
    """
    parsed = parse_url(url)
    folder, file_name = posixpath.split(parsed.path)
    if not file_name:
        raise ProtocolError(f"source {url!r} names a folder, not a file", retryable=False)
    if ".." in parsed.path.split("/"):
        raise ProtocolError(f"source {url!r}: '..' is not allowed in the path", retryable=False)
    query = select(Host).where(col(Host.active).is_(True))
    if hosts is not None:
        query = query.where(col(Host.name).in_(hosts))
    best: tuple[int, int, Host] | None = None
    for host in session.exec(query).all():
        try:
            host_url = parse_url(host.url)
        except ProtocolError:
            continue
        base = host_url.path.rstrip("/")
        if not _same_server(host_url, parsed) or not (folder + "/").startswith(base + "/"):
            continue
        rank = (len(base), int(host.kind == HostKind.ACQUISITION), host)
        if best is None or rank[:2] > best[:2]:
            best = rank
    netloc = url.split("://", 1)[-1].split("/", 1)[0]
    folder_url = f"{parsed.scheme}://{netloc}{folder or '/'}"
    if best is None and hosts is not None:
        raise ProtocolError(
            f"source {url!r} is not under a host of this destination "
            f"(its hosts: {', '.join(hosts) or 'none'})",
            retryable=False,
        )
    if best is None:
        source = Source(parsed.host or "local", folder_url, file_name, {}, {})
    else:
        host = best[2]
        source = Source(
            host.name,
            folder_url,
            file_name,
            dict(host.options),
            catalog.host_credentials(session, box=box, name=host.name),
        )
    try:
        check_host(
            source.folder_url, _fetch_options(source.options, source.folder_url), source.credentials
        )
    except ProtocolError as exc:
        if best is None:
            raise ProtocolError(
                f"source {url!r}: {exc} (register a host for {parsed.where} with its credentials)",
                retryable=False,
            ) from None
        raise
    return source


def _fetch_options(options: dict[str, Any], url: str) -> dict[str, Any]:
    # Upload-only settings of the host do not matter for reading.
    kept = {k: v for k, v in options.items() if k not in ("mode", "md5_sidecar", "engine")}
    if parse_url(url).scheme == "sftp":
        kept["engine"] = "asyncssh"  # reads go through fsspec; the OpenSSH engine only sends
    return kept


class SourceConnections:
    """Open connections to source folders, shared by the fetches of one worker.

    Logging in costs more than fetching a small file; a connection that fails once is
    dropped, and the least recently used one is closed beyond `size`.
    """

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self._remotes: OrderedDict[tuple[str, ...], Any] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(source: Source) -> tuple[str, ...]:
        login = json.dumps([source.options, source.credentials], sort_keys=True, default=str)
        return (source.host_name, source.folder_url, hashlib.sha256(login.encode()).hexdigest())

    def _remote(self, source: Source) -> Any:
        key = self._key(source)
        with self._lock:
            remote = self._remotes.get(key)
            if remote is not None:
                self._remotes.move_to_end(key)
                return remote
        remote = open_remote(
            source.host_name,
            source.folder_url,
            _fetch_options(source.options, source.folder_url),
            source.credentials,
        )
        if getattr(remote, "fs", None) is None:
            remote.close()
            raise ProtocolError(
                f"{source.folder_url}: this protocol cannot be read from", retryable=False
            )
        with self._lock:
            self._remotes[key] = remote
            while len(self._remotes) > self.size:
                _, oldest = self._remotes.popitem(last=False)
                oldest.close()
        return remote

    def drop(self, source: Source) -> None:
        with self._lock:
            remote = self._remotes.pop(self._key(source), None)
        if remote is not None:
            remote.close()

    def open(self, source: Source) -> tuple[Any, Any]:
        """(remote, readable file) for the source; the caller closes the file."""
        remote = self._remote(source)
        path = remote.path(source.file_name)
        try:
            return remote, remote.fs.open(path, "rb")
        except FileNotFoundError:
            raise ProtocolError(
                f"{source.host_name}: source file {path} does not exist", retryable=False
            ) from None
        except Exception as exc:
            self.drop(source)
            raise remote.to_protocol_error(exc, f"opening {path}") from None

    def close(self) -> None:
        with self._lock:
            remotes, self._remotes = list(self._remotes.values()), OrderedDict()
        for remote in remotes:
            remote.close()


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
    priority: int | None = None,
    lifetime: int | None = None,
    delay: int | None = None,
    at: datetime | None = None,
    standby: bool | None = None,
    metadata: dict[str, str] | None = None,
    group: str | None = None,
    reqid: str | None = None,
) -> tuple[list[Registered], bool]:
    """Register every source (all or nothing); (files, whether they are new).

    The same request id again returns the files registered the first time.
    """
    if not sources:
        raise IngestError("no source given")
    if len(sources) > MAX_SOURCES:
        raise IngestError(f"{len(sources)} sources in one request: the limit is {MAX_SOURCES}")
    reqids = _reqids(reqid, len(sources))
    with session_scope(engine) as session:
        earlier = _existing(session, reqids)
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
            try:
                parsed = parse_url(spec.url)
                folder = spec.url.rsplit("/", 1)[0]
                if folder not in resolved:
                    resolve_source(session, box, spec.url, hosts=hosts)
                    resolved.add(folder)
            except ProtocolError as exc:
                raise IngestError(str(exc)) from None
            name = spec.name or posixpath.basename(parsed.path)
            if not name or "/" in name or "\0" in name:
                raise IngestError(f"file name {name!r} is not a plain file name")
            target = spec.target or name
            if first is None or not uniform:
                plan = _plan(
                    session,
                    destination=destination,
                    target=target,
                    user=user,
                    priority=priority,
                    lifetime=lifetime,
                    delay=delay,
                    at=at,
                    standby=standby,
                    reqid=None,
                )
                first = plan.transfers
            elif target.endswith("/") or "\0" in target:
                raise IngestError(f"target {target!r} is not a file name")
            data_file_id = new_data_file_id()
            files.append(
                {
                    "id": data_file_id,
                    "name": name,
                    "size": 0,
                    "meta": dict(metadata or {}),
                    "group": group,
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
        session.execute(insert(DataFile), files)
        rows = [row for file_legs in legs for row in file_legs]
        ids = iter(
            session.execute(
                insert(DataTransfer).returning(col(DataTransfer.id), sort_by_parameter_order=True),
                rows,
            ).scalars()
        )
        registered = [
            Registered(f["id"], f["name"], f["source"], [next(ids) for _ in file_legs])
            for f, file_legs in zip(files, legs, strict=True)
        ]
    return registered, True


@dataclass
class GroupProgress:
    group: str
    total: int = 0
    arrived: int = 0
    pending: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)  # id, name, source, error

    @property
    def finished(self) -> bool:
        return self.pending == 0


def group_progress(
    session: Session, *, group: str, destinations: list[str] | None = None
) -> GroupProgress:
    """How far the group's files are: in the store, failed (with why), still to come.

    Counted in SQL: `ecpds wait` asks every second while the workers fetch.
    """
    members = (
        select(DataFile.id).where(DataFile.group == group).where(col(DataFile.deleted).is_(False))
    )
    if destinations is not None:
        members = members.where(
            col(DataFile.id).in_(
                select(DataTransfer.data_file_id)
                .join(Destination, col(Destination.id) == col(DataTransfer.destination_id))
                .where(col(Destination.name).in_(destinations))
            )
        )
    ids = members.subquery()
    total, arrived = session.exec(
        select(func.count(), func.count(col(DataFile.arrived))).where(
            col(DataFile.id).in_(select(ids.c.id))
        )
    ).one()
    progress = GroupProgress(group=group, total=total, arrived=arrived)
    failed = session.exec(
        select(DataFile.id, DataFile.name, DataFile.source, DataTransfer.last_error)
        .join(DataTransfer, col(DataTransfer.data_file_id) == col(DataFile.id))
        .where(col(DataFile.id).in_(select(ids.c.id)))
        .where(col(DataFile.arrived).is_(None))
        .where(DataTransfer.status == TransferStatus.FAIL)
        .order_by(col(DataFile.name))
    ).all()
    seen: set[str] = set()
    for data_file_id, name, source, error in failed:
        if data_file_id not in seen:
            seen.add(data_file_id)
            progress.failed.append(
                {"id": data_file_id, "name": name, "source": source or "", "error": error or ""}
            )
    progress.pending = total - arrived - len(progress.failed)
    return progress
