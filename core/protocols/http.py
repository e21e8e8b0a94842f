"""HTTP(S) uploads by PUT or POST, and WebDAV (MKCOL + PUT + MOVE): `https://host/dir`."""

from __future__ import annotations

from typing import Literal

from ecpds.core.protocols import CommonOptions, HostUrl, ProtocolError, options_dataclass

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
