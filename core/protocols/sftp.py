"""SFTP: `sftp://user@host[:port]/dir` (`/~/dir` is home-relative).

Two engines: the OpenSSH client (`ecpds.core.protocols.openssh`), used when one is
installed, and sshfs/asyncssh, in Python, everywhere else or when a host asks for it.
"""

from __future__ import annotations

import contextlib
import errno
import posixpath
from collections.abc import Iterable
from typing import Annotated, Any, Literal

import asyncssh
from fsspec.asyn import sync
from pydantic import Field
from sshfs import SSHFileSystem

from ecpds.core.protocols import CommonOptions, HostUrl, ProtocolError, options_dataclass
from ecpds.core.protocols.base import FsspecRemote, Remote

CREDENTIALS = frozenset({"password", "private_key", "passphrase"})

# AES-GCM runs on AES-NI through OpenSSL: about twice asyncssh's default (ChaCha20) speed.
FAST_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
    "chacha20-poly1305@openssh.com",
)


@options_dataclass(config={"extra": "forbid"})
class Options(CommonOptions):
    host_key: str | None = None  # expected fingerprint "SHA256:..." or "MD5:..."; None = any
    mode: str | None = Field(default=None, pattern=r"^[0-7]{3,4}$")  # chmod after upload
    requests: int = Field(default=64, ge=1, le=1024)  # pipelined SFTP requests in flight
    # preference order offered to the server; names as OpenSSH and asyncssh spell them
    ciphers: tuple[Annotated[str, Field(pattern=r"^[a-z0-9@.-]+$")], ...] = FAST_CIPHERS
    # auto: OpenSSH when its client is installed (a third of asyncssh's CPU per byte)
    engine: Literal["auto", "openssh", "asyncssh"] = "auto"


def check(url: HostUrl, options: Options, credentials: dict[str, str]) -> None:
    if not url.host:
        raise ProtocolError(f"sftp URL {url.url!r} names no host", retryable=False)
    if not url.user:
        raise ProtocolError(
            f"{url.where}: sftp needs a user name in the URL (sftp://user@host/dir)",
            retryable=False,
        )
    if not (credentials.get("password") or credentials.get("private_key")):
        raise ProtocolError(
            f"{url.where}: sftp user {url.user!r} needs a password or a private_key credential",
            retryable=False,
        )
    if options.host_key and not options.host_key.startswith(("SHA256:", "MD5:")):
        raise ProtocolError(
            f"{url.where}: option 'host_key' must be a fingerprint like SHA256:...",
            retryable=False,
        )


class _PinnedHostKey(asyncssh.SSHClient):
    """Accepts the server only if its host key has the configured fingerprint."""

    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint
        self.seen: str | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int, key: Any) -> bool:
        algorithm = "md5" if self.fingerprint.startswith("MD5:") else "sha256"
        self.seen = key.get_fingerprint(algorithm)
        return self.seen == self.fingerprint


class SftpRemote(FsspecRemote):
    fs: SSHFileSystem

    def open_kwargs(self) -> dict[str, Any]:
        opts: Options = self.options  # type: ignore[assignment]
        # sshfs splits each write into `max_requests` pipelined SFTP requests.
        block = max(opts.chunk_size // opts.requests, 32 * 1024)
        return {"block_size": min(block, 255 * 1024), "max_requests": opts.requests}

    def _write(self, path: str, chunks: Iterable[bytes], offset: int) -> int:
        try:
            return super()._write(path, chunks, offset)
        except asyncssh.SFTPFailure as exc:
            # SFTP v3 reports a full disk as a bare "Failure": ask the server for free space.
            if self._nearly_full(posixpath.dirname(path)):
                raise OSError(errno.ENOSPC, "No space left on device") from exc
            raise

    def _nearly_full(self, folder: str) -> bool:
        async def free() -> int:
            async with self.fs._pool.get() as channel:
                stat = await channel.statvfs(folder or ".")
                return int(stat.bavail * stat.frsize)

        try:
            return (
                sync(self.fs.loop, free, timeout=self.options.timeout) < 2 * self.options.chunk_size
            )
        except Exception:
            return False

    def _finish(self, path: str) -> None:
        mode = self.options.mode  # type: ignore[attr-defined]
        if mode:

            async def chmod() -> None:
                async with self.fs._pool.get() as channel:
                    await channel.chmod(path, int(mode, 8))

            sync(self.fs.loop, chmod)

    def explain(self, exc: BaseException) -> tuple[str, bool] | None:
        cause = exc if isinstance(exc, OSError) and exc.errno else exc.__cause__ or exc
        if isinstance(cause, asyncssh.SFTPError):
            return f"SFTP error: {cause.reason or type(cause).__name__}", True
        if isinstance(cause, asyncssh.ConnectionLost):
            return f"connection lost ({cause.reason})", True
        return None

    def alive(self) -> bool:
        return self.fs is not None and not self.fs.client.is_closed()

    def close(self) -> None:
        fs, self.fs = self.fs, None  # type: ignore[assignment]
        if fs is None:
            return
        with contextlib.suppress(Exception):
            sync(fs.loop, fs._pool.close, timeout=10)
        with contextlib.suppress(Exception):
            sync(fs.loop, fs._stack.aclose, timeout=10)


def connect(host_name: str, url: HostUrl, options: Options, credentials: dict[str, str]) -> Remote:
    from ecpds.core.protocols import openssh

    if options.engine == "openssh" or (options.engine == "auto" and openssh.client()):
        return openssh.connect(host_name, url, options, credentials)
    return connect_asyncssh(host_name, url, options, credentials)


def connect_asyncssh(
    host_name: str, url: HostUrl, options: Options, credentials: dict[str, str]
) -> SftpRemote:
    kwargs: dict[str, Any] = {
        "port": url.port or 22,
        "username": url.user,
        "connect_timeout": options.timeout,
        "login_timeout": options.timeout,
        "keepalive_interval": 30,
        "encryption_algs": list(options.ciphers),
        "skip_instance_cache": True,
    }
    if credentials.get("password"):
        kwargs["password"] = credentials["password"]
    if credentials.get("private_key"):
        try:
            key = asyncssh.import_private_key(
                credentials["private_key"], credentials.get("passphrase") or None
            )
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise ProtocolError(
                f"sftp host {host_name}: the private_key credential is unusable ({exc})",
                retryable=False,
            ) from None
        kwargs["client_keys"] = [key]
    else:
        kwargs["client_keys"] = None
    pinned = _PinnedHostKey(options.host_key) if options.host_key else None
    if pinned:
        kwargs["known_hosts"] = b""
        kwargs["client_factory"] = lambda: pinned
    else:
        kwargs["known_hosts"] = None
    remote = SftpRemote(host_name, url, options, None)
    try:
        remote.fs = SSHFileSystem(url.host, **kwargs)
    except Exception as exc:
        cause = exc.__cause__ or exc
        if isinstance(cause, asyncssh.PermissionDenied):
            raise ProtocolError(
                remote.message(
                    f"authentication failed for user {url.user!r} (check the password or key)"
                )
            ) from None
        if isinstance(cause, asyncssh.HostKeyNotVerifiable) and pinned:
            raise ProtocolError(
                remote.message(
                    f"host key {pinned.seen} does not match the configured {pinned.fingerprint}"
                )
            ) from None
        raise remote.to_protocol_error(exc, "connecting") from None
    return remote
