"""The object store: each DataFile's bytes, written once under its id, streamed both ways.

A location is an fsspec URL (a local folder by default). Writes go to a temporary
name and are renamed into place only when complete, so a write that breaks off
leaves nothing behind; MD5 and ADLER32 are computed on the way in.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import fsspec
from fsspec.core import url_to_fs

from ecpds.core.checksums import Digest

CHUNK = 1 << 20


class StoreError(Exception):
    """A store operation failed; the message says which object and why."""


class ObjectTooLarge(StoreError):
    pass


class IntegrityError(StoreError):
    pass


@dataclass(frozen=True)
class StoredObject:
    size: int
    md5: str
    adler32: str
    locations: list[str]


class Location:
    """One place that holds objects: an fsspec filesystem and a root path on it."""

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        fs, root = url_to_fs(url, **options)
        self.fs: fsspec.AbstractFileSystem = fs
        self.root = root.rstrip("/")
        self.local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
        if self.local:
            fs.makedirs(self.root, exist_ok=True)

    def key(self, object_id: str) -> str:
        if not object_id.isalnum():
            raise StoreError(f"invalid object id {object_id!r}")
        return f"{self.root}/{object_id[:2]}/{object_id}"

    def open_new(self, object_id: str) -> tuple[IO[bytes], str, str]:
        final = self.key(object_id)
        if self.fs.exists(final):
            raise StoreError(f"object {object_id} already exists in {self.url}")
        partial = f"{final}.part-{secrets.token_hex(4)}"
        if self.local:
            self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
        return self.fs.open(partial, "wb"), partial, final

    def discard(self, partial: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(partial)


class Store:
    """All store locations; the first is where new objects are written."""

    def __init__(self, locations: list[str]) -> None:
        if not locations:
            raise StoreError("the store needs at least one location")
        self.locations = [Location(url) for url in locations]

    @property
    def primary(self) -> Location:
        return self.locations[0]

    def write(self, object_id: str, chunks: Iterable[bytes], *, max_size: int = 0) -> StoredObject:
        """Stream `chunks` into a new object; nothing is left if the stream breaks off."""
        location = self.primary
        out, partial, final = location.open_new(object_id)
        digest = Digest()
        try:
            with out:
                for chunk in chunks:
                    digest.update(chunk)
                    if max_size and digest.size > max_size:
                        raise ObjectTooLarge(f"file is larger than the limit of {max_size} bytes")
                    out.write(chunk)
            location.fs.mv(partial, final)
        except BaseException:
            location.discard(partial)
            raise
        return StoredObject(digest.size, digest.md5, digest.adler32, [location.url])

    async def write_async(
        self, object_id: str, chunks: AsyncIterable[bytes], *, max_size: int = 0
    ) -> StoredObject:
        """As `write`, from an async stream (an HTTP request body)."""
        location = self.primary
        out, partial, final = location.open_new(object_id)
        digest = Digest()
        try:
            with out:
                async for chunk in chunks:
                    digest.update(chunk)
                    if max_size and digest.size > max_size:
                        raise ObjectTooLarge(f"file is larger than the limit of {max_size} bytes")
                    out.write(chunk)
            location.fs.mv(partial, final)
        except BaseException:
            location.discard(partial)
            raise
        return StoredObject(digest.size, digest.md5, digest.adler32, [location.url])

    def open(self, object_id: str, location: Location | None = None) -> IO[bytes]:
        """A binary file object on the object, from the first location that has it."""
        errors = []
        for loc in [location] if location else self.locations:
            try:
                return loc.fs.open(loc.key(object_id), "rb")
            except (FileNotFoundError, OSError) as exc:
                errors.append(f"{loc.url}: {exc}")
        raise StoreError(f"object {object_id} is in no store location ({'; '.join(errors)})")

    def iter_bytes(
        self,
        object_id: str,
        *,
        start: int = 0,
        end: int | None = None,
        chunk_size: int = CHUNK,
        adler32: str | None = None,
    ) -> Iterator[bytes]:
        """The object's bytes [start, end); with `adler32`, raise at the end on mismatch."""
        digest = Digest() if adler32 and start == 0 and end is None else None
        with self.open(object_id) as src:
            if start:
                src.seek(start)
            remaining = None if end is None else end - start
            while remaining is None or remaining > 0:
                chunk = src.read(chunk_size if remaining is None else min(chunk_size, remaining))
                if not chunk:
                    break
                if digest:
                    digest.update(chunk)
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
        if digest and digest.adler32 != adler32:
            raise IntegrityError(
                f"object {object_id}: ADLER32 {digest.adler32} does not match {adler32}"
            )

    async def aiter_bytes(self, object_id: str, **kwargs: Any) -> AsyncIterator[bytes]:
        for chunk in self.iter_bytes(object_id, **kwargs):
            yield chunk

    def verify(self, object_id: str, adler32: str) -> bool:
        try:
            for _ in self.iter_bytes(object_id, adler32=adler32):
                pass
        except IntegrityError:
            return False
        return True

    def exists(self, object_id: str) -> bool:
        return any(loc.fs.exists(loc.key(object_id)) for loc in self.locations)

    def size(self, object_id: str) -> int:
        loc = self.primary
        return int(loc.fs.size(loc.key(object_id)))

    def delete(self, object_id: str) -> None:
        for loc in self.locations:
            with contextlib.suppress(FileNotFoundError):
                loc.fs.rm_file(loc.key(object_id))

    def partials(self) -> list[str]:
        """Temporary files left in the primary location (there should be none at rest)."""
        loc = self.primary
        return [p for p in loc.fs.find(loc.root) if ".part-" in p.rsplit("/", 1)[-1]]
