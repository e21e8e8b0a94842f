"""Streaming compression for dissemination: each codec turns chunks into chunks.

Nothing is buffered beyond what the algorithm itself holds; lbzip2 runs as an
external process fed through pipes.
"""

from __future__ import annotations

import bz2
import contextlib
import lzma
import re
import shutil
import subprocess
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

LEVELS = {"gzip": 6, "zstd": 3}


class CompressionError(ValueError):
    """An unknown or unavailable algorithm, or a broken compressed stream."""


@dataclass(frozen=True)
class Codec:
    name: str
    extension: str
    compress_stream: Callable[[Iterable[bytes], str], Iterator[bytes]]
    decompress: Callable[[Iterable[bytes]], Iterator[bytes]]

    def compress(self, chunks: Iterable[bytes], name: str = "data") -> Iterator[bytes]:
        """Compressed chunks; `name` is the member name inside formats that keep one (zip)."""
        return self.compress_stream(chunks, name)


def _through(make: Callable[[], Any], chunks: Iterable[bytes], method: str) -> Iterator[bytes]:
    """Feed chunks to a zlib-style object (`compress`/`decompress` + `flush`)."""
    obj = make()
    feed = getattr(obj, method)
    for chunk in chunks:
        out = feed(chunk)
        if out:
            yield out
    tail = obj.flush() if hasattr(obj, "flush") else b""
    if tail:
        yield tail


def _gzip_compress(chunks: Iterable[bytes], name: str) -> Iterator[bytes]:
    return _through(lambda: zlib.compressobj(LEVELS["gzip"], zlib.DEFLATED, 31), chunks, "compress")


def _gzip_decompress(chunks: Iterable[bytes]) -> Iterator[bytes]:
    return _through(lambda: zlib.decompressobj(47), chunks, "decompress")


def _bz2_decompress(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """bzip2 streams may be concatenated (lbzip2 writes several): restart at each end."""
    dec = bz2.BZ2Decompressor()
    for chunk in chunks:
        while chunk:
            yield dec.decompress(chunk)
            if not dec.eof:
                break
            chunk, dec = dec.unused_data, bz2.BZ2Decompressor()


def _lbzip2(chunks: Iterable[bytes]) -> Iterator[bytes]:
    binary = shutil.which("lbzip2")
    if binary is None:
        raise CompressionError("lbzip2 is not installed on this worker: install it or use bzip2")
    proc = subprocess.Popen(
        [binary, "-c"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
    )
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout
    failure: list[BaseException] = []

    def feed() -> None:
        try:
            for chunk in chunks:
                stdin.write(chunk)
        except BaseException as exc:  # noqa: BLE001 - handed over to the reading thread
            failure.append(exc)
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    feeder = threading.Thread(target=feed, name="lbzip2-feed", daemon=True)
    feeder.start()
    try:
        while block := stdout.read(1 << 20):
            yield block
    finally:
        stdout.close()
        if proc.poll() is None and (failure or feeder.is_alive()):
            proc.kill()
        proc.wait()
        feeder.join()
    if failure:
        raise failure[0]
    if proc.returncode:
        raise CompressionError(f"lbzip2 exited with code {proc.returncode}")


class _Sink:
    """A write-only, non-seekable file that zipfile writes into; drained after each write."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.position = 0

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        return None

    def drain(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


def _zip_compress(chunks: Iterable[bytes], member: str) -> Iterator[bytes]:
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as archive:  # type: ignore[call-overload]
        # A fixed timestamp keeps the output a function of the input alone.
        info = zipfile.ZipInfo(member, date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w", force_zip64=True) as entry:
            for chunk in chunks:
                entry.write(chunk)
                if data := sink.drain():
                    yield data
        if data := sink.drain():
            yield data
    if data := sink.drain():
        yield data


def _zip_decompress(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The first member of a streamed zip (local header + deflate data)."""
    buffer = b""
    it = iter(chunks)
    for chunk in it:
        buffer += chunk
        if len(buffer) >= 30:
            break
    if buffer[:4] != b"PK\x03\x04":
        raise CompressionError("not a zip stream")
    name_len = int.from_bytes(buffer[26:28], "little")
    extra_len = int.from_bytes(buffer[28:30], "little")
    while len(buffer) < 30 + name_len + extra_len:
        buffer += next(it)
    dec = zlib.decompressobj(-15)
    yield dec.decompress(buffer[30 + name_len + extra_len :])
    for chunk in it:
        if dec.eof:
            break
        if out := dec.decompress(chunk):
            yield out


def _lz4_compress(chunks: Iterable[bytes], name: str) -> Iterator[bytes]:
    import lz4.frame

    comp = lz4.frame.LZ4FrameCompressor()
    yield comp.begin()
    for chunk in chunks:
        if out := comp.compress(chunk):
            yield out
    yield comp.flush()


def _lz4_decompress(chunks: Iterable[bytes]) -> Iterator[bytes]:
    import lz4.frame

    return _through(lz4.frame.LZ4FrameDecompressor, chunks, "decompress")


def _snappy_compress(chunks: Iterable[bytes], name: str) -> Iterator[bytes]:
    import snappy

    comp = snappy.StreamCompressor()
    for chunk in chunks:
        if out := comp.add_chunk(chunk):
            yield out


def _snappy_decompress(chunks: Iterable[bytes]) -> Iterator[bytes]:
    import snappy

    dec = snappy.StreamDecompressor()
    for chunk in chunks:
        if out := dec.decompress(chunk):
            yield out
    dec.flush()


def _zstd_compress(chunks: Iterable[bytes], name: str) -> Iterator[bytes]:
    import zstandard

    return _through(
        lambda: zstandard.ZstdCompressor(level=LEVELS["zstd"]).compressobj(), chunks, "compress"
    )


def _zstd_decompress(chunks: Iterable[bytes]) -> Iterator[bytes]:
    import zstandard

    dec = zstandard.ZstdDecompressor().decompressobj()
    for chunk in chunks:
        if out := dec.decompress(chunk):
            yield out


CODECS: dict[str, Codec] = {
    c.name: c
    for c in (
        Codec("gzip", ".gz", _gzip_compress, _gzip_decompress),
        Codec(
            "bzip2",
            ".bz2",
            lambda chunks, name: _through(lambda: bz2.BZ2Compressor(9), chunks, "compress"),
            _bz2_decompress,
        ),
        Codec("lbzip2", ".bz2", lambda chunks, name: _lbzip2(chunks), _bz2_decompress),
        Codec(
            "lzma",
            ".xz",
            lambda chunks, name: _through(lzma.LZMACompressor, chunks, "compress"),
            lambda chunks: _through(lzma.LZMADecompressor, chunks, "decompress"),
        ),
        Codec("zip", ".zip", _zip_compress, _zip_decompress),
        Codec("lz4", ".lz4", _lz4_compress, _lz4_decompress),
        Codec("snappy", ".sz", _snappy_compress, _snappy_decompress),
        Codec("zstd", ".zst", _zstd_compress, _zstd_decompress),
    )
}


def get_codec(name: str) -> Codec:
    codec = CODECS.get(name.lower())
    if codec is None:
        raise CompressionError(f"unknown compression {name!r}: use one of {', '.join(CODECS)}")
    if codec.name == "lbzip2" and shutil.which("lbzip2") is None:
        raise CompressionError("lbzip2 is not installed on this worker: install it or use bzip2")
    return codec


def choose(
    name: str | None, pattern: str | None, min_size: int, target: str, size: int
) -> Codec | None:
    """The codec for `target` of `size` bytes, or None when it is to be sent as is."""
    if not name or name.lower() == "none":
        return None
    if size < min_size:
        return None
    if pattern and not re.search(pattern, target):
        return None
    return get_codec(name)
