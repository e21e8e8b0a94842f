"""Amazon S3 and S3-compatible stores through s3fs: `s3://bucket/prefix`.

Large files go up as multipart uploads with several parts in flight; an interrupted
multipart upload is resumed from the parts the store already holds. A small file to a
path-style endpoint goes up as one PutObject over a plain, kept connection (`PlainPut`).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import functools
import hashlib
import http.client
import io
import ssl
import xml.etree.ElementTree as ET
from collections.abc import Coroutine, Iterable, Iterator
from typing import Any
from urllib.parse import quote, urlsplit

from aiobotocore.session import AioSession
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
)
from botocore.httpsession import get_cert_path
from fsspec.asyn import sync
from pydantic import Field
from s3fs import S3FileSystem
from zlib_ng import zlib_ng

from ecpds.core.protocols import CommonOptions, HostUrl, MiB, ProtocolError, options_dataclass
from ecpds.core.protocols.base import Remote
from ecpds.core.protocols.cloud import (
    Entry,
    PartReader,
    connection_problem,
    send_parts,
    with_folders,
)

CREDENTIALS = frozenset({"access_key_id", "secret_access_key", "session_token"})
MIN_PART = 5 * MiB  # S3's smallest part but the last

_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken"}
# 4xx answers botocore retries, or follows to the bucket's region, rather than raising.
_RETRIED = {
    "AuthorizationHeaderMalformed",
    "PriorRequestNotComplete",
    "RequestTimeout",
    "RequestTimeoutException",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
}
_MISSING = {"404", "NoSuchKey", "NotFound"}


@options_dataclass(config={"extra": "forbid"})
class Options(CommonOptions):
    endpoint: str | None = None  # e.g. https://minio.example.org:9000; None = AWS
    region: str | None = None
    path_style: bool = False  # bucket in the path instead of the host name
    multipart_threshold: int = Field(default=8 * MiB, ge=MIN_PART)
    part_size: int = Field(default=8 * MiB, ge=MIN_PART, le=5 * 1024 * MiB)
    concurrency: int = Field(default=4, ge=1, le=32)  # parts uploaded at once
    verify_tls: bool = True
    storage_class: str | None = None


def check(url: HostUrl, options: Options, credentials: dict[str, str]) -> None:
    if not url.host:
        raise ProtocolError(
            f"s3 URL {url.url!r} names no bucket (s3://bucket/prefix)", retryable=False
        )
    if url.user or url.port:
        raise ProtocolError(
            f"s3 URL {url.url!r}: use s3://bucket/prefix and put the server in option 'endpoint'",
            retryable=False,
        )
    if options.endpoint is not None:
        endpoint = urlsplit(options.endpoint)
        if endpoint.scheme not in ("http", "https") or not endpoint.hostname:
            raise ProtocolError(
                f"s3 bucket {url.host}: option 'endpoint' must be an http(s):// URL",
                retryable=False,
            )
    if not (credentials.get("access_key_id") and credentials.get("secret_access_key")):
        raise ProtocolError(
            f"s3 bucket {url.host}: needs the access_key_id and secret_access_key credentials",
            retryable=False,
        )


def crc32(data: bytes | memoryview) -> str:
    """The body's x-amz-checksum-crc32, which S3 checks. botocore would compute the same
    value on the event loop that carries every part, at a quarter of zlib-ng's speed."""
    return base64.b64encode(zlib_ng.crc32(data).to_bytes(4, "big")).decode()


def _proves(answer: dict[str, Any], body: bytes, checksum: str) -> bool:
    """Whether PutObject's answer shows the store holds exactly `body`: the CRC32 it
    computed of what it stored, or else an ETag that is the body's MD5 (as it is without
    SSE-KMS or SSE-C). Anything else leaves the size to be asked for."""
    if "ChecksumCRC32" in answer:
        return bool(answer["ChecksumCRC32"] == checksum)
    etag = str(answer.get("ETag", "")).strip('"')
    return len(etag) == 32 and etag == hashlib.md5(body).hexdigest()


def part_size(first: int, number: int) -> int:
    """Size of part `number`: `first`, doubled every 1,000 parts, so the 10,000 parts S3
    allows reach far beyond `first` x 10,000 bytes while small files keep small parts."""
    return min(first << ((number - 1) // 1000), 5 * 1024 * MiB)


# What S3SigV4Auth reads from a request's context to leave the body unsigned, as `connect`
# configures the client: the CRC32 header guards the body instead.
_UNSIGNED_BODY = Config(s3={"payload_signing_enabled": False})


class PlainPut:
    """PutObject of one whole body over an http.client connection kept between files,
    signed by botocore's own SigV4 signer. The client's full pipeline (a hop to s3fs's
    event loop, event hooks, endpoint rules, aiohttp) cost about 2.5 ms of CPU per small
    file, as much as the store spends answering it. Path-style addressing only: the URL
    is the endpoint's, then the bucket, then the key, as botocore builds it.

    A 4xx answer is raised as botocore's ClientError, so `S3Remote.explain` words it as
    before; anything botocore would retry or follow (a connection problem, a refused
    certificate, a redirect, a 5xx, throttling) is None, for the caller to send the same
    request through botocore."""

    def __init__(
        self, endpoint: str, bucket: str, region: str, credentials: dict[str, str], opts: Options
    ) -> None:
        parts = urlsplit(endpoint)
        self.https = parts.scheme == "https"
        # Signed and sent alike: botocore would sign the URL's host, http.client send its own.
        self.host_header = parts.netloc.rpartition("@")[2]
        self.host, self.port = parts.hostname or "", parts.port
        self.base = f"{parts.scheme}://{parts.netloc}"
        self.prefix = f"{parts.path.rstrip('/')}/{quote(bucket, safe='~')}/"
        self.timeout = opts.timeout
        self.verify_tls = opts.verify_tls
        self.signer = S3SigV4Auth(
            Credentials(
                credentials["access_key_id"],
                credentials["secret_access_key"],
                credentials.get("session_token") or None,
            ),
            "s3",
            region,
        )
        self.connection: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self.connection is None:
            if self.https:
                self.connection = http.client.HTTPSConnection(
                    self.host, self.port, timeout=self.timeout, context=self._tls()
                )
            else:
                self.connection = http.client.HTTPConnection(
                    self.host, self.port, timeout=self.timeout
                )
        return self.connection

    def _tls(self) -> ssl.SSLContext:
        """The checks botocore makes: none without `verify_tls`, else the CA bundle it
        would load (AWS_CA_BUNDLE or the configured ca_bundle, else certifi's)."""
        if not self.verify_tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        bundle = _session().get_config_variable("ca_bundle") or get_cert_path(True)
        return ssl.create_default_context(cafile=bundle)

    def put(self, key: str, body: bytes, checksum: str, storage_class: str | None) -> dict | None:
        """PutObject's answer (ETag, ChecksumCRC32) as botocore parses it; None: ask botocore."""
        path = self.prefix + quote(key, safe="/~")
        headers = {
            "Host": self.host_header,
            "Content-Length": str(len(body)),
            "x-amz-checksum-crc32": checksum,
        }
        if storage_class:
            headers["x-amz-storage-class"] = storage_class
        request = AWSRequest("PUT", self.base + path, headers=headers, data=body)
        request.context["client_config"] = _UNSIGNED_BODY
        self.signer.add_auth(request)
        connection = self._connect()
        try:
            connection.request("PUT", path, body=body, headers=dict(request.headers.items()))
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            return None
        if response.will_close:
            self.close()
        if 200 <= response.status < 300:
            answer = {"ETag": response.getheader("ETag", "")}
            crc = response.getheader("x-amz-checksum-crc32")
            return answer | {"ChecksumCRC32": crc} if crc else answer
        if not 400 <= response.status < 500 or response.status == 429:
            return None  # a redirect, a busy or failing store
        error = _error(response.status, response.reason, data)
        if error["Error"]["Code"] in _RETRIED:
            return None
        raise ClientError(error, "PutObject")

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def _error(status: int, reason: str, body: bytes) -> dict[str, Any]:
    """An S3 error answer as botocore's parser gives it: the XML's Code and Message, or
    the status and its reason when the body says nothing."""
    code, message = "", ""
    try:
        root = ET.fromstring(body) if body else None
    except ET.ParseError:
        root = None
    if root is not None:
        code = root.findtext("Code") or ""
        message = root.findtext("Message") or ""
    return {
        "Error": {"Code": code or str(status), "Message": message or reason},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }


class S3Remote(Remote):
    """Objects under one bucket; keys are the URL's prefix plus the target name."""

    renames = False  # an object only appears, whole, when its upload completes
    # Parts (several in flight) already hold the data ahead of the socket: one chunk read
    # ahead keeps the store busy, more only adds their size to the worker's memory.
    read_ahead = 1

    def __init__(
        self,
        host_name: str,
        url: HostUrl,
        options: Options,
        fs: S3FileSystem,
        credentials: dict[str, str],
    ) -> None:
        super().__init__(host_name, url, options)
        self.fs = fs
        self.bucket = url.host
        self.endpoint = options.endpoint or "https://s3.amazonaws.com"
        self.credentials = credentials
        self.plain: PlainPut | None = None  # made at the first small file

    def _put(self, key: str, body: bytes, checksum: str, storage_class: str | None) -> dict:
        """One whole small file: over `PlainPut` where it applies, else through botocore."""
        opts: Options = self.options  # type: ignore[assignment]
        if opts.endpoint and opts.path_style:
            if self.plain is None:
                client = sync(self.fs.loop, self.fs.set_session)
                self.plain = PlainPut(
                    opts.endpoint, self.bucket, client.meta.region_name, self.credentials, opts
                )
            answer = self.plain.put(key, body, checksum, storage_class)
            if answer is not None:
                return answer
        extra = {"StorageClass": storage_class} if storage_class else {}
        return self._call("put_object", Key=key, Body=body, ChecksumCRC32=checksum, **extra)

    # --- S3 calls on s3fs's event loop ----------------------------------------------------

    async def _acall(self, method: str, **kwargs: Any) -> Any:
        client = await self.fs.set_session()
        return await getattr(client, method)(Bucket=self.bucket, **kwargs)

    def _call(self, method: str, **kwargs: Any) -> Any:
        return sync(self.fs.loop, self._acall, method, **kwargs)

    def _submit(self, method: str, **kwargs: Any) -> concurrent.futures.Future:
        coro: Coroutine[Any, Any, Any] = self._acall(method, **kwargs)
        return asyncio.run_coroutine_threadsafe(coro, self.fs.loop)

    # --- primitives -----------------------------------------------------------------------

    @staticmethod
    def key(path: str) -> str:
        return path.lstrip("/")

    def _write(self, path: str, chunks: Iterable[bytes], offset: int) -> int:
        opts: Options = self.options  # type: ignore[assignment]
        key = self.key(path)
        reader = PartReader(chunks)
        extra = {"StorageClass": opts.storage_class} if opts.storage_class else {}
        if offset:
            upload_id, parts = self._resume(key, offset)
        else:
            head = reader.read(opts.multipart_threshold + 1)
            if len(head) <= opts.multipart_threshold:
                checksum = crc32(head)
                answer = self._put(key, head, checksum, opts.storage_class)
                if _proves(answer, head, checksum):
                    self.proven_size = len(head)
                return len(head)
            reader.unread(head)
            del head
            self._abort_pending(key)
            upload_id = self._call("create_multipart_upload", Key=key, **extra)["UploadId"]
            parts = []
        written = self._send_parts(key, upload_id, parts, reader, opts)
        ordered = sorted(parts, key=lambda p: p["PartNumber"])
        self._call(
            "complete_multipart_upload",
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": ordered},
        )
        return written

    def _send_parts(
        self, key: str, upload_id: str, parts: list[dict], reader: PartReader, opts: Options
    ) -> int:
        def submit(number: int, body: io.BytesIO) -> concurrent.futures.Future:
            with body.getbuffer() as data:
                checksum = crc32(data)
            return self._submit(
                "upload_part",
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
                ChecksumCRC32=checksum,
            )

        return send_parts(
            reader.read_file,
            part_size=lambda number: part_size(opts.part_size, number),
            concurrency=opts.concurrency,
            first_number=len(parts) + 1,
            submit=submit,
            settled=lambda number, result: parts.append(
                {"PartNumber": number, "ETag": result["ETag"]}
            ),
        )

    def _pending(self, key: str) -> list[dict]:
        found = self._call("list_multipart_uploads", Prefix=key).get("Uploads", [])
        return sorted((u for u in found if u["Key"] == key), key=lambda u: u["Initiated"])

    def _discard_partial(self, path: str) -> None:
        """An unfinished upload is a multipart upload: the object itself is not touched."""
        self._abort_pending(self.key(path))

    def _abort_pending(self, key: str) -> None:
        for upload in self._pending(key):
            self._call("abort_multipart_upload", Key=key, UploadId=upload["UploadId"])

    def _uploaded_parts(self, key: str) -> tuple[str, list[dict]] | None:
        """The newest unfinished upload of `key` and its leading run of parts 1, 2, ..."""
        pending = self._pending(key)
        if not pending:
            return None
        upload_id = pending[-1]["UploadId"]
        listed: list[dict] = []
        marker = 0
        while True:
            page = self._call("list_parts", Key=key, UploadId=upload_id, PartNumberMarker=marker)
            listed += page.get("Parts", [])
            if not page.get("IsTruncated"):
                break
            marker = int(page["NextPartNumberMarker"])
        parts = []
        for expected, part in enumerate(sorted(listed, key=lambda p: p["PartNumber"]), 1):
            if part["PartNumber"] != expected:
                break
            parts.append({"PartNumber": expected, "ETag": part["ETag"], "Size": part["Size"]})
        return upload_id, parts

    def _resume(self, key: str, offset: int) -> tuple[str, list[dict]]:
        found = self._uploaded_parts(key)
        held = sum(p["Size"] for p in found[1]) if found else 0
        if found is None or held != offset:
            raise ProtocolError(
                self.message(f"cannot resume {key!r} at byte {offset}: the store holds {held}"),
                retryable=True,
            )
        upload_id, parts = found
        return upload_id, [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in parts]

    def partial_size(self, target: str) -> int:
        with self.translated(f"reading the partial upload of {target!r}"):
            found = self._uploaded_parts(self.key(self.path(target)))
        return sum(p["Size"] for p in found[1]) if found else 0

    def _makedirs(self, folder: str) -> None:
        """S3 has no folders: keys with slashes need nothing created first."""

    def _size(self, path: str) -> int | None:
        try:
            return int(self._call("head_object", Key=self.key(path))["ContentLength"])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                return None
            raise

    def _delete(self, path: str) -> None:
        self._call("delete_object", Key=self.key(path))

    def _list(self, folder: str, recursive: bool) -> Iterator[Entry]:
        """ListObjectsV2, page after page (1,000 keys each); sub-folders are the common
        prefixes, or, when recursive, the folders between the prefix and each key.
        A folder exists while a key is under it: none at all is a missing folder."""
        prefix = self.key(folder).rstrip("/")
        prefix = f"{prefix}/" if prefix else ""
        delimiter = {} if recursive else {"Delimiter": "/"}
        token: dict[str, str] = {}
        anything = False
        while True:
            page = self._call("list_objects_v2", Prefix=prefix, **delimiter, **token)
            objects = [
                (str(o["Key"]), int(o["Size"]), o.get("LastModified"))
                for o in page.get("Contents", [])
            ]
            folders = [str(p["Prefix"]) for p in page.get("CommonPrefixes", [])]
            anything = anything or bool(objects or folders)
            if recursive:
                yield from with_folders(objects, prefix)
            else:
                for key, size, when in objects:
                    if key != prefix:  # the folder's own marker object
                        yield "/" + key, size, when, False
                for name in folders:
                    yield "/" + name.rstrip("/"), 0, None, True
            if not page.get("IsTruncated"):
                break
            token = {"ContinuationToken": page["NextContinuationToken"]}
        if prefix and not anything:
            raise self.missing_folder(folder)

    def _read(self, path: str, offset: int) -> Iterator[bytes]:
        """GetObject, ranged from `offset`; the body streamed chunk by chunk."""
        key = self.key(path)
        ranged = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            body = self._call("get_object", Key=key, **ranged)["Body"]
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in _MISSING:
                raise FileNotFoundError(key) from None
            if code == "InvalidRange" and self._size(path) == offset:
                return  # nothing after the offset
            raise
        try:
            while chunk := sync(self.fs.loop, body.read, self.options.chunk_size):
                yield chunk
        finally:
            body.close()

    # --- errors ---------------------------------------------------------------------------

    def explain(self, exc: BaseException) -> tuple[str, bool] | None:
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code == "NoSuchBucket":
                return f"bucket {self.bucket!r} does not exist", True
            if code in _DENIED or code == "403":
                return f"authentication failed ({code}): check the access key and secret", True
            return f"S3 error {code}: {error.get('Message') or exc}", True
        if isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
            known = connection_problem(exc, self.endpoint)
            if known is None and isinstance(exc, ConnectTimeoutError):
                known = f"timed out connecting to {self.endpoint}"
            return known or f"cannot connect to {self.endpoint}", True
        if isinstance(exc, BotoCoreError):
            return " ".join(str(exc).split()), True
        return None

    def close(self) -> None:
        """The client stays in s3fs's instance cache for the next upload to this host."""
        if self.plain is not None:
            self.plain.close()
            self.plain = None
        self.fs = None  # type: ignore[assignment]


@functools.cache  # holds no state of ours: botocore's service models only
def _session() -> AioSession:
    """One botocore session per process: each new one parses the S3 service model again,
    which costs more than sending a small file."""
    return AioSession()


def connect(host_name: str, url: HostUrl, options: Options, credentials: dict[str, str]) -> Remote:
    config: dict[str, Any] = {
        "connect_timeout": options.timeout,
        "read_timeout": options.timeout,
        "retries": {"max_attempts": 2, "mode": "standard"},
        "max_pool_connections": max(10, options.concurrency * 2),
    }
    # A CRC32 checksum, which the store verifies, guards each body for a fraction of the
    # CPU that signing its SHA-256 (botocore's default over plain HTTP) costs.
    s3_config: dict[str, Any] = {"payload_signing_enabled": False}
    if options.path_style:
        s3_config["addressing_style"] = "path"
    config["s3"] = s3_config
    client: dict[str, Any] = {"verify": options.verify_tls}
    if options.region:
        client["region_name"] = options.region
    fs = S3FileSystem(
        session=_session(),
        key=credentials["access_key_id"],
        secret=credentials["secret_access_key"],
        token=credentials.get("session_token") or None,
        endpoint_url=options.endpoint,
        client_kwargs=client,
        config_kwargs=config,
        # Kept per process and host settings, like a connection pool: a worker sending many
        # files to one host reuses its connections and botocore's per-client caches.
        skip_instance_cache=False,
    )
    return S3Remote(host_name, url, options, fs, credentials)
