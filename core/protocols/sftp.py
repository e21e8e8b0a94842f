"""SFTP through sshfs/asyncssh: `sftp://user@host[:port]/dir` (`/~/dir` is home-relative)."""

from __future__ import annotations

from pydantic import Field

from ecpds.core.protocols import CommonOptions, HostUrl, ProtocolError, options_dataclass

CREDENTIALS = frozenset({"password", "private_key", "passphrase"})


@options_dataclass(config={"extra": "forbid"})
class Options(CommonOptions):
    host_key: str | None = None  # expected fingerprint "SHA256:..." or "MD5:..."; None = any
    mode: str | None = Field(default=None, pattern=r"^[0-7]{3,4}$")  # chmod after upload
    requests: int = Field(default=64, ge=1, le=1024)  # pipelined SFTP requests in flight


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
