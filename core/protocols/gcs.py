"""Google Cloud Storage through gcsfs: `gcs://bucket/prefix`.

An object appears whole when its (resumable, chunked) upload is finalised; the upload
session lives only as long as the connection, so an interrupted upload restarts cleanly.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import BytesPayload
from fsspec.asyn import sync
from gcsfs.core import GCSFileSystem
from gcsfs.retry import HttpError, retry_request
from pydantic import Field

from ecpds.core.protocols import CommonOptions, HostUrl, MiB, ProtocolError, options_dataclass
from ecpds.core.protocols.base import FsspecRemote, Remote
from ecpds.core.protocols.cloud import connection_problem

CREDENTIALS = frozenset({"token"})
GCS_ENDPOINT = "https://storage.googleapis.com"
CHUNK_UNIT = 256 * 1024  # resumable upload chunks are multiples of this
SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"
SLICE = 1 * MiB  # of a large request body, written to the socket at a time


@options_dataclass(config={"extra": "forbid"})
class Options(CommonOptions):
    endpoint: str | None = None  # e.g. an emulator's http://127.0.0.1:9023; None = Google
    project: str | None = None
    anonymous: bool = False  # no credentials (emulators, public-write buckets)
    block_size: int = Field(default=16 * MiB, ge=CHUNK_UNIT, le=1024 * MiB, multiple_of=CHUNK_UNIT)


def check(url: HostUrl, options: Options, credentials: dict[str, str]) -> None:
    if not url.host:
        raise ProtocolError(
            f"gcs URL {url.url!r} names no bucket (gcs://bucket/prefix)", retryable=False
        )
    if url.user or url.port:
        raise ProtocolError(
            f"gcs URL {url.url!r}: use gcs://bucket/prefix and put the server in option 'endpoint'",
            retryable=False,
        )
    if options.anonymous == bool(credentials.get("token")):
        raise ProtocolError(
            f"gcs bucket {url.host}: give either the token credential (service-account JSON"
            " or OAuth access token) or option anonymous=true",
            retryable=False,
        )


class _SlicedPayload(BytesPayload):
    """A body handed to the socket a slice at a time, each once the last has drained.

    gcsfs posts each upload chunk (`block_size`, 16 MiB) as one buffer; Python 3.11's
    asyncio copies whatever of one write the socket does not take at once, so the
    chunk would exist twice while it is sent.
    """

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        with memoryview(self._value) as whole:
            view = whole.cast("B")[:content_length]
            for start in range(0, len(view), SLICE):
                await writer.write(view[start : start + SLICE])


async def _sliced_request(fs: GCSFileSystem, *args: Any, data: Any = None, **kwargs: Any) -> Any:
    if isinstance(data, bytes | bytearray | memoryview) and len(data) > SLICE:
        data = _SlicedPayload(data)  # made anew for each try: a payload is written once
    return await _gcsfs_request(fs, *args, data=data, **kwargs)


_gcsfs_request = GCSFileSystem._request.__wrapped__


class _GCSFileSystem(GCSFileSystem):
    """gcsfs with two retries per request instead of six: gcsfs's own back-off would hold
    a failing host for half a minute, where the destination's retry rules should act;
    and upload chunks sent a slice at a time (`_SlicedPayload`)."""

    _request = retry_request(retries=2)(_sliced_request)


class GcsRemote(FsspecRemote):
    """Objects under one bucket; names are the URL's prefix plus the target name."""

    fs: Any
    renames = False  # an object only appears, whole, when its upload is finalised
    resumable = False  # the resumable-upload session does not outlive the connection
    # gcsfs holds `block_size` (16 MiB) ahead of the socket: one chunk read ahead keeps the
    # store busy, more only adds their size to the worker's memory.
    read_ahead = 1

    def __init__(self, host_name: str, url: HostUrl, options: Options, fs: Any) -> None:
        super().__init__(host_name, url, options, fs)
        self.bucket = url.host
        self.endpoint = options.endpoint or GCS_ENDPOINT

    def object(self, path: str) -> str:
        return f"{self.bucket}/{path.lstrip('/')}"

    def open_kwargs(self) -> dict[str, Any]:
        return {"block_size": self.options.block_size}  # type: ignore[attr-defined]

    def _write(self, path: str, chunks: Iterable[bytes], offset: int) -> int:
        out = self.fs.open(self.object(path), "wb", **self.open_kwargs())
        written = 0
        try:
            for chunk in chunks:
                out.write(chunk)
                written += len(chunk)
        except BaseException:
            # Closing would finalise what was sent so far under the real name: cancel the
            # upload session instead, and mark the file closed so nothing commits it later.
            with contextlib.suppress(Exception):
                out.discard()
            out.closed = True
            raise
        out.close()
        return written

    def _makedirs(self, folder: str) -> None:
        """Object names with slashes need no folders (and gcsfs would create the bucket)."""

    def _size(self, path: str) -> int | None:
        return super()._size(self.object(path))

    def _delete(self, path: str) -> None:
        super()._delete(self.object(path))

    def _list(
        self, folder: str, recursive: bool
    ) -> Iterator[tuple[str, int, datetime | None, bool]]:
        """gcsfs's listing (it follows the page tokens), fresh each time, under "/"."""
        self.fs.invalidate_cache()
        start = len(self.bucket) + 1
        try:
            for path, size, when, is_dir in super()._list(self.object(folder), recursive):
                yield "/" + path[start:], size, when, is_dir
        except ProtocolError as exc:
            if "does not exist" in str(exc):
                raise self.missing_folder(folder) from None
            raise

    def _read(self, path: str, offset: int) -> Iterator[bytes]:
        return super()._read(self.object(path), offset)

    def explain(self, exc: BaseException) -> tuple[str, bool] | None:
        if isinstance(exc, FileNotFoundError):
            return f"bucket {self.bucket!r} does not exist", True
        if isinstance(exc, HttpError) and exc.code in (401, 403):
            return f"authentication failed ({exc.message}): check the token credential", True
        if isinstance(exc, HttpError):
            return f"GCS error {exc.code}: {exc.message}", True
        known = connection_problem(exc, self.endpoint)
        return (known, True) if known else None

    def close(self) -> None:
        fs: Any = self.fs
        self.fs = None
        session = getattr(fs, "_session", None)
        if session is not None:
            with contextlib.suppress(Exception):
                sync(fs.loop, session.close, timeout=10)


def token(options: Options, credentials: dict[str, str]) -> Any:
    """What gcsfs takes as `token`: "anon", service-account info, or OAuth credentials."""
    if options.anonymous:
        return "anon"
    text = credentials["token"].strip()
    if not text.startswith("{"):
        from google.oauth2.credentials import Credentials

        return Credentials(text)
    try:
        info = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(
            f"gcs token credential is not valid JSON ({exc.msg})", retryable=False
        ) from None
    if isinstance(info, dict) and info.get("type") == "service_account":
        from google.oauth2 import service_account

        return service_account.Credentials.from_service_account_info(info, scopes=[SCOPE])
    return info  # an authorized-user JSON, which gcsfs refreshes itself


def connect(host_name: str, url: HostUrl, options: Options, credentials: dict[str, str]) -> Remote:
    try:
        fs = _GCSFileSystem(
            token=token(options, credentials),
            project=options.project or "ecpds",
            endpoint_url=options.endpoint,
            requests_timeout=options.timeout,
            skip_instance_cache=True,
        )
    except ProtocolError:
        raise
    except Exception as exc:
        # google-auth names the missing field of a bad service-account or user JSON
        raise ProtocolError(
            f"gcs host {host_name}: the token credential is unusable"
            f" ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})",
            retryable=False,
        ) from None
    return GcsRemote(host_name, url, options, fs)
