"""Local or mounted file systems: `file:///path/dir`."""

from __future__ import annotations

import os
from typing import Any

from fsspec.implementations.local import LocalFileSystem
from pydantic import Field

from ecpds.core.protocols import CommonOptions, HostUrl, ProtocolError, options_dataclass
from ecpds.core.protocols.base import FsspecRemote

CREDENTIALS: frozenset[str] = frozenset()


@options_dataclass(config={"extra": "forbid"})
class Options(CommonOptions):
    mode: str | None = Field(default=None, pattern=r"^[0-7]{3,4}$")  # chmod after upload


def check(url: HostUrl, options: Options, credentials: dict[str, str]) -> None:
    if url.host not in ("", "localhost"):
        raise ProtocolError(
            f"file URL {url.url!r} names host {url.host!r}: use file:///absolute/path",
            retryable=False,
        )
    if not url.path.startswith("/"):
        raise ProtocolError(f"file URL {url.url!r} needs an absolute path", retryable=False)


class FileRemote(FsspecRemote):
    def open_kwargs(self) -> dict[str, Any]:
        return {}

    def _finish(self, path: str) -> None:
        if self.options.mode:
            os.chmod(path, int(self.options.mode, 8))


def connect(
    host_name: str, url: HostUrl, options: Options, credentials: dict[str, str]
) -> FileRemote:
    return FileRemote(host_name, url, options, LocalFileSystem())
