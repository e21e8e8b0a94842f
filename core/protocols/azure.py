"""Azure Blob Storage through adlfs: `azure://container/prefix`.

Large files are staged as blocks, several in flight, and committed at the end; staged
blocks outlive a broken connection, so an interrupted upload resumes from them.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import hashlib
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

from adlfs import AzureBlobFileSystem
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
)
from fsspec.asyn import sync
from pydantic import Field

from ecpds.core.protocols import CommonOptions, HostUrl, MiB, ProtocolError, options_dataclass
from ecpds.core.protocols.base import Remote
from ecpds.core.protocols.cloud import (
    Entry,
    PartReader,
    connection_problem,
    send_parts,
    with_folders,
)

CREDENTIALS = frozenset({"connection_string", "account_key", "sas_token"})
# azure-core retries a refused connection for seconds by default; the destination's own
# retry rules take it from there instead.
_RETRIES = {"retry_total": 2, "retry_connect": 0}


@options_dataclass(config={"extra": "forbid"})
class Options(CommonOptions):
    account: str | None = None  # storage account name (not needed with a connection_string)
    endpoint: str | None = None  # blob service URL; default https://ACCOUNT.blob.core.windows.net
    single_put_limit: int = Field(default=8 * MiB, ge=64 * 1024, le=256 * MiB)
    block_size: int = Field(default=4 * MiB, ge=64 * 1024, le=4000 * MiB)
    concurrency: int = Field(default=8, ge=1, le=32)  # blocks uploaded at once


def check(url: HostUrl, options: Options, credentials: dict[str, str]) -> None:
    if not url.host:
        raise ProtocolError(
            f"azure URL {url.url!r} names no container (azure://container/prefix)",
            retryable=False,
        )
    if url.user or url.port:
        raise ProtocolError(
            f"azure URL {url.url!r}: use azure://container/prefix; the account and server"
            " go in options 'account' and 'endpoint'",
            retryable=False,
        )
    given = [k for k in ("connection_string", "account_key", "sas_token") if credentials.get(k)]
    if len(given) != 1:
        raise ProtocolError(
            f"azure container {url.host}: needs exactly one of the credentials"
            " connection_string, account_key or sas_token",
            retryable=False,
        )
    if given[0] == "account_key" and not options.account:
        raise ProtocolError(
            f"azure container {url.host}: option 'account' is needed with account_key",
            retryable=False,
        )
    if given[0] == "sas_token" and not (options.account or options.endpoint):
        raise ProtocolError(
            f"azure container {url.host}: option 'account' or 'endpoint' is needed with sas_token",
            retryable=False,
        )
    if options.endpoint is not None:
        endpoint = urlsplit(options.endpoint)
        if endpoint.scheme not in ("http", "https") or not endpoint.hostname:
            raise ProtocolError(
                f"azure container {url.host}: option 'endpoint' must be an http(s):// URL",
                retryable=False,
            )


def connection_string(options: Options, credentials: dict[str, str]) -> str:
    if credentials.get("connection_string"):
        return credentials["connection_string"]
    endpoint = (options.endpoint or f"https://{options.account}.blob.core.windows.net").rstrip("/")
    if credentials.get("sas_token"):
        return f"BlobEndpoint={endpoint};SharedAccessSignature={credentials['sas_token']};"
    scheme = urlsplit(endpoint).scheme
    return (
        f"DefaultEndpointsProtocol={scheme};AccountName={options.account};"
        f"AccountKey={credentials['account_key']};BlobEndpoint={endpoint};"
    )


def block_id(number: int) -> str:
    """Block ids of one blob must all have the same length."""
    return base64.b64encode(f"ecpds-{number:08d}".encode()).decode()


class AzureRemote(Remote):
    """Blobs in one container; names are the URL's prefix plus the target name."""

    renames = False  # a blob only appears, whole, when its block list is committed
    # Parts (several in flight) already hold the data ahead of the socket: one chunk read
    # ahead keeps the store busy, more only adds their size to the worker's memory.
    read_ahead = 1

    def __init__(
        self, host_name: str, url: HostUrl, options: Options, fs: AzureBlobFileSystem
    ) -> None:
        super().__init__(host_name, url, options)
        self.fs = fs
        self.container = url.host
        self.endpoint = fs.service_client.url
        timeout = options.timeout
        self.call_options = {**_RETRIES, "connection_timeout": timeout, "read_timeout": timeout}

    # --- calls on adlfs's event loop ------------------------------------------------------

    async def _acall(self, blob: str, method: str, *args: Any, **kwargs: Any) -> Any:
        client = self.fs.service_client.get_blob_client(self.container, blob)
        return await getattr(client, method)(*args, **self.call_options, **kwargs)

    def _call(self, blob: str, method: str, *args: Any, **kwargs: Any) -> Any:
        return sync(self.fs.loop, self._acall, blob, method, *args, **kwargs)

    def _submit(
        self, blob: str, method: str, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future:
        coro: Coroutine[Any, Any, Any] = self._acall(blob, method, *args, **kwargs)
        return asyncio.run_coroutine_threadsafe(coro, self.fs.loop)

    # --- primitives -----------------------------------------------------------------------

    @staticmethod
    def blob(path: str) -> str:
        return path.lstrip("/")

    def _write(self, path: str, chunks: Iterable[bytes], offset: int) -> int:
        opts: Options = self.options  # type: ignore[assignment]
        blob = self.blob(path)
        reader = PartReader(chunks)
        if offset:
            blocks = self._staged(blob)
            held = sum(size for _, size in blocks)
            if held != offset:
                raise ProtocolError(
                    self.message(f"cannot resume {blob!r} at byte {offset}: {held} are staged"),
                    retryable=True,
                )
            ids = [block for block, _ in blocks]
        else:
            head = reader.read(opts.single_put_limit + 1)
            if len(head) <= opts.single_put_limit:
                answer = self._call(blob, "upload_blob", head, overwrite=True)
                # Put Blob answers with the MD5 the service computed of the blob it stored.
                stored_md5 = answer.get("content_md5")
                if stored_md5 and bytes(stored_md5) == hashlib.md5(head).digest():
                    self.proven_size = len(head)
                return len(head)
            reader.unread(head)
            del head
            ids = []
        staged: dict[int, str] = {}
        written = send_parts(
            reader.read,
            part_size=lambda number: opts.block_size,
            concurrency=opts.concurrency,
            first_number=len(ids) + 1,
            submit=lambda number, data: self._submit(
                blob, "stage_block", block_id(number), data, length=len(data)
            ),
            settled=lambda number, _: staged.__setitem__(number, block_id(number)),
        )
        ids += [staged[n] for n in sorted(staged)]
        self._call(blob, "commit_block_list", ids)
        return written

    def _staged(self, blob: str) -> list[tuple[str, int]]:
        """Our uncommitted blocks 1, 2, ... of `blob`, in order, with their sizes."""
        try:
            _, uncommitted = self._call(blob, "get_block_list", "uncommitted")
        except ResourceNotFoundError:
            return []
        sizes = {block.id: block.size for block in uncommitted}
        blocks = []
        number = 1
        while block_id(number) in sizes:
            blocks.append((block_id(number), sizes[block_id(number)]))
            number += 1
        return blocks

    def _discard_partial(self, path: str) -> None:
        """Uncommitted blocks are not the blob: the next commit or Azure (after a week) drops
        them, and deleting the blob would remove an earlier delivery."""

    def partial_size(self, target: str) -> int:
        with self.translated(f"reading the partial upload of {target!r}"):
            blocks = self._staged(self.blob(self.path(target)))
        return sum(size for _, size in blocks)

    def _makedirs(self, folder: str) -> None:
        """Blob names with slashes need no folders created first."""

    def _size(self, path: str) -> int | None:
        try:
            return int(self._call(self.blob(path), "get_blob_properties").size)
        except ResourceNotFoundError:
            return None

    def _delete(self, path: str) -> None:
        self._call(self.blob(path), "delete_blob")

    def _list(self, folder: str, recursive: bool) -> Iterator[Entry]:
        """List Blobs, 5,000 a page; sub-folders are the prefixes before the next "/",
        or, when recursive, the folders between the prefix and each blob.
        A folder exists while a key is under it: none at all is a missing folder."""
        prefix = self.blob(folder).rstrip("/")
        prefix = f"{prefix}/" if prefix else ""
        container = self.fs.service_client.get_container_client(self.container)
        pages: Any = None

        async def next_page() -> list[Any] | None:
            nonlocal pages
            if pages is None:
                method = container.list_blobs if recursive else container.walk_blobs
                pages = method(
                    name_starts_with=prefix or None, results_per_page=5000, **self.call_options
                ).by_page()
            try:
                page: AsyncIterator[Any] = await pages.__anext__()
            except StopAsyncIteration:
                return None
            return [item async for item in page]

        anything = False
        while (items := sync(self.fs.loop, next_page)) is not None:
            anything = anything or bool(items)
            blobs = [
                (str(i.name), int(i.size), i.last_modified) for i in items if hasattr(i, "size")
            ]
            if recursive:
                yield from with_folders(blobs, prefix)
                continue
            for name, size, when in blobs:
                if name != prefix:
                    yield "/" + name, size, when, False
            for item in items:
                if not hasattr(item, "size"):  # a BlobPrefix: the folder's name ends in "/"
                    yield "/" + str(item.name).rstrip("/"), 0, None, True
        if prefix and not anything:
            raise self.missing_folder(folder)

    def _read(self, path: str, offset: int) -> Iterator[bytes]:
        """Get Blob from `offset`, chunk by chunk."""
        blob = self.blob(path)
        try:
            download = self._call(blob, "download_blob", offset=offset or None)
        except ResourceNotFoundError as exc:
            if "BlobNotFound" in str(getattr(exc, "error_code", "")):
                raise FileNotFoundError(blob) from None
            raise
        except HttpResponseError as exc:
            if exc.status_code == 416 and self._size(path) == offset:
                return  # nothing after the offset
            raise
        chunks = download.chunks()

        async def next_chunk() -> bytes | None:
            try:
                return bytes(await chunks.__anext__())
            except StopAsyncIteration:
                return None

        while (chunk := sync(self.fs.loop, next_chunk)) is not None:
            if chunk:
                yield chunk

    # --- errors ---------------------------------------------------------------------------

    def explain(self, exc: BaseException) -> tuple[str, bool] | None:
        code = getattr(exc, "error_code", None) or ""
        code = str(getattr(code, "value", code))
        if code == "ContainerNotFound":
            return f"container {self.container!r} does not exist", True
        denied = isinstance(exc, HttpResponseError) and exc.status_code == 403
        if denied or isinstance(exc, ClientAuthenticationError):
            why = f" ({code})" if code else ""
            return f"authentication failed{why}: check the key, SAS or connection string", True
        if isinstance(exc, ServiceRequestError):
            return connection_problem(
                exc, self.endpoint
            ) or f"cannot connect to {self.endpoint}", True
        if isinstance(exc, HttpResponseError):
            reason = code or str(exc.reason or exc.status_code)
            return f"Azure error {reason}", True
        if isinstance(exc, AzureError):
            return " ".join(str(exc.message or exc).split()), True
        return None

    def close(self) -> None:
        fs, self.fs = self.fs, None  # type: ignore[assignment]
        if fs is not None:
            with contextlib.suppress(Exception):
                sync(fs.loop, fs.service_client.close, timeout=10)


def connect(host_name: str, url: HostUrl, options: Options, credentials: dict[str, str]) -> Remote:
    fs = AzureBlobFileSystem(
        connection_string=connection_string(options, credentials),
        skip_instance_cache=True,
    )
    return AzureRemote(host_name, url, options, fs)
