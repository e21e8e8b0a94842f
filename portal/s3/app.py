"""The S3 gateway: an ASGI app answering the S3 REST calls over the portal's file system.

Path-style addressing (`/bucket/key`), and virtual-hosted style (`bucket.DOMAIN/key`)
when given the portal's domain; a bucket is a destination of the signed-in
user, an object the newest live transfer under that target name. Multipart parts
wait in the store (portal.s3.multipart), so any replica takes any part, until
CompleteMultipartUpload streams them through ingest.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl, unquote
from xml.sax.saxutils import escape

from sqlalchemy import Engine
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from ecpds.core.access import Principal
from ecpds.core.errors import BadPath, EcpdsError, NotFound, Unauthenticated
from ecpds.core.ingest import IngestError
from ecpds.core.secrets import CredentialBox
from ecpds.portal.access import login_access_key, split_path
from ecpds.portal.s3.multipart import MultipartUploads
from ecpds.portal.s3.sigv4 import SignatureError, SignedRequest, decode_body, read_claim, verify
from ecpds.portal.vfs import Entry, PortalFS

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
STALE_UPLOAD_SECONDS = 7 * 86400


class S3Error(Exception):
    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def _xml(body: str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        '<?xml version="1.0" encoding="UTF-8"?>\n' + body,
        status_code=status,
        media_type="application/xml",
        headers=headers,
    )


def _error_response(code: str, message: str, status: int, resource: str) -> Response:
    body = (
        f"<Error><Code>{code}</Code><Message>{escape(message)}</Message>"
        f"<Resource>{escape(resource)}</Resource><RequestId>{secrets.token_hex(8)}</RequestId>"
        "</Error>"
    )
    return _xml(body, status)


def _iso(when: datetime | None) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.000Z") if when else "1970-01-01T00:00:00.000Z"


def _access_error(exc: EcpdsError, bucket: str, key: str) -> S3Error:
    if isinstance(exc, NotFound):
        if key:
            return S3Error("NoSuchKey", str(exc), 404)
        return S3Error("NoSuchBucket", str(exc), 404)
    if isinstance(exc, Unauthenticated):
        return S3Error("InvalidAccessKeyId", str(exc), 403)
    if isinstance(exc, BadPath):
        return S3Error("InvalidArgument", str(exc), 400)
    return S3Error("AccessDenied", str(exc), 403)


class S3Gateway:
    """ASGI application; `S3Gateway(fs, box)` is served by uvicorn on the S3 port."""

    def __init__(self, fs: PortalFS, box: CredentialBox, domain: str | None = None) -> None:
        self.fs = fs
        self.box = box
        self.uploads = MultipartUploads(fs.store.primary)
        # With a domain, BUCKET.domain (virtual-hosted style) names the bucket too.
        self.domain = domain.lower().strip(".") if domain else None

    def _bucket_and_key(self, host: str, path: str) -> tuple[str, str]:
        name = host.rsplit(":", 1)[0].lower() if not host.startswith("[") else host
        if self.domain and name.endswith("." + self.domain):
            return name[: -len(self.domain) - 1], path.lstrip("/")
        bucket, _, key = path.lstrip("/").partition("/")
        return bucket, key

    def purge_stale_uploads(self, max_age: float = STALE_UPLOAD_SECONDS) -> list[str]:
        """Remove multipart uploads neither completed nor aborted within `max_age` seconds."""
        return self.uploads.purge_stale(max_age)

    @property
    def engine(self) -> Engine:
        return self.fs.engine

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        path = scope["path"]
        bucket, key = self._bucket_and_key(request.headers.get("host", ""), path)
        try:
            response = await self._handle(request, bucket, key)
        except S3Error as exc:
            response = _error_response(exc.code, str(exc), exc.status, path)
        except SignatureError as exc:
            response = _error_response(exc.code, str(exc), exc.status, path)
        except EcpdsError as exc:
            err = _access_error(exc, bucket, key)
            response = _error_response(err.code, str(err), err.status, path)
        except IngestError as exc:
            code = {413: "EntityTooLarge", 429: "SlowDown", 404: "NoSuchBucket"}.get(
                exc.status, "InvalidRequest"
            )
            response = _error_response(
                code, str(exc), 503 if exc.status == 429 else exc.status, path
            )
        except ClientDisconnect:
            return
        if response.status_code >= 400 and request.method in ("PUT", "POST"):
            # The body may be unread: closing keeps it from being parsed as the next request.
            response.headers["Connection"] = "close"
        await response(scope, receive, send)

    # --- authentication ---------------------------------------------------------------------

    async def _authenticate(self, request: Request) -> tuple[Principal, SignedRequest]:
        headers = {k.lower(): v for k, v in request.headers.items()}
        query = request.scope.get("query_string", b"").decode("latin-1")
        claim = read_claim(request.method, headers, query)
        if claim is None:
            raise S3Error("AccessDenied", "anonymous access is not allowed", 403)
        try:
            principal, secret = await asyncio.to_thread(
                login_access_key, self.engine, self.box, claim.access_key_id
            )
        except Unauthenticated as exc:
            raise S3Error("InvalidAccessKeyId", str(exc), 403) from exc
        raw_path = request.scope.get("raw_path") or request.scope["path"].encode()
        host = headers.get("host", "")
        signed = verify(
            claim,
            secret,
            method=request.method,
            url=f"{request.url.scheme}://{host}{raw_path.decode('latin-1')}",
            query=query,
            headers=[
                (k.decode("latin-1"), v.decode("latin-1")) for k, v in request.scope["headers"]
            ],
        )
        return principal, signed

    def _body(self, request: Request, signed: SignedRequest) -> AsyncIterator[bytes]:
        headers = {k.lower(): v for k, v in request.headers.items()}
        return decode_body(request.stream(), signed, headers)

    # --- routing ----------------------------------------------------------------------------

    async def _handle(self, request: Request, bucket: str, key: str) -> Response:
        principal, signed = await self._authenticate(request)
        params = dict(parse_qsl(request.url.query, keep_blank_values=True))
        method = request.method
        if not bucket:
            if method == "GET":
                return self._list_buckets(principal)
            raise S3Error("MethodNotAllowed", f"{method} / is not supported", 405)
        if bucket not in principal.destinations:
            raise S3Error("NoSuchBucket", f"no bucket {bucket!r}", 404)
        if not key:
            return await self._bucket_call(request, principal, signed, bucket, params)
        parts = self._object_parts(bucket, key)
        if method in ("GET", "HEAD"):
            return await self._get_object(request, principal, parts)
        if method == "PUT":
            if "uploadId" in params:
                return await self._upload_part(request, principal, signed, parts, params)
            if "x-amz-copy-source" in request.headers:
                return await self._copy_object(request, principal, parts)
            return await self._put_object(request, principal, signed, parts)
        if method == "POST" and "uploads" in params:
            return await self._create_multipart(principal, bucket, key, parts)
        if method == "POST" and "uploadId" in params:
            return await self._complete_multipart(request, principal, parts, params)
        if method == "DELETE" and "uploadId" in params:
            upload_id = await self._upload(principal, params["uploadId"], parts)
            await asyncio.to_thread(self.uploads.remove, upload_id)
            return Response(status_code=204)
        if method == "DELETE":
            # S3 answers 204 whether or not the key existed.
            with contextlib.suppress(NotFound):
                await asyncio.to_thread(self.fs.delete, principal, parts)
            return Response(status_code=204)
        raise S3Error("MethodNotAllowed", f"{method} on an object is not supported", 405)

    @staticmethod
    def _object_parts(bucket: str, key: str) -> tuple[str, ...]:
        parts = split_path("/" + bucket + "/" + key)
        if len(parts) < 2 or parts[0] != bucket or "/".join(parts[1:]) != key:
            raise S3Error("InvalidArgument", f"key {key!r} is not a plain path", 400)
        return parts

    async def _bucket_call(
        self,
        request: Request,
        principal: Principal,
        signed: SignedRequest,
        bucket: str,
        params: dict[str, str],
    ) -> Response:
        method = request.method
        if method == "HEAD":
            return Response(status_code=200)
        if method == "GET" and "location" in params:
            return _xml(f'<LocationConstraint xmlns="{NS}"></LocationConstraint>')
        if method == "GET":
            return await self._list_objects(principal, bucket, params)
        if method == "POST" and "delete" in params:
            return await self._delete_objects(request, principal, signed, bucket)
        if method == "PUT":
            raise S3Error(
                "BucketAlreadyOwnedByYou", "buckets are destinations, created by the operator", 409
            )
        raise S3Error("MethodNotAllowed", f"{method} on a bucket is not supported", 405)

    # --- buckets and listings ---------------------------------------------------------------

    def _list_buckets(self, principal: Principal) -> Response:
        buckets = "".join(
            f"<Bucket><Name>{escape(name)}</Name><CreationDate>{_iso(None)}</CreationDate></Bucket>"
            for name in principal.destinations
        )
        return _xml(
            f'<ListAllMyBucketsResult xmlns="{NS}"><Owner><ID>{escape(principal.name)}</ID>'
            f"<DisplayName>{escape(principal.name)}</DisplayName></Owner>"
            f"<Buckets>{buckets}</Buckets></ListAllMyBucketsResult>"
        )

    async def _list_objects(
        self, principal: Principal, bucket: str, params: dict[str, str]
    ) -> Response:
        v2 = params.get("list-type") == "2"
        prefix = params.get("prefix", "")
        delimiter = params.get("delimiter", "")
        try:
            max_keys = min(int(params.get("max-keys", "1000")), 1000)
        except ValueError as exc:
            raise S3Error("InvalidArgument", "max-keys must be a number", 400) from exc
        if v2:
            token = params.get("continuation-token")
            after = (
                base64.urlsafe_b64decode(token).decode() if token else params.get("start-after", "")
            )
        else:
            after = params.get("marker", "")
        entries = await asyncio.to_thread(self.fs.list_objects, principal, bucket, prefix)
        contents: list[Entry] = []
        prefixes: list[str] = []
        truncated = False
        last = ""
        for entry in entries:
            name = entry.name
            if after and (
                name <= after or (after.endswith(delimiter or "\0") and name.startswith(after))
            ):
                continue
            rest = name[len(prefix) :]
            common = ""
            if delimiter and delimiter in rest:
                common = prefix + rest[: rest.index(delimiter) + len(delimiter)]
                if prefixes and prefixes[-1] == common:
                    continue
            elif entry.is_dir:
                continue  # a kept folder is only a common prefix, never an object
            if len(contents) + len(prefixes) >= max_keys:
                truncated = True
                break
            if common:
                prefixes.append(common)
                last = common
            else:
                contents.append(entry)
                last = name
        items = "".join(
            f"<Contents><Key>{escape(e.name)}</Key><LastModified>{_iso(e.mtime)}</LastModified>"
            f'<ETag>"{e.md5}"</ETag><Size>{e.size}</Size><StorageClass>STANDARD</StorageClass>'
            "</Contents>"
            for e in contents
        )
        common_xml = "".join(
            f"<CommonPrefixes><Prefix>{escape(p)}</Prefix></CommonPrefixes>" for p in prefixes
        )
        head = (
            f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix>"
            f"<MaxKeys>{max_keys}</MaxKeys><IsTruncated>{str(truncated).lower()}</IsTruncated>"
        )
        if delimiter:
            head += f"<Delimiter>{escape(delimiter)}</Delimiter>"
        if v2:
            head += f"<KeyCount>{len(contents) + len(prefixes)}</KeyCount>"
            if "continuation-token" in params:
                head += (
                    f"<ContinuationToken>{escape(params['continuation-token'])}</ContinuationToken>"
                )
            if "start-after" in params:
                head += f"<StartAfter>{escape(params['start-after'])}</StartAfter>"
            if truncated:
                next_token = base64.urlsafe_b64encode(last.encode()).decode()
                head += f"<NextContinuationToken>{next_token}</NextContinuationToken>"
        else:
            head += f"<Marker>{escape(after)}</Marker>"
            if truncated:
                head += f"<NextMarker>{escape(last)}</NextMarker>"
        return _xml(f'<ListBucketResult xmlns="{NS}">{head}{items}{common_xml}</ListBucketResult>')

    # --- objects ----------------------------------------------------------------------------

    async def _get_object(
        self, request: Request, principal: Principal, parts: tuple[str, ...]
    ) -> Response:
        download = await asyncio.to_thread(self.fs.open_read, principal, parts)
        entry = download.entry
        etag = f'"{entry.md5}"'
        headers = {
            "ETag": etag,
            "Accept-Ranges": "bytes",
            "Content-Type": "binary/octet-stream",
            "Last-Modified": format_datetime(entry.mtime, usegmt=True) if entry.mtime else "",
        }
        inm = request.headers.get("if-none-match")
        if inm and etag in [t.strip() for t in inm.split(",")]:
            return Response(status_code=304, headers=headers)
        im = request.headers.get("if-match")
        if im and etag not in [t.strip() for t in im.split(",")] and im.strip() != "*":
            raise S3Error("PreconditionFailed", "the ETag does not match If-Match", 412)
        start, end, status = 0, entry.size, 200
        range_header = request.headers.get("range")
        if range_header:
            start, end = _parse_range(range_header, entry.size)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{entry.size}"
        headers["Content-Length"] = str(end - start)
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers)
        return StreamingResponse(download.chunks(start, end), status_code=status, headers=headers)

    async def _put_object(
        self,
        request: Request,
        principal: Principal,
        signed: SignedRequest,
        parts: tuple[str, ...],
    ) -> Response:
        result = await self.fs.upload(principal, parts, self._body(request, signed))
        return Response(status_code=200, headers={"ETag": f'"{result.data_file.md5}"'})

    async def _copy_object(
        self, request: Request, principal: Principal, parts: tuple[str, ...]
    ) -> Response:
        source = unquote(request.headers["x-amz-copy-source"].split("?", 1)[0]).lstrip("/")
        src_bucket, _, src_key = source.partition("/")
        if src_bucket not in principal.destinations:
            raise S3Error("NoSuchBucket", f"no bucket {src_bucket!r}", 404)
        src_parts = self._object_parts(src_bucket, src_key)
        download = await asyncio.to_thread(self.fs.open_read, principal, src_parts)
        result = await self.fs.upload(principal, parts, _async_chunks(download.chunks()))
        data_file = result.data_file
        return _xml(
            f'<CopyObjectResult xmlns="{NS}"><LastModified>{_iso(data_file.arrived)}</LastModified>'
            f'<ETag>"{data_file.md5}"</ETag></CopyObjectResult>'
        )

    async def _delete_objects(
        self, request: Request, principal: Principal, signed: SignedRequest, bucket: str
    ) -> Response:
        body = b"".join([chunk async for chunk in self._body(request, signed)])
        try:
            root = ET.fromstring(body)
        except ET.ParseError as exc:
            raise S3Error("MalformedXML", "the Delete request is not valid XML", 400) from exc
        quiet = (root.findtext(f"{{{NS}}}Quiet") or root.findtext("Quiet") or "").lower() == "true"
        done, failed = [], []
        for obj in list(root.iter(f"{{{NS}}}Object")) + list(root.iter("Object")):
            key = obj.findtext(f"{{{NS}}}Key") or obj.findtext("Key") or ""
            try:
                await asyncio.to_thread(self.fs.delete, principal, self._object_parts(bucket, key))
                done.append(key)
            except NotFound:
                done.append(key)
            except (EcpdsError, S3Error) as exc:
                failed.append((key, str(exc)))
        deleted = (
            "" if quiet else "".join(f"<Deleted><Key>{escape(k)}</Key></Deleted>" for k in done)
        )
        errors = "".join(
            f"<Error><Key>{escape(k)}</Key><Code>AccessDenied</Code>"
            f"<Message>{escape(m)}</Message></Error>"
            for k, m in failed
        )
        return _xml(f'<DeleteResult xmlns="{NS}">{deleted}{errors}</DeleteResult>')

    # --- multipart --------------------------------------------------------------------------

    async def _create_multipart(
        self, principal: Principal, bucket: str, key: str, parts: tuple[str, ...]
    ) -> Response:
        self.fs.check_upload(principal, parts)
        upload_id = await asyncio.to_thread(self.uploads.create, principal.name, parts)
        return _xml(
            f'<InitiateMultipartUploadResult xmlns="{NS}"><Bucket>{escape(bucket)}</Bucket>'
            f"<Key>{escape(key)}</Key><UploadId>{upload_id}</UploadId>"
            "</InitiateMultipartUploadResult>"
        )

    async def _upload(self, principal: Principal, upload_id: str, parts: tuple[str, ...]) -> str:
        """`upload_id`, checked to be an upload of this user to this key."""
        manifest = await asyncio.to_thread(self.uploads.manifest, upload_id)
        if manifest is None:
            raise S3Error("NoSuchUpload", f"no multipart upload {upload_id!r}", 404)
        if manifest.user != principal.name or manifest.parts != parts:
            raise S3Error("NoSuchUpload", f"no multipart upload {upload_id!r} for this key", 404)
        return upload_id

    async def _upload_part(
        self,
        request: Request,
        principal: Principal,
        signed: SignedRequest,
        parts: tuple[str, ...],
        params: dict[str, str],
    ) -> Response:
        upload_id = await self._upload(principal, params["uploadId"], parts)
        try:
            number = int(params.get("partNumber", ""))
        except ValueError as exc:
            raise S3Error("InvalidArgument", "partNumber must be a number", 400) from exc
        if not 1 <= number <= 10000:
            raise S3Error("InvalidArgument", "partNumber must be between 1 and 10000", 400)
        chunks = _blocking_chunks(self._body(request, signed), asyncio.get_running_loop())
        md5 = await asyncio.to_thread(self.uploads.put_part, upload_id, number, chunks)
        return Response(status_code=200, headers={"ETag": f'"{md5}"'})

    async def _complete_multipart(
        self,
        request: Request,
        principal: Principal,
        parts: tuple[str, ...],
        params: dict[str, str],
    ) -> Response:
        upload_id = await self._upload(principal, params["uploadId"], parts)
        body = await request.body()
        try:
            root = ET.fromstring(body)
        except ET.ParseError as exc:
            raise S3Error("MalformedXML", "the part list is not valid XML", 400) from exc
        received = {
            (p.number, p.md5): p for p in await asyncio.to_thread(self.uploads.parts, upload_id)
        }
        chosen = []
        previous = 0
        for part in list(root.iter(f"{{{NS}}}Part")) + list(root.iter("Part")):
            number = int(part.findtext(f"{{{NS}}}PartNumber") or part.findtext("PartNumber") or 0)
            etag = (part.findtext(f"{{{NS}}}ETag") or part.findtext("ETag") or "").strip('"')
            if number <= previous:
                raise S3Error("InvalidPartOrder", "parts must be listed in ascending order", 400)
            if (number, etag) not in received:
                raise S3Error("InvalidPart", f"part {number} was not uploaded as listed", 400)
            chosen.append(received[(number, etag)])
            previous = number
        if not chosen:
            raise S3Error("MalformedXML", "the part list is empty", 400)
        chunks = _async_chunks(self.uploads.read(upload_id, chosen))
        result = await self.fs.upload(principal, parts, chunks)
        await asyncio.to_thread(self.uploads.remove, upload_id)
        bucket, key = parts[0], "/".join(parts[1:])
        return _xml(
            f'<CompleteMultipartUploadResult xmlns="{NS}"><Bucket>{escape(bucket)}</Bucket>'
            f'<Key>{escape(key)}</Key><ETag>"{result.data_file.md5}"</ETag>'
            "</CompleteMultipartUploadResult>"
        )


def _parse_range(header: str, size: int) -> tuple[int, int]:
    unit, _, spec = header.partition("=")
    first, _, last = spec.partition("-")
    try:
        if unit.strip() != "bytes" or "," in spec:
            raise ValueError
        if not first:
            start, end = max(size - int(last), 0), size
        else:
            start = int(first)
            end = min(int(last) + 1, size) if last else size
    except ValueError as exc:
        raise S3Error("InvalidArgument", f"unsupported range {header!r}", 400) from exc
    if start >= size or start >= end:
        raise S3Error("InvalidRange", "the requested range is not satisfiable", 416)
    return start, end


def _blocking_chunks(
    chunks: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop
) -> Iterator[bytes]:
    """An async chunk stream read from a worker thread (the store's writes block)."""

    async def following() -> bytes:
        return await anext(chunks)

    while True:
        try:
            yield asyncio.run_coroutine_threadsafe(following(), loop).result()
        except StopAsyncIteration:
            return


async def _async_chunks(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """A blocking chunk iterator read in a worker thread, so the event loop keeps serving."""
    sentinel: Any = object()
    while (chunk := await asyncio.to_thread(next, chunks, sentinel)) is not sentinel:
        yield chunk
