"""FTP and explicit-TLS FTPS: `ftp://user@host[:port]/dir`, `ftps://user@host/dir`."""

from __future__ import annotations

from ecpds.core.protocols import CommonOptions, HostUrl, ProtocolError, options_dataclass

CREDENTIALS = frozenset({"password"})


@options_dataclass(config={"extra": "forbid"})
class Options(CommonOptions):
    passive: bool = True
    verify_tls: bool = True  # ftps: check the server certificate
    ca_file: str | None = None  # ftps: trust this CA bundle instead of the system's


def check(url: HostUrl, options: Options, credentials: dict[str, str]) -> None:
    if not url.host:
        raise ProtocolError(f"{url.scheme} URL {url.url!r} names no host", retryable=False)
    if url.user and url.user != "anonymous" and not credentials.get("password"):
        raise ProtocolError(
            f"{url.where}: {url.scheme} user {url.user!r} needs a password credential",
            retryable=False,
        )
