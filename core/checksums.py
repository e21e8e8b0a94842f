"""Checksums computed in one pass over a stream: MD5 for remote sites, ADLER32 for the store."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

# zlib-ng's ADLER32 is several times quicker than the standard library's, same values.
from zlib_ng import zlib_ng


@dataclass
class Adler32:
    """Running ADLER32 alone: the store's integrity check on reads, where MD5 is not wanted."""

    value: int = 1

    def update(self, chunk: bytes | memoryview) -> None:
        self.value = zlib_ng.adler32(chunk, self.value)

    @property
    def adler32(self) -> str:
        return f"{self.value & 0xFFFFFFFF:08x}"


@dataclass
class Digest:
    """Running MD5 + ADLER32 (+ optional sha256/sha512) over the bytes fed to it.

    `known_md5` is the MD5 of the bytes to come when the caller already has it (a store
    object read back unchanged, its ADLER32 checked): MD5 is then not computed again, and
    `adler=False` skips ADLER32 where the reader checks it already.
    """

    extra: tuple[str, ...] = ()
    known_md5: str | None = None
    adler: bool = True
    size: int = 0
    _md5: Any = None
    _adler: int = 1
    _extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.extra:
            if name not in ("sha256", "sha512"):
                raise ValueError(f"unknown checksum {name!r}: use sha256 or sha512")
            self._extra[name] = hashlib.new(name)
        if self.known_md5 is None:
            self._md5 = hashlib.md5()

    def update(self, chunk: bytes | memoryview) -> None:
        self.size += len(chunk)
        if self._md5 is not None:
            self._md5.update(chunk)
        if self.adler:
            self._adler = zlib_ng.adler32(chunk, self._adler)
        for h in self._extra.values():
            h.update(chunk)

    @property
    def md5(self) -> str:
        if self._md5 is None:
            assert self.known_md5 is not None
            return self.known_md5
        return str(self._md5.hexdigest())

    @property
    def adler32(self) -> str:
        return f"{self._adler & 0xFFFFFFFF:08x}"

    def hexdigest(self, name: str) -> str:
        return self._extra[name].hexdigest()
