"""S3 multipart uploads in progress, kept in the store so that any portal replica serves them.

An upload is a reserved folder `.multipart/ID/` of the store's primary location: its
manifest (`upload.json`: who, which key, when) and its parts, each named with its
number and MD5 (`part-00001-MD5`), so a part sent twice, to two replicas at once,
leaves two whole files and never one torn one. Every file is written atomically.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ecpds.core.store import Location

FOLDER = ".multipart"
_PART = re.compile(r"part-(\d{5})-([0-9a-f]{32})")


@dataclass(frozen=True)
class Manifest:
    user: str
    parts: tuple[str, ...]  # the object's path: bucket, then the key's parts
    created: float  # epoch seconds, for the stale purge


@dataclass(frozen=True)
class Part:
    number: int
    md5: str
    name: str


class MultipartUploads:
    """The uploads in progress under `location` (the store's primary)."""

    def __init__(self, location: Location) -> None:
        self.location = location

    def _folder(self, upload_id: str) -> str:
        return f"{FOLDER}/{upload_id}"

    def create(self, user: str, parts: tuple[str, ...]) -> str:
        upload_id = secrets.token_hex(16)
        manifest = {"user": user, "parts": list(parts), "created": time.time()}
        self.location.put(self._folder(upload_id), "upload.json", [json.dumps(manifest).encode()])
        return upload_id

    def manifest(self, upload_id: str) -> Manifest | None:
        """The upload's manifest; None when there is no such upload (or it was ended)."""
        if not upload_id.isalnum():
            return None
        try:
            raw = b"".join(self.location.get(f"{self._folder(upload_id)}/upload.json"))
        except FileNotFoundError:
            return None
        data = json.loads(raw)
        return Manifest(data["user"], tuple(data["parts"]), float(data["created"]))

    def put_part(self, upload_id: str, number: int, chunks: Iterable[bytes]) -> str:
        """Write part `number` and return its MD5 (hex), which names it."""
        name = self.location.put(
            self._folder(upload_id), lambda digest: f"part-{number:05d}-{digest.md5}", chunks
        )
        return name.rsplit("-", 1)[-1]

    def parts(self, upload_id: str) -> list[Part]:
        """The whole parts received, by number (a part sent twice appears twice)."""
        found = []
        for name in self.location.names(self._folder(upload_id)):
            if match := _PART.fullmatch(name):
                found.append(Part(int(match[1]), match[2], name))
        return sorted(found, key=lambda p: (p.number, p.md5))

    def read(self, upload_id: str, chosen: list[Part]) -> Iterator[bytes]:
        """The bytes of `chosen` parts in order, streamed from the store."""
        for part in chosen:
            yield from self.location.get(f"{self._folder(upload_id)}/{part.name}")

    def remove(self, upload_id: str) -> None:
        """End an upload: the manifest first, so that no replica takes a new part for it."""
        folder = self._folder(upload_id)
        self.location.remove(f"{folder}/upload.json")
        self.location.remove(folder)

    def purge_stale(self, max_age: float) -> list[str]:
        """Remove uploads older than `max_age` seconds; safe to run on many replicas at once.

        An upload's age is its manifest's; a folder left without one (a part that
        arrived as the upload ended) ages by its newest file.
        """
        cutoff = time.time() - max_age
        stale = []
        for upload_id in self.location.names(FOLDER):
            if not upload_id.isalnum():
                continue
            try:
                born = self._born(upload_id)
            except FileNotFoundError:
                continue  # another replica is removing it
            if born < cutoff:
                self.remove(upload_id)
                stale.append(upload_id)
        return stale

    def _born(self, upload_id: str) -> float:
        manifest = self.manifest(upload_id)
        if manifest is not None:
            return manifest.created
        folder = self._folder(upload_id)
        names = self.location.names(folder)
        return max((self.location.modified(f"{folder}/{n}") for n in names), default=0)
