"""Protocol registry: a URL scheme maps to a lazily imported implementation module.

Each module defines `Options` (a typed dataclass, unknown keys refused), `CREDENTIALS`
(the credential keys it understands), `check(url, options, credentials)` and
`connect(host_name, url, options, credentials) -> Remote`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as options_dataclass

__all__ = [
    "PROTOCOLS",
    "CommonOptions",
    "HostUrl",
    "Protocol",
    "ProtocolError",
    "check_host",
    "load",
    "open_remote",
    "options_dataclass",
    "parse_options",
    "parse_url",
]

MiB = 1 << 20


class ProtocolError(Exception):
    """A protocol failure, in one line naming the protocol and host.

    `retryable` is False when trying again cannot help (bad configuration, wrong
    credentials are still retried by the destination's rules: the operator may fix them).
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(" ".join(message.split()))
        self.retryable = retryable


@dataclass(frozen=True)
class Protocol:
    scheme: str
    module: str
    package: str  # the pip package whose absence makes the import fail


PROTOCOLS: dict[str, Protocol] = {
    p.scheme: p
    for p in (
        Protocol("file", "ecpds.core.protocols.file", "fsspec"),
        Protocol("sftp", "ecpds.core.protocols.sftp", "sshfs"),
        Protocol("ftp", "ecpds.core.protocols.ftp", "fsspec"),
        Protocol("ftps", "ecpds.core.protocols.ftp", "fsspec"),
        Protocol("http", "ecpds.core.protocols.http", "httpx"),
        Protocol("https", "ecpds.core.protocols.http", "httpx"),
        Protocol("s3", "ecpds.core.protocols.s3", "s3fs"),
        Protocol("azure", "ecpds.core.protocols.azure", "adlfs"),
        Protocol("gcs", "ecpds.core.protocols.gcs", "gcsfs"),
    )
}


@dataclass(frozen=True)
class HostUrl:
    """A host URL split into parts; passwords are refused (they belong in credentials)."""

    scheme: str
    user: str | None
    host: str
    port: int | None
    path: str
    url: str

    @property
    def where(self) -> str:
        """`scheme://host[:port]`, for messages."""
        port = f":{self.port}" if self.port else ""
        return f"{self.scheme}://{self.host}{port}"


def parse_url(url: str) -> HostUrl:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ProtocolError(f"invalid host URL {url!r}: {exc}", retryable=False) from None
    scheme = parts.scheme.lower()
    if not scheme:
        raise ProtocolError(
            f"host URL {url!r} has no scheme: use e.g. sftp://user@host/dir", retryable=False
        )
    if parts.password is not None:
        raise ProtocolError(
            f"host URL for {parts.hostname} holds a password: put it in the credentials instead",
            retryable=False,
        )
    if parts.query or parts.fragment:
        raise ProtocolError(
            f"host URL {url!r} has a query or fragment: put settings in the options",
            retryable=False,
        )
    return HostUrl(
        scheme=scheme,
        user=unquote(parts.username) if parts.username else None,
        host=parts.hostname or "",
        port=port,
        path=unquote(parts.path),
        url=url.strip(),
    )


def load(scheme: str) -> ModuleType:
    """The implementation module of `scheme`, imported on first use."""
    proto = PROTOCOLS.get(scheme)
    if proto is None:
        known = ", ".join(sorted(PROTOCOLS))
        raise ProtocolError(f"unknown protocol {scheme!r}: use one of {known}", retryable=False)
    try:
        return importlib.import_module(proto.module)
    except ModuleNotFoundError as exc:
        if exc.name == proto.module:
            raise ProtocolError(
                f"protocol {scheme} is not available in this installation", retryable=False
            ) from None
        raise ProtocolError(
            f"protocol {scheme} needs the Python package {exc.name or proto.package}:"
            f" pip install {proto.package}",
            retryable=False,
        ) from None


_CONFIG = ConfigDict(extra="forbid", arbitrary_types_allowed=False)


@options_dataclass(config=_CONFIG)
class CommonOptions:
    """Options every protocol understands (all sizes in bytes, rates in bytes/s)."""

    chunk_size: int = Field(default=4 * MiB, ge=64 * 1024, le=64 * MiB)
    timeout: float = Field(default=60.0, gt=0)
    temp_name: bool = True  # upload under a temporary name, rename when complete
    mkdirs: bool = True
    md5_sidecar: bool = False  # also write TARGET.md5
    max_rate: int = Field(default=0, ge=0)  # bandwidth limit, 0 = none
    min_rate: int = Field(default=0, ge=0)  # slower than this after the grace period: abort
    min_rate_grace: float = Field(default=30.0, ge=0)
    max_duration: float = Field(default=0.0, ge=0)  # seconds, 0 = none
    compression: str | None = None  # used when the destination sets none
    compression_pattern: str | None = None
    compression_min_size: int = Field(default=0, ge=0)
    checksums: tuple[Literal["sha256", "sha512"], ...] = ()


def parse_options(cls: type[Any], options: Mapping[str, Any] | None, where: str) -> Any:
    """`options` validated into `cls`; one line naming the first bad key otherwise."""
    try:
        return TypeAdapter(cls).validate_python(dict(options or {}))
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "options"
        if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            allowed = ", ".join(sorted(cls.__dataclass_fields__))
            msg = f"{where}: unknown option {key!r} (allowed: {allowed})"
        else:
            msg = f"{where}: option {key!r}: {err['msg']}"
        raise ProtocolError(msg, retryable=False) from None


def check_credentials(
    url: HostUrl, credentials: Mapping[str, str] | None, allowed: frozenset[str]
) -> dict[str, str]:
    creds = {k: v for k, v in (credentials or {}).items() if k != "mqtt_password"}
    unknown = sorted(set(creds) - allowed)
    if unknown:
        names = ", ".join(sorted(allowed)) or "none"
        raise ProtocolError(
            f"{url.where}: unknown credential {unknown[0]!r} for {url.scheme} (allowed: {names})",
            retryable=False,
        )
    return creds


def check_host(
    url: str, options: Mapping[str, Any] | None, credentials: Mapping[str, str] | None
) -> None:
    """Raise ProtocolError if a host with these settings cannot work; no connection made."""
    parsed = parse_url(url)
    module = load(parsed.scheme)
    opts = parse_options(module.Options, options, parsed.where)
    if opts.compression:
        from ecpds.core.compression import CompressionError, get_codec

        try:
            get_codec(opts.compression)
        except CompressionError as exc:
            raise ProtocolError(
                f"{parsed.where}: option 'compression': {exc}", retryable=False
            ) from None
    creds = check_credentials(parsed, credentials, module.CREDENTIALS)
    module.check(parsed, opts, creds)


def open_remote(
    host_name: str,
    url: str,
    options: Mapping[str, Any] | None,
    credentials: Mapping[str, str] | None,
) -> Any:
    """A connected `Remote` for the host (see `ecpds.core.protocols.base.Remote`)."""
    parsed = parse_url(url)
    module = load(parsed.scheme)
    opts = parse_options(module.Options, options, f"{parsed.scheme} host {host_name}")
    creds = check_credentials(parsed, credentials, module.CREDENTIALS)
    module.check(parsed, opts, creds)
    return module.connect(host_name, parsed, opts, creds)
