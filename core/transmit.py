"""Send one stored file to one host: compress, checksum and throttle in a single pass.

`send` is synchronous (the transmit activity runs it in a thread); it reads the
object once, verifying its ADLER32, and holds no more than a few chunks in memory.
The MD5 of what is delivered is the object's own when the bytes go out unchanged, and
is computed on the way when they are compressed (sha256/sha512 on request, same pass).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import posixpath
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ecpds.core import compression
from ecpds.core.checksums import Digest
from ecpds.core.protocols import ProtocolError
from ecpds.core.protocols.base import Remote
from ecpds.core.protocols.pool import REMOTES
from ecpds.core.store import Store
from ecpds.core.throttle import Throttle


@dataclass(frozen=True)
class SendRequest:
    data_file_id: str
    size: int
    adler32: str
    host_name: str
    host_url: str
    host_options: dict[str, Any]
    target: str
    md5: str | None = None  # of the stored object: what is delivered when nothing changes it
    compression: str | None = None  # the destination's choice; else the host's options
    compression_pattern: str | None = None  # with `compression`: only targets matching it
    compression_min_size: int = 0  # with `compression`: only files at least this big
    resume_offset: int = 0
    checksums: tuple[str, ...] = ()  # extra digests: "sha256", "sha512"


@dataclass(frozen=True)
class SendResult:
    bytes_sent: int  # bytes written in this attempt (after a resume: the rest only)
    remote_size: int  # size of the delivered file (compressed size when compressed)
    md5: str  # of the delivered bytes
    target: str  # the final name, with the compression extension if any
    seconds: float
    extra: dict[str, str] = field(default_factory=dict)  # compression, sha256, sha512


MMAP_THRESHOLD = 1 << 20  # malloc blocks this big or bigger: mapped, and unmapped when freed
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


@functools.cache
def keep_big_buffers_out_of_the_heap() -> None:
    """Have glibc map every block of 1 MiB or more on its own, once per process.

    By default glibc raises that threshold to the size of the biggest block freed (up to
    32 MiB), after which a send's chunks and parts (4 to 16 MiB) live in the heaps of the
    threads that made them (the reader, the event loops, the part uploads) and stay
    there when freed. A worker that has sent to S3, Azure and GCS in turn then held every
    protocol's buffers at once: 50 to 75 MiB more, measured by bench/protocols.py
    (`all_protocols_worker_rss_mib`). Mapped blocks go back to the system when freed.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return
    mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


class SizeMismatch(ProtocolError):
    pass


def _codec(request: SendRequest, remote: Remote) -> compression.Codec | None:
    """The destination's compression if it sets one, else the host's; None: send as is."""
    opts = remote.options
    if request.compression:
        rule = (request.compression, request.compression_pattern, request.compression_min_size)
    else:
        rule = (opts.compression, opts.compression_pattern, opts.compression_min_size)
    try:
        return compression.choose(*rule, request.target, request.size)
    except compression.CompressionError as exc:
        raise ProtocolError(remote.message(str(exc)), retryable=False) from None


def _skip(chunks: Iterable[bytes], offset: int) -> Iterator[bytes]:
    """The stream without its first `offset` bytes."""
    for chunk in chunks:
        if offset >= len(chunk):
            offset -= len(chunk)
            continue
        yield chunk[offset:] if offset else chunk
        offset = 0


def _digested(chunks: Iterable[bytes], digest: Digest) -> Iterator[bytes]:
    for chunk in chunks:
        digest.update(chunk)
        yield chunk


def read_ahead(chunks: Iterable[bytes], *, depth: int) -> Iterator[bytes]:
    """`chunks`, produced by a helper thread up to `depth` ahead of the consumer.

    Reading, compressing and hashing (which release the GIL) then run while the
    protocol sends the previous chunk; memory stays at `depth` chunks.
    """
    slots: queue.Queue[tuple[bytes | None, BaseException | None]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        source = iter(chunks)
        item: tuple[bytes | None, BaseException | None]
        try:
            for chunk in source:
                if not _offer(slots, (chunk, None), stop):
                    return
            item = (None, None)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            item = (None, exc)
        finally:
            # Closing the source closes the store file and stops an lbzip2 process.
            close = getattr(source, "close", None)
            if close is not None:
                close()
        _offer(slots, item, stop)

    worker = threading.Thread(target=produce, name="transmit-read-ahead", daemon=True)
    worker.start()
    try:
        while True:
            chunk, error = slots.get()
            if error is not None:
                raise error
            if chunk is None:
                return
            yield chunk
    finally:
        stop.set()
        worker.join()


def _offer(
    slots: queue.Queue[tuple[bytes | None, BaseException | None]],
    item: tuple[bytes | None, BaseException | None],
    stop: threading.Event,
) -> bool:
    """Put `item` unless the consumer has gone away; False when it has."""
    while not stop.is_set():
        try:
            slots.put(item, timeout=0.2)
            return True
        except queue.Full:
            continue
    return False


def final_target(request: SendRequest, codec: compression.Codec | None) -> str:
    return request.target + codec.extension if codec else request.target


def send(
    store: Store,
    request: SendRequest,
    credentials: Mapping[str, str],
    *,
    progress: Callable[[int], None],
) -> SendResult:
    """Deliver the object; `progress` gets the bytes written so far in this call."""
    keep_big_buffers_out_of_the_heap()
    started = time.monotonic()
    extra_sums = tuple(dict.fromkeys((*request.checksums, *_host_checksums(request))))
    with REMOTES.remote(
        request.host_name, request.host_url, request.host_options, credentials
    ) as remote:
        codec = _codec(request, remote)
        target = final_target(request, codec)
        # A compressed stream is only the same bytes again with the same codec build, which
        # a retry on another worker may not have: compressed uploads restart instead.
        offset = request.resume_offset if remote.resumable and codec is None else 0
        if offset and remote.partial_size(target) != offset:
            offset = 0  # the partial upload changed or vanished: start over cleanly
        opts = remote.options
        stream: Iterable[bytes] = store.iter_bytes(
            request.data_file_id, chunk_size=opts.chunk_size, adler32=request.adler32
        )
        if codec:
            stream = codec.compress(stream, posixpath.basename(request.target))
        # Uncompressed, the bytes delivered are the object's, checked against its ADLER32 as
        # they are read: its MD5 from ingest is theirs, and computing it again would cost a
        # third of the CPU of a send (MD5 runs at about 600 MB/s on one core).
        digest = Digest(extra=extra_sums, known_md5=None if codec else request.md5, adler=False)
        stream = _digested(stream, digest)
        if codec or request.size > opts.chunk_size:
            # A file of one chunk is read (and its ADLER32 checked) before its first byte
            # goes out: a helper thread would have nothing to overlap, and cost a thread
            # start and a hand-off per small file.
            stream = read_ahead(stream, depth=remote.read_ahead)
        if offset:
            stream = _skip(stream, offset)
        throttle = Throttle(opts.max_rate, opts.min_rate, opts.min_rate_grace, opts.max_duration)
        stream = throttle.apply(stream, remote.message(f"sending {target!r}"))
        sent = remote.upload(
            target,
            stream,
            offset=offset,
            on_progress=progress,
            size=None if codec else request.size - offset,
        )
        if remote.proven_size is not None:
            remote_size = remote.proven_size
        elif remote.checks_size:
            remote_size = remote.remote_size(target)
        else:
            remote_size = digest.size
        if remote_size != digest.size:
            raise SizeMismatch(
                remote.message(
                    f"{target!r} has {remote_size} bytes on the host, {digest.size} were sent"
                )
            )
        if opts.md5_sidecar:
            line = f"{digest.md5}  {posixpath.basename(target)}\n".encode()
            remote.upload(f"{target}.md5", [line])
    extra = {name: digest.hexdigest(name) for name in extra_sums}
    if codec:
        extra["compression"] = codec.name
    return SendResult(
        bytes_sent=sent,
        remote_size=digest.size,
        md5=digest.md5,
        target=target,
        seconds=time.monotonic() - started,
        extra=extra,
    )


def _host_checksums(request: SendRequest) -> tuple[str, ...]:
    return tuple(request.host_options.get("checksums") or ())


def discard_partial(request: SendRequest, credentials: Mapping[str, str]) -> None:
    """Remove an interrupted upload of `request` that will not be resumed (best effort)."""
    with REMOTES.remote(
        request.host_name, request.host_url, request.host_options, credentials
    ) as remote:
        try:
            codec = _codec(request, remote)
        except ProtocolError:
            codec = None
        remote.discard_partial(final_target(request, codec))


def partial_offset(request: SendRequest, credentials: Mapping[str, str]) -> int:
    """Bytes of an earlier, interrupted upload of this request that `send` can resume from."""
    with REMOTES.remote(
        request.host_name, request.host_url, request.host_options, credentials
    ) as remote:
        codec = _codec(request, remote)
        if not remote.resumable or codec is not None:
            return 0
        return remote.partial_size(final_target(request, codec))
