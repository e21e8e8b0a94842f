"""Glue shared by the object-store protocols (S3, Azure Blob, GCS).

Block uploads (S3 multipart parts, Azure staged blocks) as exact-size parts, several in
flight, and one-line reasons for a store endpoint that cannot be reached.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import socket
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit


class PartReader:
    """Reads exact-size pieces out of an iterable of chunks of any size.

    Chunks are kept as they come and joined once per piece, so a piece costs one copy
    and nothing stays allocated between pieces.
    """

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._pending: list[bytes] = []
        self._held = 0

    def read(self, size: int) -> bytes:
        """`size` bytes, fewer only at the end of the data."""
        return b"".join(self._take(size))

    def read_file(self, size: int) -> io.BytesIO:
        """`size` bytes (fewer only at the end) as a file that owns its buffer.

        aiohttp sizes an upload body held in a BytesIO with `getbuffer()`, which copies
        a buffer the BytesIO shares with the bytes it was made from, as botocore's are:
        a bytes part would exist twice while it is sent (32 MiB more with S3's defaults).
        """
        out = io.BytesIO()
        for piece in self._take(size):
            out.write(piece)
        out.seek(0)
        return out

    def _take(self, size: int) -> list[bytes]:
        while self._held < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            if chunk:
                self._pending.append(chunk)
                self._held += len(chunk)
        taken: list[bytes] = []
        need = min(size, self._held)
        self._held -= need
        while need:
            first = self._pending[0]
            if len(first) <= need:
                taken.append(self._pending.pop(0))
                need -= len(first)
            else:
                taken.append(first[:need])
                self._pending[0] = first[need:]
                need = 0
        return taken

    def unread(self, piece: bytes) -> None:
        self._pending.insert(0, piece)
        self._held += len(piece)


def send_parts(
    read: Callable[[int], Any],
    *,
    part_size: Callable[[int], int],
    concurrency: int,
    first_number: int,
    submit: Callable[[int, Any], concurrent.futures.Future],
    settled: Callable[[int, Any], None],
) -> int:
    """Upload the rest of the data as parts numbered from `first_number`; bytes sent.

    `read(size)` is a PartReader's `read` or `read_file` (empty at the end);
    `part_size(number)` is the size of part `number`; `submit(number, data)` starts its
    upload and `settled(number, result)` records it once done. At most `concurrency` parts
    are held in memory at once.
    """
    number = first_number - 1
    written = 0
    in_flight: list[tuple[int, int, concurrent.futures.Future]] = []

    def settle() -> None:
        nonlocal written
        part_number, size, future = in_flight.pop(0)
        settled(part_number, future.result())
        written += size

    try:
        while size := _size(data := read(part_size(number + 1))):
            number += 1
            in_flight.append((number, size, submit(number, data)))
            del data
            if len(in_flight) >= concurrency:
                settle()
        while in_flight:
            settle()
    except BaseException:
        # Parts already on their way still count for a resume: let them land.
        for _, _, future in in_flight:
            with contextlib.suppress(Exception):
                future.result()
        raise
    return written


def _size(data: bytes | io.BytesIO) -> int:
    return data.getbuffer().nbytes if isinstance(data, io.BytesIO) else len(data)


def connection_problem(exc: BaseException, endpoint: str) -> str | None:
    """Why `endpoint` could not be reached, found down the exception chain; None if unknown."""
    host = urlsplit(endpoint).hostname or endpoint
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            break
        if isinstance(seen, socket.gaierror) or "DNS" in type(seen).__name__:
            return f"unknown host {host!r} (endpoint {endpoint})"
        if isinstance(seen, ConnectionRefusedError):
            return f"connection refused by {endpoint} (is the server running on that port?)"
        nested = getattr(seen, "kwargs", None)
        seen = (
            (nested.get("error") if isinstance(nested, dict) else None)
            or getattr(seen, "inner_exception", None)
            or getattr(seen, "os_error", None)
            or seen.__cause__
            or seen.__context__
        )
    return None


Entry = tuple[str, int, datetime | None, bool]


def with_folders(
    objects: Iterable[tuple[str, int, datetime | None]], prefix: str
) -> Iterator[Entry]:
    """A flat listing of object keys under `prefix` as files and the folders between:
    each folder once, before its first file; a key ending in "/" (a folder marker) is a
    folder; paths come back with the leading "/" the URL's path has."""
    seen: set[str] = set()
    for key, size, when in objects:
        rest = key[len(prefix) :]
        parts = rest.split("/")
        for depth in range(1, len(parts)):
            folder = prefix + "/".join(parts[:depth])
            if folder not in seen:
                seen.add(folder)
                yield "/" + folder, 0, None, True
        if parts[-1]:
            yield "/" + key, size, when, False
