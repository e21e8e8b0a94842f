"""AWS Signature V4 checks for the S3 gateway, recomputed with botocore's own signer.

Covers the Authorization header, presigned URLs (query parameters) and aws-chunked
bodies (seed-chained chunk signatures, or unsigned chunks with a checksum trailer).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import parse_qsl

from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

SIGV4_TIMESTAMP = "%Y%m%dT%H%M%SZ"
MAX_SKEW = timedelta(minutes=15)
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"

_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=([^,\s]+),\s*SignedHeaders=([^,\s]+),\s*Signature=([0-9a-f]{64})$"
)


class SignatureError(Exception):
    """A request whose signature cannot be accepted; `code` is the S3 error code."""

    def __init__(self, code: str, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass(frozen=True)
class SignedRequest:
    """What a verified signature vouches for: the key id, its scope and the payload hash."""

    access_key_id: str
    timestamp: str
    scope: str
    signature: str
    payload: str
    secret: str


@dataclass(frozen=True)
class Claim:
    """The parts of a request's signature known before the secret is looked up."""

    access_key_id: str
    date: str
    region: str
    service: str
    signed_headers: list[str]
    signature: str
    timestamp: str
    presigned: bool
    expires: int = 0


def read_claim(method: str, headers: dict[str, str], query: str) -> Claim | None:
    """The signature claimed by a request, or None for an anonymous one."""
    params = dict(parse_qsl(query, keep_blank_values=True))
    if "X-Amz-Signature" in params:
        if params.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256":
            raise SignatureError(
                "AuthorizationQueryParametersError", "only SigV4 is supported", 400
            )
        try:
            expires = int(params["X-Amz-Expires"])
            credential = params["X-Amz-Credential"]
            signed = params["X-Amz-SignedHeaders"]
            timestamp = params["X-Amz-Date"]
        except (KeyError, ValueError) as exc:
            raise SignatureError(
                "AuthorizationQueryParametersError", f"presigned URL lacks {exc}", 400
            ) from exc
        return _claim(credential, signed, params["X-Amz-Signature"], timestamp, True, expires)
    if "AWSAccessKeyId" in params:
        raise SignatureError("AccessDenied", "only SigV4 presigned URLs are supported (s3v4)")
    header = headers.get("authorization")
    if not header:
        return None
    match = _AUTH.match(header.strip())
    if match is None:
        raise SignatureError("AccessDenied", "only AWS4-HMAC-SHA256 authorization is supported")
    timestamp = headers.get("x-amz-date") or ""
    if not timestamp and "date" in headers:
        timestamp = parsedate_to_datetime(headers["date"]).strftime(SIGV4_TIMESTAMP)
    credential, signed, signature = match.groups()
    return _claim(credential, signed, signature, timestamp, False)


def _claim(
    credential: str, signed: str, signature: str, timestamp: str, presigned: bool, expires: int = 0
) -> Claim:
    pieces = credential.split("/")
    if len(pieces) != 5 or pieces[4] != "aws4_request":
        raise SignatureError("AuthorizationHeaderMalformed", f"bad credential {credential!r}", 400)
    key_id, date, region, service, _ = pieces
    if not timestamp or timestamp[:8] != date:
        raise SignatureError(
            "AuthorizationHeaderMalformed", "the date does not match the scope", 400
        )
    return Claim(
        access_key_id=key_id,
        date=date,
        region=region,
        service=service,
        signed_headers=signed.split(";"),
        signature=signature,
        timestamp=timestamp,
        presigned=presigned,
        expires=expires,
    )


def verify(
    claim: Claim,
    secret: str,
    *,
    method: str,
    url: str,
    query: str,
    headers: list[tuple[str, str]],
    now: datetime | None = None,
) -> SignedRequest:
    """Recompute the signature botocore would have made and compare it with the claim.

    `url` is scheme://host/raw-path (as sent, still percent-encoded); `headers` the
    received ones in order, so repeated headers join as the signer joined them.
    """
    now = now or datetime.now(UTC)
    try:
        signed_at = datetime.strptime(claim.timestamp, SIGV4_TIMESTAMP).replace(tzinfo=UTC)
    except ValueError as exc:
        raise SignatureError("AccessDenied", f"bad X-Amz-Date {claim.timestamp!r}") from exc
    if claim.presigned:
        if now > signed_at + timedelta(seconds=claim.expires):
            raise SignatureError("AccessDenied", "the presigned URL has expired")
    elif abs(now - signed_at) > MAX_SKEW:
        raise SignatureError("RequestTimeTooSkewed", "the request time is too far from ours")

    wanted = set(claim.signed_headers)
    if "host" not in wanted:
        raise SignatureError("AccessDenied", "the host header must be signed")
    request = AWSRequest(method=method, url=url)
    for name, value in headers:
        if name.lower() in wanted:
            # HTTPHeaders keeps repeats; the signer joins them with commas, as clients do.
            request.headers[name.lower()] = value
    params = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "X-Amz-Signature"]
    request.params = params
    request.context["timestamp"] = claim.timestamp
    credentials = Credentials(claim.access_key_id, secret)
    signer: S3SigV4Auth
    if claim.presigned:
        signer = S3SigV4QueryAuth(credentials, claim.service, claim.region, claim.expires)
        payload = UNSIGNED
    else:
        signer = S3SigV4Auth(credentials, claim.service, claim.region)
        payload = request.headers.get("x-amz-content-sha256") or ""
        if not payload:
            raise SignatureError("InvalidRequest", "x-amz-content-sha256 must be signed", 400)
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, claim.signature):
        raise SignatureError(
            "SignatureDoesNotMatch",
            "the request signature we calculated does not match the signature you provided",
        )
    return SignedRequest(
        access_key_id=claim.access_key_id,
        timestamp=claim.timestamp,
        scope=f"{claim.date}/{claim.region}/{claim.service}/aws4_request",
        signature=claim.signature,
        payload=payload,
        secret=secret,
    )


def _signing_key(signed: SignedRequest) -> bytes:
    key = ("AWS4" + signed.secret).encode()
    for part in signed.scope.split("/"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


async def decode_body(
    stream: AsyncIterator[bytes], signed: SignedRequest | None, headers: dict[str, str]
) -> AsyncIterator[bytes]:
    """The request body as the client meant it, checked against what the signature promised.

    Raises SignatureError at the end (before the store keeps anything) on a mismatch.
    """
    payload = signed.payload if signed else UNSIGNED
    if payload.startswith("STREAMING-") or "aws-chunked" in headers.get("content-encoding", ""):
        async for chunk in _aws_chunked(stream, signed, payload):
            yield chunk
        return
    md5 = hashlib.md5() if "content-md5" in headers else None
    sha = hashlib.sha256() if payload not in (UNSIGNED, "") else None
    async for chunk in stream:
        if not chunk:
            continue
        if sha:
            sha.update(chunk)
        if md5:
            md5.update(chunk)
        yield chunk
    if sha and sha.hexdigest() != payload:
        raise SignatureError(
            "XAmzContentSHA256Mismatch", "the body does not match x-amz-content-sha256", 400
        )
    if md5 and base64.b64encode(md5.digest()).decode() != headers["content-md5"].strip():
        raise SignatureError("BadDigest", "the body does not match Content-MD5", 400)


class _Reader:
    """Buffered reads over an async byte stream, for the aws-chunked framing."""

    def __init__(self, stream: AsyncIterator[bytes]) -> None:
        self._stream = stream
        self._buf = bytearray()

    async def _fill(self) -> bool:
        try:
            chunk = await self._stream.__anext__()
        except StopAsyncIteration:
            return False
        self._buf += chunk
        return True

    async def line(self) -> bytes:
        while (end := self._buf.find(b"\r\n")) < 0:
            if len(self._buf) > 64 * 1024 or not await self._fill():
                raise SignatureError("IncompleteBody", "aws-chunked framing is broken", 400)
        out = bytes(self._buf[:end])
        del self._buf[: end + 2]
        return out

    async def exactly(self, size: int) -> AsyncIterator[bytes]:
        while size > 0:
            if not self._buf and not await self._fill():
                raise SignatureError("IncompleteBody", "the body ended inside a chunk", 400)
            piece = bytes(self._buf[:size])
            del self._buf[: len(piece)]
            size -= len(piece)
            yield piece


async def _aws_chunked(
    stream: AsyncIterator[bytes], signed: SignedRequest | None, payload: str
) -> AsyncIterator[bytes]:
    reader = _Reader(stream)
    chained = payload in (STREAMING_SIGNED, STREAMING_SIGNED_TRAILER)
    if chained and signed is None:
        raise SignatureError("AccessDenied", "signed chunks need a signed request")
    previous = signed.signature if signed else ""
    key = _signing_key(signed) if (chained and signed) else b""
    crc = 0
    while True:
        header = (await reader.line()).decode("latin-1")
        size_text, _, extension = header.partition(";")
        try:
            size = int(size_text, 16)
        except ValueError as exc:
            raise SignatureError("IncompleteBody", f"bad chunk size {size_text!r}", 400) from exc
        sha = hashlib.sha256()
        async for piece in reader.exactly(size):
            sha.update(piece)
            crc = zlib.crc32(piece, crc)
            if piece:
                yield piece
        if chained and signed:
            claimed = extension.partition("chunk-signature=")[2].strip()
            to_sign = "\n".join(
                [
                    "AWS4-HMAC-SHA256-PAYLOAD",
                    signed.timestamp,
                    signed.scope,
                    previous,
                    EMPTY_SHA256,
                    sha.hexdigest(),
                ]
            )
            expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
            if not hmac.compare_digest(expected, claimed):
                raise SignatureError("SignatureDoesNotMatch", "a chunk signature does not match")
            previous = expected
        if size == 0:
            break
        if await reader.line() != b"":
            raise SignatureError("IncompleteBody", "a chunk is longer than announced", 400)
    trailers = {}
    while line := await reader.line():
        name, _, value = line.decode("latin-1").partition(":")
        trailers[name.strip().lower()] = value.strip()
    if "x-amz-checksum-crc32" in trailers:
        wanted = base64.b64encode(crc.to_bytes(4, "big")).decode()
        if trailers["x-amz-checksum-crc32"] != wanted:
            raise SignatureError("BadDigest", "the body does not match its CRC32 checksum", 400)
