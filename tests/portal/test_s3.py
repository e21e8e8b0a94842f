"""The S3 gateway with real clients: boto3 and s3fs over TLS, signatures checked by botocore."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import boto3
import httpx
import pytest
import s3fs
import uvicorn
from boto3.s3.transfer import TransferConfig
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.client import BaseClient
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from sqlmodel import select

from ecpds.core.db import session_scope
from ecpds.core.devserver import free_port, wait_for_port
from ecpds.core.models import DataFile, DataTransfer, TransferStatus
from ecpds.portal.access import login_password
from ecpds.portal.s3.app import S3Gateway
from ecpds.portal.s3.multipart import FOLDER

from .conftest import ALICE_PASSWORD, LoopThread, Portal


@pytest.fixture
def catalog_url(tmp_path: Path) -> str:
    """SQLite only: the catalog queries are the same as over HTTPS, which also runs on
    PostgreSQL; this keeps the suite's time down."""
    return f"sqlite:///{tmp_path / 'catalog.db'}"


@pytest.fixture
def s3_url(
    portal: Portal, loop_thread: LoopThread, certificate: tuple[Path, Path]
) -> Iterator[str]:
    gateway = S3Gateway(portal.fs, portal.box, "s3.test")
    port = free_port()
    config = uvicorn.Config(
        gateway,
        host="127.0.0.1",
        port=port,
        ssl_certfile=str(certificate[0]),
        ssl_keyfile=str(certificate[1]),
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    running = loop_thread.submit(server.serve())
    wait_for_port("127.0.0.1", port, timeout=20)
    yield f"https://127.0.0.1:{port}"
    server.should_exit = True
    running.result(20)


def boto(url: str, key_id: str, secret: str) -> BaseClient:
    return boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        verify=False,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
        ),
    )


@pytest.fixture
def alice_s3(s3_url: str, portal: Portal) -> BaseClient:
    return boto(s3_url, portal.alice_key_id, portal.alice_secret)


def code_of(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return exc.value.response["Error"]["Code"]


def test_boto3_objects(alice_s3: BaseClient, portal: Portal) -> None:
    payload = os.urandom(1_500_000)
    put = alice_s3.put_object(Bucket="alpha", Key="gfs/00/t2m.grib", Body=payload)
    assert put["ETag"] == f'"{hashlib.md5(payload).hexdigest()}"'
    assert [b["Name"] for b in alice_s3.list_buckets()["Buckets"]] == ["alpha"]
    head = alice_s3.head_object(Bucket="alpha", Key="gfs/00/t2m.grib")
    assert head["ContentLength"] == len(payload)
    ranged = alice_s3.get_object(Bucket="alpha", Key="gfs/00/t2m.grib", Range="bytes=10-99")
    assert ranged["Body"].read() == payload[10:100]
    with session_scope(portal.engine) as session:
        assert session.exec(select(DataTransfer.status)).one() == TransferStatus.HOLD
    got = alice_s3.get_object(Bucket="alpha", Key="gfs/00/t2m.grib")
    assert got["Body"].read() == payload
    with session_scope(portal.engine) as session:
        assert session.exec(select(DataTransfer.status)).one() == TransferStatus.DONE

    copied = alice_s3.copy_object(
        Bucket="alpha",
        Key="copy/t2m.grib",
        CopySource={"Bucket": "alpha", "Key": "gfs/00/t2m.grib"},
    )
    assert copied["CopyObjectResult"]["ETag"] == put["ETag"]
    with pytest.raises(ClientError) as missing:
        alice_s3.get_object(Bucket="alpha", Key="nothing-here")
    assert code_of(missing) == "NoSuchKey"
    alice_s3.delete_object(Bucket="alpha", Key="copy/t2m.grib")
    keys = [o["Key"] for o in alice_s3.list_objects_v2(Bucket="alpha").get("Contents", [])]
    assert keys == ["gfs/00/t2m.grib"]


def test_boto3_listing_pagination_and_bulk_delete(alice_s3: BaseClient) -> None:
    for name in ["a/1", "a/2", "b/1", "c", "d", "e"]:
        alice_s3.put_object(Bucket="alpha", Key=name, Body=name.encode())
    top = alice_s3.list_objects_v2(Bucket="alpha", Delimiter="/")
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["a/", "b/"]
    assert [o["Key"] for o in top["Contents"]] == ["c", "d", "e"]
    assert [
        o["Key"] for o in alice_s3.list_objects_v2(Bucket="alpha", Prefix="a/")["Contents"]
    ] == [
        "a/1",
        "a/2",
    ]
    pages = alice_s3.get_paginator("list_objects_v2").paginate(
        Bucket="alpha", Delimiter="/", PaginationConfig={"PageSize": 2}
    )
    seen = []
    for page in pages:
        seen += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        seen += [o["Key"] for o in page.get("Contents", [])]
    assert sorted(seen) == ["a/", "b/", "c", "d", "e"]
    flat = alice_s3.get_paginator("list_objects_v2").paginate(
        Bucket="alpha", PaginationConfig={"PageSize": 4}
    )
    assert [o["Key"] for page in flat for o in page["Contents"]] == [
        "a/1",
        "a/2",
        "b/1",
        "c",
        "d",
        "e",
    ]
    result = alice_s3.delete_objects(
        Bucket="alpha", Delete={"Objects": [{"Key": "a/1"}, {"Key": "c"}]}
    )
    assert sorted(d["Key"] for d in result["Deleted"]) == ["a/1", "c"]
    left = [o["Key"] for o in alice_s3.list_objects_v2(Bucket="alpha")["Contents"]]
    assert left == ["a/2", "b/1", "d", "e"]


def test_boto3_multipart_upload(alice_s3: BaseClient, portal: Portal, tmp_path: Path) -> None:
    source = tmp_path / "big.nc"
    source.write_bytes(os.urandom(12 * 1024 * 1024 + 5))
    config = TransferConfig(
        multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024
    )
    alice_s3.upload_file(str(source), "alpha", "big.nc", Config=config)
    back = tmp_path / "back.nc"
    alice_s3.download_file("alpha", "big.nc", str(back), Config=config)
    assert back.read_bytes() == source.read_bytes()
    with session_scope(portal.engine) as session:
        data_file = session.exec(select(DataFile)).one()
        assert data_file.md5 == hashlib.md5(source.read_bytes()).hexdigest()
    assert portal.store.primary.names(FOLDER) == []

    upload = alice_s3.create_multipart_upload(Bucket="alpha", Key="dropped.bin")
    alice_s3.upload_part(
        Bucket="alpha", Key="dropped.bin", UploadId=upload["UploadId"], PartNumber=1, Body=b"x"
    )
    alice_s3.abort_multipart_upload(Bucket="alpha", Key="dropped.bin", UploadId=upload["UploadId"])
    assert portal.store.primary.names(FOLDER) == []
    left = alice_s3.create_multipart_upload(Bucket="alpha", Key="left.bin")["UploadId"]
    gateway = S3Gateway(portal.fs, portal.box)
    assert gateway.purge_stale_uploads(max_age=3600) == []
    assert gateway.purge_stale_uploads(max_age=-1) == [left]
    with pytest.raises(ClientError) as gone:
        alice_s3.head_object(Bucket="alpha", Key="dropped.bin")
    assert gone.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_presigned_urls(alice_s3: BaseClient) -> None:
    alice_s3.put_object(Bucket="alpha", Key="shared.txt", Body=b"presigned content")
    url = alice_s3.generate_presigned_url(
        "get_object", Params={"Bucket": "alpha", "Key": "shared.txt"}, ExpiresIn=60
    )
    with httpx.Client(verify=False) as http:
        assert http.get(url).content == b"presigned content"
        tampered = url.replace("shared.txt", "shared.txX")
        refused = http.get(tampered)
        assert refused.status_code == 403
        assert b"<Code>SignatureDoesNotMatch</Code>" in refused.content
        put_url = alice_s3.generate_presigned_url(
            "put_object", Params={"Bucket": "alpha", "Key": "up.txt"}, ExpiresIn=60
        )
        assert http.put(put_url, content=b"uploaded by URL").status_code == 200
    assert alice_s3.get_object(Bucket="alpha", Key="up.txt")["Body"].read() == b"uploaded by URL"


def test_virtual_hosted_style(s3_url: str, portal: Portal, alice_s3: BaseClient) -> None:
    alice_s3.put_object(Bucket="alpha", Key="dir/v.txt", Body=b"virtual host")
    port = s3_url.rsplit(":", 1)[1]
    virtual = boto3.client(
        "s3",
        endpoint_url=f"https://s3.test:{port}",
        aws_access_key_id=portal.alice_key_id,
        aws_secret_access_key=portal.alice_secret,
        region_name="us-east-1",
        config=Config(signature_version="s3v4", s3={"addressing_style": "virtual"}),
    )
    url = virtual.generate_presigned_url(
        "get_object", Params={"Bucket": "alpha", "Key": "dir/v.txt"}, ExpiresIn=60
    )
    assert url.startswith(f"https://alpha.s3.test:{port}/dir/v.txt?")
    # The name does not resolve here: connect to 127.0.0.1 and send the Host it was made for.
    local = url.replace(f"alpha.s3.test:{port}", f"127.0.0.1:{port}")
    with httpx.Client(verify=False) as http:
        got = http.get(local, headers={"host": f"alpha.s3.test:{port}"})
    assert got.status_code == 200 and got.content == b"virtual host"


def test_s3_users_are_kept_apart(s3_url: str, portal: Portal, alice_s3: BaseClient) -> None:
    alice_s3.put_object(Bucket="alpha", Key="private.txt", Body=b"alice only")
    bob = boto(s3_url, portal.bob_key_id, portal.bob_secret)
    assert [b["Name"] for b in bob.list_buckets()["Buckets"]] == ["beta"]
    for call in (
        lambda: bob.get_object(Bucket="alpha", Key="private.txt"),
        lambda: bob.list_objects_v2(Bucket="alpha"),
        lambda: bob.put_object(Bucket="alpha", Key="evil.txt", Body=b"x"),
        lambda: bob.copy_object(
            Bucket="beta", Key="stolen", CopySource={"Bucket": "alpha", "Key": "private.txt"}
        ),
        lambda: bob.get_object(Bucket="beta", Key="../alpha/private.txt"),
        lambda: bob.get_object(Bucket="beta", Key="%2e%2e/alpha/private.txt"),
        lambda: bob.put_object(Bucket="beta", Key="..\\alpha\\evil.txt", Body=b"x"),
    ):
        with pytest.raises(ClientError) as refused:
            call()
        assert code_of(refused) in ("NoSuchBucket", "InvalidArgument", "AccessDenied"), code_of(
            refused
        )
    forged = boto(s3_url, portal.alice_key_id, "not-the-secret")
    with pytest.raises(ClientError) as bad_signature:
        forged.list_objects_v2(Bucket="alpha")
    assert code_of(bad_signature) == "SignatureDoesNotMatch"
    unknown = boto(s3_url, "ECUNKNOWNKEY", "whatever")
    with pytest.raises(ClientError) as bad_key:
        unknown.list_buckets()
    assert code_of(bad_key) == "InvalidAccessKeyId"
    with httpx.Client(verify=False) as http:
        anonymous = http.get(f"{s3_url}/alpha/private.txt")
        assert anonymous.status_code == 403
    with session_scope(portal.engine) as session:
        assert len(session.exec(select(DataFile)).all()) == 1


def test_s3fs(s3_url: str, portal: Portal) -> None:
    fs = s3fs.S3FileSystem(
        key=portal.alice_key_id,
        secret=portal.alice_secret,
        client_kwargs={"endpoint_url": s3_url, "verify": False, "region_name": "us-east-1"},
        config_kwargs={"s3": {"addressing_style": "path"}},
        skip_instance_cache=True,
    )
    payload = os.urandom(300_000)
    fs.pipe("alpha/ecmwf/an.grib", payload)
    assert fs.cat("alpha/ecmwf/an.grib") == payload
    assert fs.ls("alpha", detail=False) == ["alpha/ecmwf"]
    info = fs.info("alpha/ecmwf/an.grib")
    assert info["size"] == len(payload)
    with fs.open("alpha/ecmwf/an.grib", "rb") as handle:
        handle.seek(1000)
        assert handle.read(10) == payload[1000:1010]
    fs.rm("alpha/ecmwf/an.grib")
    fs.invalidate_cache()
    assert not fs.exists("alpha/ecmwf/an.grib")


def _signed_chunked_put(
    url: str, key_id: str, secret: str, chunks: list[bytes], tamper: bool = False
) -> httpx.Response:
    """A PUT as the SDKs that sign every chunk send it (STREAMING-AWS4-HMAC-SHA256-PAYLOAD)."""
    timestamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    scope = f"{timestamp[:8]}/us-east-1/s3/aws4_request"
    host = url.split("/")[2]
    headers = {
        "host": host,
        "x-amz-date": timestamp,
        "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "content-encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(sum(len(c) for c in chunks)),
    }
    request = AWSRequest(method="PUT", url=url, headers=headers)
    request.context["timestamp"] = timestamp
    signer = S3SigV4Auth(Credentials(key_id, secret), "s3", "us-east-1")
    seed = signer.signature(
        signer.string_to_sign(request, signer.canonical_request(request)), request
    )
    signing_key = ("AWS4" + secret).encode()
    for part in scope.split("/"):
        signing_key = hmac.new(signing_key, part.encode(), hashlib.sha256).digest()
    body, previous = b"", seed
    for chunk in [*chunks, b""]:
        to_sign = "\n".join(
            [
                "AWS4-HMAC-SHA256-PAYLOAD",
                timestamp,
                scope,
                previous,
                hashlib.sha256(b"").hexdigest(),
                hashlib.sha256(chunk).hexdigest(),
            ]
        )
        previous = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
        sent = bytes([chunk[0] ^ 1]) + chunk[1:] if tamper and chunk else chunk
        body += f"{len(chunk):x};chunk-signature={previous}\r\n".encode() + sent + b"\r\n"
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={key_id}/{scope}, "
        f"SignedHeaders={';'.join(sorted(headers))}, Signature={seed}"
    )
    with httpx.Client(verify=False) as http:
        return http.put(url, content=body, headers=headers)


def test_signed_aws_chunked_upload(s3_url: str, portal: Portal, alice_s3: BaseClient) -> None:
    chunks = [os.urandom(65536), os.urandom(1000)]
    url = f"{s3_url}/alpha/chunked.bin"
    done = _signed_chunked_put(url, portal.alice_key_id, portal.alice_secret, chunks)
    assert done.status_code == 200, done.text
    assert alice_s3.get_object(Bucket="alpha", Key="chunked.bin")["Body"].read() == b"".join(chunks)
    forged = _signed_chunked_put(
        f"{s3_url}/alpha/forged.bin", portal.alice_key_id, "wrong-secret", chunks
    )
    assert forged.status_code == 403 and b"SignatureDoesNotMatch" in forged.content
    altered = _signed_chunked_put(
        f"{s3_url}/alpha/altered.bin", portal.alice_key_id, portal.alice_secret, chunks, True
    )
    assert altered.status_code == 403 and b"a chunk signature does not match" in altered.content
    with session_scope(portal.engine) as session:
        assert len(session.exec(select(DataFile)).all()) == 1
    assert portal.store.partials() == []


def test_a_folder_made_elsewhere_is_listed_as_a_common_prefix(s3_url: str, portal: Portal) -> None:
    """S3 has no folders: one made over FTP or SFTP shows only where a delimiter asks."""
    portal.fs.mkdir(login_password(portal.engine, "alice", ALICE_PASSWORD), ("alpha", "new", "in"))
    s3 = boto(s3_url, portal.alice_key_id, portal.alice_secret)
    top = s3.list_objects_v2(Bucket="alpha", Delimiter="/")
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["new/"]
    inside = s3.list_objects_v2(Bucket="alpha", Prefix="new/", Delimiter="/")
    assert [p["Prefix"] for p in inside["CommonPrefixes"]] == ["new/in/"]
    for listed in (top, inside, s3.list_objects_v2(Bucket="alpha")):
        assert "Contents" not in listed
