"""Sources of asynchronous pushes: which registered host can read a source URL, and the
connections the workers keep open to source folders while they fetch.

A source's credentials come from the registered host whose URL covers it, so they never
travel with the request.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, col, select

from ecpds.core import catalog
from ecpds.core.models import Host, HostKind
from ecpds.core.protocols import HostUrl, ProtocolError, check_host, open_remote, parse_url
from ecpds.core.secrets import CredentialBox


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
            catalog.host_login(session, box=box, name=host.name),
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
