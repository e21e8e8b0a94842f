"""Block uploads for object stores: exact-size parts out of a chunk stream, several in flight.

S3 multipart uploads and Azure staged blocks both go this way.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any


class PartReader:
    """Reads exact-size pieces out of an iterable of chunks of any size."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._buffer = bytearray()

    def read(self, size: int) -> bytes:
        """`size` bytes, fewer only at the end of the data."""
        while len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        with memoryview(self._buffer) as view:
            piece = bytes(view[:size])
        del self._buffer[:size]
        return piece

    def unread(self, piece: bytes) -> None:
        self._buffer[:0] = piece


def send_parts(
    reader: PartReader,
    *,
    part_size: int,
    concurrency: int,
    first_number: int,
    submit: Callable[[int, bytes], concurrent.futures.Future],
    settled: Callable[[int, Any], None],
) -> int:
    """Upload the rest of `reader` as parts numbered from `first_number`; bytes sent.

    `submit(number, data)` starts one part's upload; `settled(number, result)` records it
    once done. At most `concurrency` parts are held in memory at once.
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
        while data := reader.read(part_size):
            number += 1
            in_flight.append((number, len(data), submit(number, data)))
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
