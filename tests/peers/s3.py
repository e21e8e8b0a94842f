"""A real S3 server (moto_server) on a free local port, checking request signatures.

The fixture creates an IAM user with an access key first, then switches moto's
authentication on, so a wrong secret key is refused as AWS would refuse it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ecpds.core.devserver import free_port, wait_for_port
from peers.conformance import Peer
from peers.process import PeerMissing, stop

REGION = "us-east-1"
ALLOW_ALL = (
    '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}'  # noqa: E501
)


@dataclass
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    region: str
    access_key_id: str
    secret_access_key: str
    ca_file: str | None = None  # the self-signed certificate of an https:// endpoint

    @property
    def credentials(self) -> dict[str, str]:
        return {"access_key_id": self.access_key_id, "secret_access_key": self.secret_access_key}

    def client(self):  # boto3 S3 client, for checks from the test side
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            verify=self.ca_file,
        )

    def bucket(self) -> str:
        """A fresh, empty bucket."""
        name = f"ecpds-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def options(self) -> dict[str, object]:
        return {"endpoint": self.endpoint, "region": self.region, "path_style": True}


def moto_server_command(port: int) -> list[str] | None:
    exe = Path(sys.executable).with_name("moto_server")
    if exe.exists():
        return [str(exe), "-H", "127.0.0.1", "-p", str(port)]
    found = shutil.which("moto_server")
    return [found, "-H", "127.0.0.1", "-p", str(port)] if found else None


def _iam_user(endpoint: str, ca_file: str | None) -> tuple[str, str]:
    """An access key with every permission, made while moto still accepts anything."""
    import boto3

    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",
        verify=ca_file,
    )
    iam.create_user(UserName="ecpds")
    iam.put_user_policy(UserName="ecpds", PolicyName="all", PolicyDocument=ALLOW_ALL)
    key = iam.create_access_key(UserName="ecpds")["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


@contextlib.contextmanager
def serve(folder: Path, tls: bool = False) -> Iterator[S3Server]:
    """moto_server on 127.0.0.1:<free port>, authentication on, one IAM user; over
    https with a self-signed certificate when `tls`."""
    port = free_port()
    command = moto_server_command(port)
    if command is None:
        raise PeerMissing("moto_server not installed (pip install 'moto[server]')")
    ca_file = None
    if tls:
        from peers.tls import self_signed

        cert, key = self_signed(folder)
        command += ["-c", str(cert), "-k", str(key)]
        ca_file = str(cert)
    log = (folder / "moto.log").open("wb")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        wait_for_port("127.0.0.1", port, timeout=60, proc=proc)
        endpoint = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        key_id, secret = _iam_user(endpoint, ca_file)
        verify = ssl.create_default_context(cafile=ca_file) if ca_file else True
        httpx.post(
            f"{endpoint}/moto-api/reset-auth", content=b"0", verify=verify
        ).raise_for_status()
        yield S3Server(endpoint, REGION, key_id, secret, ca_file)
    finally:
        stop(proc)
        log.close()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    try:
        with serve(tmp_path_factory.mktemp("moto")) as server:
            yield server
    except PeerMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture
def s3_tls_server(tmp_path: Path) -> Iterator[S3Server]:
    """moto_server over https with a certificate nobody trusts until told (`ca_file`)."""
    try:
        with serve(tmp_path, tls=True) as server:
            yield server
    except PeerMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture
def s3_peer(s3_server: S3Server) -> Peer:
    """A fresh bucket for the conformance suite; files go under `drop/`."""
    from botocore.exceptions import ClientError

    bucket, prefix = s3_server.bucket(), "drop/"
    client = s3_server.client()

    def read(target: str) -> bytes | None:
        try:
            return client.get_object(Bucket=bucket, Key=prefix + target)["Body"].read()
        except ClientError:
            return None

    def names() -> list[str]:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"][len(prefix) :] for page in pages for o in page.get("Contents", []))

    url = f"s3://{bucket}/drop"
    return Peer(
        url=url,
        options=s3_server.options(),
        credentials=s3_server.credentials,
        read=read,
        names=names,
        # Parts are at least 5 MiB, more than the suite's interrupted file has sent when it
        # breaks off, so that case restarts; tests/protocols/test_cloud.py resumes parts.
        resumable=False,
        bad_credentials={**s3_server.credentials, "secret_access_key": "not-the-secret"},
        unknown_host_url=url,
        refused_url=url,
        missing_container_url=f"s3://ecpds-missing-{uuid.uuid4().hex[:8]}/drop",
        error_options={
            "unknown_host": {"endpoint": "http://no-such-host.invalid:9000"},
            "refused": {"endpoint": f"http://127.0.0.1:{free_port()}"},
        },
    )
