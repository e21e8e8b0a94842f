"""Two S3 doors over one catalog and store: a multipart upload goes through either replica.

Each replica has its own Store object (its own fsspec instance and caches), as two portal
processes would; the store is a local folder or a bucket on moto S3.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from botocore.client import BaseClient
from botocore.exceptions import ClientError
from sqlalchemy import Engine
from sqlmodel import select

from ecpds.core.db import session_scope
from ecpds.core.devserver import free_port, wait_for_port
from ecpds.core.models import DataFile
from ecpds.core.store import Location, Store
from ecpds.portal.s3.app import S3Gateway
from ecpds.portal.s3.multipart import FOLDER
from ecpds.portal.vfs import PortalFS

from .conftest import LoopThread, Portal
from .test_s3 import boto

PART = 5 * 1024 * 1024  # S3's smallest part but the last


@pytest.fixture
def catalog_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'catalog.db'}"


@pytest.fixture(params=["local", "s3"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A builder of fresh Location objects on one place: each replica gets its own."""
    if request.param == "local":
        return lambda: Location(str(tmp_path / "store"))
    s3_server = request.getfixturevalue("s3_server")
    bucket = s3_server.bucket()
    return lambda: Location(
        f"s3://{bucket}/store",
        key=s3_server.access_key_id,
        secret=s3_server.secret_access_key,
        client_kwargs={"endpoint_url": s3_server.endpoint, "region_name": s3_server.region},
        skip_instance_cache=True,
    )


@pytest.fixture
def store(store_location: Any) -> Store:
    return Store([store_location()])


@contextmanager
def served(gateway: S3Gateway, loop_thread: LoopThread) -> Iterator[str]:
    port = free_port()
    config = uvicorn.Config(
        gateway, host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    running = loop_thread.submit(server.serve())
    wait_for_port("127.0.0.1", port, timeout=20)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        running.result(20)


@pytest.fixture
def replicas(
    portal: Portal, engine: Engine, store_location: Any, loop_thread: LoopThread
) -> Iterator[tuple[BaseClient, BaseClient, S3Gateway]]:
    """alice's boto3 clients on replica one and replica two, and replica two's gateway."""
    second = S3Gateway(PortalFS(engine, Store([store_location()])), portal.box)
    with (
        served(S3Gateway(portal.fs, portal.box), loop_thread) as one,
        served(second, loop_thread) as two,
    ):
        yield (
            boto(one, portal.alice_key_id, portal.alice_secret),
            boto(two, portal.alice_key_id, portal.alice_secret),
            second,
        )


def test_parts_sent_to_two_replicas_make_one_object(
    replicas: tuple[BaseClient, BaseClient, S3Gateway], portal: Portal
) -> None:
    one, two, _ = replicas
    chunks = [os.urandom(PART), os.urandom(PART), os.urandom(1234)]
    upload = one.create_multipart_upload(Bucket="alpha", Key="big.grib")["UploadId"]
    etags = []
    for number, (client, body) in enumerate(zip([one, two, one], chunks, strict=True), 1):
        sent = client.upload_part(
            Bucket="alpha", Key="big.grib", UploadId=upload, PartNumber=number, Body=body
        )
        assert sent["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
        etags.append(sent["ETag"])
    # A temporary name inside an upload is not a partial object.
    portal.store.primary.put(f"{FOLDER}/{upload}", "left", [b"x"])
    partial = portal.store.primary.path(f"{FOLDER}/{upload}/part-00009.part-0000")
    portal.store.primary.fs.pipe_file(partial, b"x")
    assert portal.store.partials() == []
    two.complete_multipart_upload(
        Bucket="alpha",
        Key="big.grib",
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]},
    )
    whole = b"".join(chunks)
    with session_scope(portal.engine) as session:
        assert session.exec(select(DataFile.md5)).one() == hashlib.md5(whole).hexdigest()
    assert one.get_object(Bucket="alpha", Key="big.grib")["Body"].read() == whole
    assert portal.store.primary.names(FOLDER) == []


def test_abort_and_purge_from_the_other_replica(
    replicas: tuple[BaseClient, BaseClient, S3Gateway], portal: Portal
) -> None:
    one, two, second = replicas
    upload = one.create_multipart_upload(Bucket="alpha", Key="dropped.bin")["UploadId"]
    one.upload_part(Bucket="alpha", Key="dropped.bin", UploadId=upload, PartNumber=1, Body=b"x")
    two.abort_multipart_upload(Bucket="alpha", Key="dropped.bin", UploadId=upload)
    with pytest.raises(ClientError) as gone:
        one.upload_part(Bucket="alpha", Key="dropped.bin", UploadId=upload, PartNumber=2, Body=b"y")
    assert gone.value.response["Error"]["Code"] == "NoSuchUpload"
    assert portal.store.primary.names(FOLDER) == []

    left = one.create_multipart_upload(Bucket="alpha", Key="left.bin")["UploadId"]
    one.upload_part(Bucket="alpha", Key="left.bin", UploadId=left, PartNumber=1, Body=b"z")
    assert second.purge_stale_uploads(max_age=3600) == []
    assert second.purge_stale_uploads(max_age=-1) == [left]
    assert portal.store.primary.names(FOLDER) == []
