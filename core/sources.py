"""Sources of asynchronous pushes and acquisitions: which registered host can read a source
URL, and the connections the workers keep open to source folders while they fetch.

A source's credentials come from the registered host whose URL covers it, so they never
travel with the request.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import posixpath
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, col, select

from ecpds.core import catalog
from ecpds.core.models import Host, HostKind
from ecpds.core.protocols import HostUrl, ProtocolError, check_host, open_remote, parse_url
from ecpds.core.protocols.base import Remote
from ecpds.core.secrets import CredentialBox

CHECK_AFTER = 5.0  # seconds idle after which a pooled connection is checked before reuse


@dataclass
class Source:
    """Where and how to open one source file; `credentials` stay in the process."""

    host_name: str
    folder_url: str
    file_name: str
    options: dict[str, Any]
    credentials: dict[str, str]
    max_connections: int = 0  # the host's; 0: the destination's


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
            catalog.host_login(session, box=box, name=host.name),
            host.max_connections,
        )
    try:
        check_host(source.folder_url, reading_options(source.options), source.credentials)
    except ProtocolError as exc:
        if best is None:
            raise ProtocolError(
                f"source {url!r}: {exc} (register a host for {parsed.where} with its credentials)",
                retryable=False,
            ) from None
        raise
    return source


def reading_options(options: dict[str, Any]) -> dict[str, Any]:
    """A host's options for listing and reading (its upload-only settings left out)."""
    return {k: v for k, v in options.items() if k not in ("mode", "md5_sidecar")}


class SourceConnections:
    """Connections to source folders, kept open between the fetches of one worker.

    Logging in costs more than fetching a small file, so a connection goes back to the
    pool after a clean read and the next fetch from that folder takes it; each is used by
    one thread at a time. At most `limit` are open to one host with one login (its
    max_connections) in this worker: a fetch beyond waits for one, or closes an idle one
    to another folder of that host. A connection that failed is closed; idle ones are
    closed after `idle` seconds.
    """

    def __init__(self, *, idle: float = 60.0) -> None:
        self.idle = idle
        self._lock = threading.Condition()
        self._free: dict[tuple[str, ...], list[tuple[Remote, float]]] = {}  # by folder
        self._open: dict[tuple[str, ...], int] = {}  # by host and login

    @staticmethod
    def _key(source: Source) -> tuple[str, ...]:
        login = json.dumps([source.options, source.credentials], sort_keys=True, default=str)
        return (source.host_name, hashlib.sha256(login.encode()).hexdigest(), source.folder_url)

    def _take(self, key: tuple[str, ...], limit: int) -> tuple[Remote | None, float]:
        """A free connection and how long it idled, or (None, 0) once there is room to open
        one; waits while `limit` are in use."""
        host = key[:2]
        stale: list[Remote] = []
        try:
            with self._lock:
                while True:
                    now = time.monotonic()
                    free = self._free.get(key, [])
                    while free:
                        remote, since = free.pop()
                        if now - since < self.idle:
                            return remote, now - since
                        stale.append(remote)
                        self._open[host] -= 1
                    if self._open.get(host, 0) < limit:
                        self._open[host] = self._open.get(host, 0) + 1
                        return None, 0.0
                    # An idle connection to another folder gives its place to this one.
                    other = next((k for k, f in self._free.items() if k[:2] == host and f), None)
                    if other is not None:
                        stale.append(self._free[other].pop(0)[0])
                        return None, 0.0
                    self._lock.wait(1.0)
        finally:
            for remote in stale:
                remote.close()

    def _give(self, key: tuple[str, ...], remote: Remote | None) -> None:
        """Return a connection after a clean read, or (None) give up its place."""
        with self._lock:
            if remote is None:
                self._open[key[:2]] -= 1
            else:
                self._free.setdefault(key, []).append((remote, time.monotonic()))
            self._lock.notify()

    @contextlib.contextmanager
    def _connection(self, source: Source, limit: int) -> Iterator[tuple[Remote, bool]]:
        """(a connected Remote on the source's folder for this thread alone, whether it
        was pooled); it goes back to the pool only if the block ends cleanly."""
        key = self._key(source)
        remote, idled = self._take(key, max(1, limit))
        # Asking costs a round trip, as much as a small file: only after a pause.
        if remote is not None and idled > CHECK_AFTER and not remote.alive():
            remote.close()
            remote = None
        pooled = remote is not None
        try:
            if remote is None:
                remote = open_remote(
                    source.host_name,
                    source.folder_url,
                    reading_options(source.options),
                    source.credentials,
                )
            yield remote, pooled
        except BaseException:
            if remote is not None:
                remote.close()
            self._give(key, None)
            raise
        self._give(key, remote)

    def read(self, source: Source, *, limit: int, resumes: int = 3) -> Generator[bytes]:
        """The source file's bytes, over at most `limit` connections to its folder.

        A read cut off by a retryable error goes on where it stopped, on a new connection
        (up to `resumes` times in a row without progress); one that fails before its first
        byte on a pooled connection is tried once more on a new one.
        """
        offset, left = 0, resumes
        while True:
            began, pooled = offset, False
            try:
                with self._connection(source, limit) as (remote, pooled):
                    for chunk in remote.read(source.file_name, offset=offset):
                        offset += len(chunk)
                        yield chunk
                return
            except ProtocolError as exc:
                if not exc.retryable:
                    raise
                if offset > began:
                    left = resumes
                elif not (pooled or offset) or left <= 1:
                    raise
                else:
                    left -= 1

    def close(self) -> None:
        with self._lock:
            remotes = [r for free in self._free.values() for r, _ in free]
            for key, free in self._free.items():
                self._open[key[:2]] -= len(free)
            self._free.clear()
        for remote in remotes:
            remote.close()
