"""The object store: each DataFile's bytes, written once under its id, in one or more locations.

A location is an fsspec URL (a local folder by default; S3, Azure or GCS as replicas).
Writes go to a temporary name and are renamed into place only when complete, so a write
that breaks off leaves nothing behind; MD5 and ADLER32 are computed on the way in.
Reads fall back to the next location when one fails or its ADLER32 does not match.
Names under a location's root that start with a dot (e.g. `.multipart/`) are reserved
for other shared state kept beside the objects, never objects themselves.
"""

from __future__ import annotations

import contextlib
import posixpath
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import fsspec
from fsspec.core import url_to_fs

from ecpds.core.checksums import Adler32, Digest
from ecpds.core.secrets import CredentialBox, CredentialError, StoreCredentials, load_or_create_key
from ecpds.core.settings import Settings

CHUNK = 1 << 20
# Objects up to this size are checked before their first byte is handed out, so a
# corrupted copy is skipped unnoticed by the reader; larger ones are checked as they
# stream, and a mismatch marks the copy so that the next read (the retry) skips it.
VERIFY_FIRST_MAX = 16 << 20
_SUSPECTS_MAX = 10_000
# A copy found corrupted is tried last for this long only: another process (a repair
# on another worker) may have replaced it meanwhile, and each read checks it again anyway.
SUSPECT_SECONDS = 60.0
# Object keys are `root/ab/abcdef...` (alphanumeric); a first component with this
# prefix is reserved state, skipped by every walk over the objects.
RESERVED_PREFIX = "."


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
    sha512: str | None = None  # hex, when the writer was asked for it


@dataclass
class Repair:
    """The state of one object's copies after `Store.repair`: location URLs in each list."""

    good: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)  # no good copy left to repair them from

    @property
    def locations(self) -> list[str]:
        return self.good + self.repaired


def _check_id(object_id: str) -> None:
    if not object_id.isalnum():
        raise StoreError(f"invalid object id {object_id!r}")


class Location:
    """One place that holds objects: an fsspec filesystem and a root path on it."""

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        # No listings cache: other processes write and remove objects (and reserved
        # state) all the time, and a cached listing would hide them from this one.
        options.setdefault("use_listings_cache", False)
        try:
            fs, root = url_to_fs(url, **options)
        except (ImportError, ValueError, TypeError) as exc:  # TypeError: an unknown option
            raise StoreError(f"store location {url!r} is unusable: {exc}") from None
        self.fs: fsspec.AbstractFileSystem = fs
        self.root = root.rstrip("/")
        protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
        self.local = "file" in protocols
        if self.local:
            fs.makedirs(self.root, exist_ok=True)

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    def key(self, object_id: str) -> str:
        _check_id(object_id)
        return f"{self.root}/{object_id[:2]}/{object_id}"

    def open_new(self, object_id: str) -> tuple[IO[bytes], str, str]:
        final = self.key(object_id)
        if self.fs.exists(final):
            raise StoreError(f"object {object_id} already exists in {self.url}")
        partial = f"{final}.part-{secrets.token_hex(4)}"
        if self.local:
            self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
        return self.fs.open(partial, "wb"), partial, final

    def path(self, name: str) -> str:
        """The full path of a reserved `name` (like `.multipart/ID/upload.json`)."""
        parts = name.split("/")
        if not parts[0].startswith(RESERVED_PREFIX) or any(p in ("", ".", "..") for p in parts):
            raise StoreError(f"invalid reserved name {name!r}")
        return f"{self.root}/{name}"

    def put(self, folder: str, name: str | Callable[[Digest], str], chunks: Iterable[bytes]) -> str:
        """Write a reserved `folder/name` atomically, as objects are written, and return its
        full name; `name` may be chosen from the digest of what was written (its MD5)."""
        base = self.path(folder)
        partial = f"{base}/{name if isinstance(name, str) else 'new'}.part-{secrets.token_hex(4)}"
        if self.local:
            self.fs.makedirs(base, exist_ok=True)

        def final(digest: Digest) -> str:
            return self.path(f"{folder}/{name if isinstance(name, str) else name(digest)}")

        out = self.fs.open(partial, "wb")
        return _write_file(self, out, partial, final, chunks, 0)[1]

    def get(self, name: str) -> Iterator[bytes]:
        """The bytes of a reserved `name`, in chunks; FileNotFoundError if it is not there."""
        with self.fs.open(self.path(name), "rb") as src:
            while chunk := src.read(CHUNK):
                yield chunk

    def names(self, folder: str) -> list[str]:
        """The names directly in a reserved `folder` (empty if there is none)."""
        path = self.path(folder)
        try:
            found = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in found if p.rstrip("/") != path)

    def modified(self, name: str) -> float:
        """When a reserved `name` was last written (epoch seconds)."""
        return float(self.fs.modified(self.path(name)).timestamp())

    def remove(self, folder: str) -> None:
        """Remove a reserved `folder` and all in it; nothing happens if it is gone."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.path(folder), recursive=True)

    def discard(self, partial: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(partial)

    def exists(self, object_id: str) -> bool:
        return bool(self.fs.exists(self.key(object_id)))

    def delete(self, object_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.key(object_id))

    def adler32(self, object_id: str) -> str | None:
        """The ADLER32 of the copy here, read in full; None when there is no copy."""
        running = Adler32()
        try:
            with self.fs.open(self.key(object_id), "rb") as src:
                while chunk := src.read(CHUNK):
                    running.update(chunk)
        except FileNotFoundError:
            return None
        return running.adler32


def _write(
    location: Location,
    object_id: str,
    chunks: Iterable[bytes],
    max_size: int,
    extra: tuple[str, ...] = (),
) -> Digest:
    out, partial, final = location.open_new(object_id)
    return _write_file(location, out, partial, lambda _: final, chunks, max_size, extra)[0]


def _write_file(
    location: Location,
    out: IO[bytes],
    partial: str,
    final: Callable[[Digest], str],
    chunks: Iterable[bytes],
    max_size: int,
    extra: tuple[str, ...] = (),
) -> tuple[Digest, str]:
    """Stream `chunks` into `partial`, then rename it to `final(digest)`; see the module."""
    digest = Digest(extra=extra)
    try:
        with out:
            for chunk in chunks:
                digest.update(chunk)
                if max_size and digest.size > max_size:
                    raise ObjectTooLarge(f"file is larger than the limit of {max_size} bytes")
                out.write(chunk)
        path = final(digest)
        location.fs.mv(partial, path)
    except BaseException:
        location.discard(partial)
        raise
    return digest, path


class Store:
    """All store locations; the first is where new objects are written, the others replicas."""

    def __init__(self, locations: Sequence[str | Location]) -> None:
        if not locations:
            raise StoreError("the store needs at least one location")
        self.locations = [loc if isinstance(loc, Location) else Location(loc) for loc in locations]
        # Copies found corrupted, tried last until repaired or SUSPECT_SECONDS have passed:
        # (location url, object id) -> when (time.monotonic()).
        self._suspects: OrderedDict[tuple[str, str], float] = OrderedDict()

    @property
    def primary(self) -> Location:
        return self.locations[0]

    @property
    def urls(self) -> list[str]:
        return [loc.url for loc in self.locations]

    def location(self, url: str) -> Location | None:
        return next((loc for loc in self.locations if loc.url == url), None)

    # --- writing ----------------------------------------------------------------------------

    def write(
        self, object_id: str, chunks: Iterable[bytes], *, max_size: int = 0, sha512: bool = False
    ) -> StoredObject:
        """Stream `chunks` into a new object; nothing is left if the stream breaks off.

        `sha512`: compute it too (only for WIS2 announcements, as it costs a pass).
        """
        digest = _write(self.primary, object_id, chunks, max_size, ("sha512",) if sha512 else ())
        return StoredObject(
            digest.size,
            digest.md5,
            digest.adler32,
            [self.primary.url],
            digest.hexdigest("sha512") if sha512 else None,
        )

    # --- reading ----------------------------------------------------------------------------

    def _read_order(self, object_id: str, urls: Sequence[str] | None) -> list[Location]:
        chosen = self.locations
        if urls:
            known = [loc for loc in self.locations if loc.url in urls]
            chosen = known + [loc for loc in self.locations if loc not in known]
        fine = [loc for loc in chosen if not self._is_suspect(loc, object_id)]
        return fine + [loc for loc in chosen if loc not in fine]

    def _is_suspect(self, location: Location, object_id: str) -> bool:
        since = self._suspects.get((location.url, object_id))
        return since is not None and time.monotonic() - since < SUSPECT_SECONDS

    def _suspect(self, location: Location, object_id: str) -> None:
        self._suspects.pop((location.url, object_id), None)
        self._suspects[(location.url, object_id)] = time.monotonic()
        while len(self._suspects) > _SUSPECTS_MAX:
            self._suspects.popitem(last=False)

    def _cleared(self, location: Location, object_id: str) -> None:
        self._suspects.pop((location.url, object_id), None)

    def open(self, object_id: str, location: Location | None = None) -> IO[bytes]:
        """A binary file object on the object, from the first location that has it."""
        errors = []
        for loc in [location] if location else self._read_order(object_id, None):
            try:
                return loc.fs.open(loc.key(object_id), "rb")
            except (FileNotFoundError, OSError) as exc:
                errors.append(f"{loc.url}: {exc}")
        raise StoreError(f"object {object_id} is in no store location ({'; '.join(errors)})")

    def _read_whole(self, location: Location, object_id: str, adler32: str) -> list[bytes]:
        digest = Digest()
        chunks = []
        with location.fs.open(location.key(object_id), "rb") as src:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                chunks.append(chunk)
        if digest.adler32 != adler32:
            raise IntegrityError(
                f"object {object_id} in {location.url}: ADLER32 {digest.adler32} "
                f"does not match {adler32}"
            )
        return chunks

    def iter_bytes(
        self,
        object_id: str,
        *,
        start: int = 0,
        end: int | None = None,
        chunk_size: int = CHUNK,
        adler32: str | None = None,
        locations: Sequence[str] | None = None,
    ) -> Iterator[bytes]:
        """The object's bytes [start, end), from the first location that can give them.

        A location that fails part-way is left for the next one at the same offset. With
        `adler32`, a whole read is checked: see VERIFY_FIRST_MAX for what a mismatch does.
        `locations` (the catalog's list) are tried before the others.
        """
        _check_id(object_id)
        whole = bool(adler32) and start == 0 and end is None
        order = self._read_order(object_id, locations)
        errors: list[str] = []
        if whole and adler32:
            for loc in order:
                try:
                    if loc.fs.size(loc.key(object_id)) > VERIFY_FIRST_MAX:
                        break
                    chunks = self._read_whole(loc, object_id, adler32)
                except IntegrityError as exc:
                    self._suspect(loc, object_id)
                    errors.append(str(exc))
                    continue
                except OSError as exc:
                    errors.append(f"{loc.url}: {exc}")
                    continue
                self._cleared(loc, object_id)
                yield from chunks
                return
            else:
                raise _no_good_copy(object_id, errors)
        yield from self._stream(
            object_id, order, start, end, chunk_size, adler32 if whole else None
        )

    def _stream(
        self,
        object_id: str,
        order: list[Location],
        start: int,
        end: int | None,
        chunk_size: int,
        adler32: str | None,
    ) -> Iterator[bytes]:
        digest = Adler32() if adler32 else None
        offset = start
        errors: list[str] = []
        for loc in order:
            try:
                with loc.fs.open(loc.key(object_id), "rb") as src:
                    if offset:
                        src.seek(offset)
                    while end is None or offset < end:
                        want = chunk_size if end is None else min(chunk_size, end - offset)
                        chunk = src.read(want)
                        if not chunk:
                            break
                        if digest:
                            digest.update(chunk)
                        offset += len(chunk)
                        yield chunk
            except OSError as exc:
                errors.append(f"{loc.url}: {exc}")
                continue
            if digest and digest.adler32 != adler32:
                self._suspect(loc, object_id)
                raise IntegrityError(
                    f"object {object_id} in {loc.url}: ADLER32 {digest.adler32} "
                    f"does not match {adler32}"
                )
            return
        raise _no_good_copy(object_id, errors)

    def verify(self, object_id: str, adler32: str, location: Location | None = None) -> bool:
        """Whether the copy in `location` (every location if None) has this ADLER32."""
        return all(
            loc.adler32(object_id) == adler32
            for loc in ([location] if location else self.locations)
        )

    def exists(self, object_id: str) -> bool:
        return any(loc.exists(object_id) for loc in self.locations)

    def size(self, object_id: str) -> int:
        for loc in self.locations:
            with contextlib.suppress(FileNotFoundError):
                return int(loc.fs.size(loc.key(object_id)))
        raise StoreError(f"object {object_id} is in no store location")

    # --- copies -----------------------------------------------------------------------------

    def copy(self, object_id: str, source: Location, dest: Location, adler32: str) -> None:
        """Copy the object from `source` to `dest`, checked on the way; replaces a bad copy."""
        dest.delete(object_id)
        with source.fs.open(source.key(object_id), "rb") as src:
            digest = _write(dest, object_id, iter(lambda: src.read(CHUNK), b""), 0)
        if digest.adler32 != adler32:
            dest.delete(object_id)
            self._suspect(source, object_id)
            raise IntegrityError(
                f"object {object_id} in {source.url}: ADLER32 {digest.adler32} "
                f"does not match {adler32}"
            )
        self._cleared(dest, object_id)

    def repair(self, object_id: str, adler32: str, *, check: bool = True) -> Repair:
        """Give every location a good copy, copied from one that has it.

        With `check`, every copy is read and its ADLER32 compared; without, a copy that
        exists is taken as good (the quick pass for new objects).
        """
        good: list[Location] = []
        bad: list[Location] = []
        for loc in self.locations:
            if check:
                ok = loc.adler32(object_id) == adler32
            else:
                ok = loc.exists(object_id) and not self._is_suspect(loc, object_id)
            (good if ok else bad).append(loc)
        report = Repair(good=[loc.url for loc in good])
        for loc in bad:
            for source in good:
                try:
                    self.copy(object_id, source, loc, adler32)
                except (IntegrityError, OSError):
                    continue
                report.repaired.append(loc.url)
                break
            else:
                report.lost.append(loc.url)
        for loc in good:
            self._cleared(loc, object_id)
        return report

    def archive(self, object_id: str, url: str, name: str, adler32: str) -> bool:
        """Write the object once to `url/name` (a backup); False if it is already there."""
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if not parts or ".." in parts:
            raise StoreError(f"invalid archive name {name!r}")
        archive = Location(url)
        path = posixpath.join(archive.root, *parts)
        if archive.fs.exists(path):
            return False
        partial = f"{path}.part-{secrets.token_hex(4)}"
        if archive.local:
            archive.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        digest = Digest()
        try:
            with archive.fs.open(partial, "wb") as out:
                for chunk in self.iter_bytes(object_id, adler32=adler32):
                    digest.update(chunk)
                    out.write(chunk)
            archive.fs.mv(partial, path)
        except BaseException:
            archive.discard(partial)
            raise
        return True

    # --- removal ----------------------------------------------------------------------------

    def delete(self, object_id: str) -> None:
        for loc in self.locations:
            loc.delete(object_id)

    def partials(self, location: Location | None = None) -> list[str]:
        """Temporary object files left in a location (the primary by default); none at rest.

        Reserved names (RESERVED_PREFIX) are not objects: their own owners clean them up.
        """
        loc = location or self.primary
        if not loc.fs.exists(loc.root):
            return []
        reserved = f"{loc.root}/{RESERVED_PREFIX}"
        return [
            p
            for p in loc.fs.find(loc.root)
            if ".part-" in p.rsplit("/", 1)[-1] and not p.startswith(reserved)
        ]


def open_store(settings: Settings) -> Store:
    """The store every process opens: each location with its options from settings
    (`store_options`) and its sealed credentials (`store_credentials_file`)."""
    box = CredentialBox(load_or_create_key(settings.key_file))
    credentials = StoreCredentials(settings.store_secrets_file, box)
    urls = settings.store_urls
    unknown = sorted(set(settings.store_options) - set(urls))
    if unknown:
        raise StoreError(f"store_options names {unknown[0]!r}, which is not a store location")
    locations = []
    for url in urls:
        try:
            secret = credentials.of(url)
        except CredentialError as exc:
            raise StoreError(str(exc)) from None
        try:
            locations.append(Location(url, **(settings.store_options.get(url, {}) | secret)))
        except StoreError as exc:
            message = str(exc)
            for value in secret.values():
                message = message.replace(value, "***")
            raise StoreError(message) from None
    return Store(locations)


def _no_good_copy(object_id: str, errors: list[str]) -> StoreError:
    if errors and all("ADLER32" in e for e in errors):
        return IntegrityError(f"object {object_id} has no good copy ({'; '.join(errors)})")
    detail = "; ".join(errors) or "not found"
    return StoreError(f"object {object_id} is in no store location ({detail})")
