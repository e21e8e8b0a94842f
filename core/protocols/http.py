"""HTTP(S) uploads by PUT or POST, and WebDAV (MKCOL + PUT + MOVE): `https://host/dir`.

Listing reads a folder's index page (nginx autoindex, Apache and similar pages of
links), or asks WebDAV's PROPFIND when `method = "webdav"`; reading is a GET, ranged
to resume.

Basic auth takes the user from the URL and the password credential; a `token`
credential sends `Authorization: Bearer`. Bodies are streamed from the store, which is
why this is written on httpx: fsspec's HTTP filesystem opens files for reading only and has
no WebDAV verbs.
"""

from __future__ import annotations

import contextlib
import html
import posixpath
import re
import secrets
import ssl
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal
from urllib.parse import quote, unquote, urlsplit

import httpx

from ecpds.core.protocols import CommonOptions, HostUrl, ProtocolError, options_dataclass
from ecpds.core.protocols.base import Remote

CREDENTIALS = frozenset({"password", "token"})


@options_dataclass(config={"extra": "forbid"})
class Options(CommonOptions):
    method: Literal["put", "post", "webdav"] = "put"
    form_field: str = "file"  # post: the multipart field that carries the file
    verify_tls: bool = True
    ca_file: str | None = None
    headers: dict[str, str] | None = None


def check(url: HostUrl, options: Options, credentials: dict[str, str]) -> None:
    if not url.host:
        raise ProtocolError(f"{url.scheme} URL {url.url!r} names no host", retryable=False)
    if url.user and not credentials.get("password"):
        raise ProtocolError(
            f"{url.where}: basic auth for user {url.user!r} needs a password credential",
            retryable=False,
        )
    if credentials.get("password") and not url.user:
        raise ProtocolError(
            f"{url.where}: a password needs a user name in the URL (https://user@host/dir)",
            retryable=False,
        )
    if url.user and credentials.get("token"):
        raise ProtocolError(
            f"{url.where}: give either a user with a password (basic) or a token (bearer)",
            retryable=False,
        )


Entry = tuple[str, int, datetime | None, bool]

_PROPFIND = (
    b'<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:"><D:prop>'
    b"<D:resourcetype/><D:getcontentlength/><D:getlastmodified/></D:prop></D:propfind>"
)
_DAV = "{DAV:}"
_LINK = re.compile(
    r"<a\s[^>]*?href\s*=\s*[\"']([^\"']*)[\"'][^>]*>.*?</a>(.*?)(?=<a\s|\n|$)", re.I | re.S
)
_TAG = re.compile(r"<[^>]*>")
# what index pages print after a link: nginx "07-Dec-2026 01:00   1234", Apache
# "2026-12-07 01:00  1.2K"; a size that is not in bytes is asked for with HEAD
_NGINX_TIME = re.compile(r"(\d{2})-([A-Za-z]{3})-(\d{4}) (\d{2}):(\d{2})(?::(\d{2}))?")
_ISO_TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2})(?::(\d{2}))?")
_MONTHS = {
    m: i
    for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1
    )
}


def _http_time(value: str | None) -> datetime | None:
    """An HTTP date (Last-Modified, getlastmodified, nginx JSON's mtime)."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _index_details(text: str) -> tuple[int | None, datetime | None]:
    """(size in bytes, time) from what follows a link on an index page, when it says."""
    text = html.unescape(_TAG.sub(" ", text))
    when = None
    end = 0
    if found := _NGINX_TIME.search(text):
        day, month, year, hour, minute, second = found.groups()
        month = str(_MONTHS.get(month.lower(), 0))
    elif found := _ISO_TIME.search(text):
        year, month, day, hour, minute, second = found.groups()
    if found:
        end = found.end()
        with contextlib.suppress(ValueError):
            when = datetime(
                int(year), int(month), int(day), int(hour), int(minute), int(second or 0),
                tzinfo=UTC,
            )  # fmt: skip
    rest = text[end:].split()
    size = int(rest[0]) if rest and rest[0].isdigit() else None
    return size, when


def parse_index(page: str, folder: str) -> list[tuple[str, bool, int | None, datetime | None]]:
    """(name, is_dir, size, time) of each child that an index page of `folder` links to."""
    found: dict[str, tuple[str, bool, int | None, datetime | None]] = {}
    prefix = folder.rstrip("/") + "/"
    for href, after in _LINK.findall(page):
        link = html.unescape(href).split("#", 1)[0].split("?", 1)[0]
        if not link or "://" in link or link.startswith(("mailto:", "javascript:")):
            continue
        path = unquote(link)
        if path.startswith("/"):
            if not path.startswith(prefix):
                continue  # a link elsewhere on the site (the parent, a stylesheet)
            path = path[len(prefix) :]
        if path.startswith("./"):
            path = path[2:]
        is_dir = path.endswith("/")
        name = path.rstrip("/")
        if not name or "/" in name or name in (".", ".."):
            continue
        size, when = _index_details(after)
        found.setdefault(name, (name, is_dir, None if is_dir else size, when))
    return list(found.values())


class HttpStatusError(Exception):
    def __init__(self, status: int, method: str, reason: str) -> None:
        super().__init__(f"{method} answered {status} {reason}")
        self.status = status


class HttpRemote(Remote):
    """PUT/POST have neither rename nor resume; WebDAV renames but does not resume."""

    options: Options
    resumable = False

    def __init__(
        self, host_name: str, url: HostUrl, options: Options, client: httpx.Client
    ) -> None:
        super().__init__(host_name, url, options)
        self.client = client
        self.renames = options.method == "webdav"
        self.checks_size = options.method != "post"

    def _href(self, path: str) -> str:
        return quote(path if path.startswith("/") else f"/{path}")

    def _expect(self, response: httpx.Response, *ok: int) -> httpx.Response:
        if response.status_code not in ok:
            raise HttpStatusError(
                response.status_code, response.request.method, response.reason_phrase
            )
        return response

    def _write(self, path: str, chunks: Iterable[bytes], offset: int) -> int:
        written = 0

        def body() -> Iterator[bytes]:
            nonlocal written
            for chunk in chunks:
                written += len(chunk)
                yield chunk

        if self.options.method == "post":
            boundary = secrets.token_hex(16)
            name = posixpath.relpath(path, self.url.path or "/")
            head = (
                f"--{boundary}\r\nContent-Disposition: form-data; "
                f'name="{self.options.form_field}"; filename="{name}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()

            def form() -> Iterator[bytes]:
                yield head
                yield from body()
                yield f"\r\n--{boundary}--\r\n".encode()

            response = self.client.post(
                self._href(self.url.path or "/"),
                content=form(),
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            )
            self._expect(response, 200, 201, 204)
        else:
            headers = {}
            if self.upload_size is not None:
                # A known length spares the server chunked decoding (much faster on some).
                headers["Content-Length"] = str(self.upload_size)
            response = self.client.put(self._href(path), content=body(), headers=headers)
            self._expect(response, 200, 201, 204)
        return written

    def _rename(self, source: str, dest: str) -> None:
        destination = str(self.client.base_url.join(self._href(dest)))
        response = self.client.request(
            "MOVE", self._href(source), headers={"Destination": destination, "Overwrite": "T"}
        )
        self._expect(response, 201, 204)

    def _makedirs(self, folder: str) -> None:
        if self.options.method != "webdav":
            return  # plain HTTP servers make their own folders, or refuse
        current = ""
        for part in [p for p in folder.split("/") if p]:
            current = f"{current}/{part}"
            response = self.client.request("MKCOL", self._href(current) + "/")
            # 405: the collection exists already. Another transfer may have made it in the
            # meantime, which some servers answer with an error: it is there all the same.
            if response.status_code not in (201, 405) and not self._collection(current):
                self._expect(response, 201, 405)

    def _collection(self, path: str) -> bool:
        response = self.client.request("PROPFIND", self._href(path) + "/", headers={"Depth": "0"})
        return response.status_code == 207

    def _size(self, path: str) -> int | None:
        response = self.client.head(self._href(path))
        if response.status_code in (404, 410):
            return None
        self._expect(response, 200)
        length = response.headers.get("content-length")
        return int(length) if length is not None else None

    def _delete(self, path: str) -> None:
        self._expect(self.client.delete(self._href(path)), 200, 204, 404)

    def _list(self, folder: str, recursive: bool) -> Iterator[Entry]:
        pending = [folder]
        while pending:
            current = pending.pop()
            if self.options.method == "webdav":
                entries = self._propfind(current)
            else:
                entries = self._index(current)
            for entry in entries:
                yield entry
                if entry[3] and recursive:
                    pending.append(entry[0])

    def _index(self, folder: str) -> list[Entry]:
        """The entries an index page links to; HEAD for what the page does not say."""
        response = self.client.get(self._href(folder).rstrip("/") + "/")
        if response.status_code in (404, 410):
            raise self.missing_folder(folder)
        self._expect(response, 200)
        base = folder.rstrip("/")
        if "json" in response.headers.get("content-type", ""):
            # nginx's `autoindex_format json`: exact sizes and times
            entries = []
            for item in response.json():
                is_dir = item.get("type") == "directory"
                length = 0 if is_dir else int(item.get("size") or 0)
                entries.append(
                    (f"{base}/{item['name']}", length, _http_time(item.get("mtime")), is_dir)
                )
            return entries
        found = []
        for name, is_dir, size, when in parse_index(response.text, folder):
            path = f"{base}/{name}"
            if not is_dir and (size is None or when is None):
                head = self._expect(self.client.head(self._href(path)), 200)
                length = head.headers.get("content-length")
                size = int(length) if size is None and length is not None else size
                when = when or _http_time(head.headers.get("last-modified"))
            found.append((path, 0 if is_dir else size or 0, when, is_dir))
        return found

    def _propfind(self, folder: str) -> list[Entry]:
        """One WebDAV collection's members (PROPFIND, Depth 1)."""
        href = self._href(folder).rstrip("/") + "/"
        response = self.client.request(
            "PROPFIND",
            href,
            content=_PROPFIND,
            headers={"Depth": "1", "Content-Type": "application/xml; charset=utf-8"},
        )
        if response.status_code in (404, 410):
            raise self.missing_folder(folder)
        self._expect(response, 207)
        try:
            root = ElementTree.fromstring(response.content)
        except ElementTree.ParseError as exc:
            raise HttpStatusError(
                207, "PROPFIND", f"with XML that does not parse ({exc})"
            ) from None
        base = folder.rstrip("/")
        own = unquote(href).rstrip("/")
        entries = []
        for item in root.iter(f"{_DAV}response"):
            location = unquote(urlsplit(item.findtext(f"{_DAV}href") or "").path).rstrip("/")
            if not location or location == own:
                continue
            name = posixpath.basename(location)
            prop = None
            for propstat in item.iter(f"{_DAV}propstat"):
                if " 200 " in f"{propstat.findtext(f'{_DAV}status') or ''} ":
                    prop = propstat.find(f"{_DAV}prop")
            if prop is None:
                continue
            kind = prop.find(f"{_DAV}resourcetype")
            is_dir = kind is not None and kind.find(f"{_DAV}collection") is not None
            length = (prop.findtext(f"{_DAV}getcontentlength") or "").strip()
            size = 0 if is_dir or not length.isdigit() else int(length)
            when = _http_time(prop.findtext(f"{_DAV}getlastmodified"))
            entries.append((f"{base}/{name}", size, when, is_dir))
        return entries

    def _read(self, path: str, offset: int) -> Iterator[bytes]:
        """GET, with `Range: bytes=OFFSET-` to resume; a server that ignores it is refused."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with self.client.stream("GET", self._href(path), headers=headers) as response:
            if response.status_code in (404, 410):
                raise FileNotFoundError(path)
            if response.status_code == 416 and offset:
                total = response.headers.get("content-range", "").rpartition("/")[2]
                if total.isdigit() and int(total) == offset:
                    return  # nothing left after the offset
            if offset and response.status_code == 200:
                raise self.no_resume(path, offset)
            self._expect(response, 206 if offset else 200)
            yield from response.iter_bytes(self.options.chunk_size)

    def explain(self, exc: BaseException) -> tuple[str, bool] | None:
        if isinstance(exc, HttpStatusError):
            if exc.status == 401:
                who = f"user {self.url.user!r}" if self.url.user else "the token"
                return f"authentication failed for {who} ({exc})", True
            if exc.status == 403:
                return f"permission denied ({exc})", True
            if exc.status in (404, 409):
                return f"the folder does not exist ({exc})", True
            if exc.status == 507:
                return f"remote disk full ({exc})", True
            return str(exc), True
        if isinstance(exc, httpx.ConnectError):
            text = str(exc)
            if "Name or service not known" in text or "nodename nor servname" in text:
                return f"unknown host {self.url.host!r}", True
            if "refused" in text.lower():
                return "connection refused (is the server running on that port?)", True
            if "CERTIFICATE_VERIFY_FAILED" in text:
                return f"TLS certificate not trusted ({text})", True
            return f"cannot connect ({text})", True
        if isinstance(exc, httpx.TimeoutException):
            return "timed out", True
        if isinstance(exc, httpx.TransportError):
            return f"connection failed ({exc or type(exc).__name__})", True
        return None

    def alive(self) -> bool:
        return not self.client.is_closed

    def close(self) -> None:
        self.client.close()


def connect(
    host_name: str, url: HostUrl, options: Options, credentials: dict[str, str]
) -> HttpRemote:
    verify: ssl.SSLContext | bool = True
    if url.scheme == "https":
        verify = ssl.create_default_context(cafile=options.ca_file)
        if not options.verify_tls:
            verify = False
    auth = httpx.BasicAuth(url.user, credentials["password"]) if url.user else None
    headers = dict(options.headers or {})
    if credentials.get("token"):
        headers["Authorization"] = f"Bearer {credentials['token']}"
    port = f":{url.port}" if url.port else ""
    client = httpx.Client(
        base_url=f"{url.scheme}://{url.host}{port}",
        auth=auth,
        headers=headers,
        verify=verify,
        timeout=httpx.Timeout(options.timeout),
        follow_redirects=False,
    )
    return HttpRemote(host_name, url, options, client)
