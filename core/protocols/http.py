"""HTTP(S) uploads by PUT or POST, and WebDAV (MKCOL + PUT + MOVE): `https://host/dir`.

Basic auth takes the user from the URL and the password credential; a `token`
credential sends `Authorization: Bearer`. Bodies are streamed from the store, which is
why this is written on httpx: fsspec's HTTP filesystem opens files for reading only and has
no WebDAV verbs.
"""

from __future__ import annotations

import posixpath
import secrets
import ssl
from collections.abc import Iterable, Iterator
from typing import Literal
from urllib.parse import quote

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
