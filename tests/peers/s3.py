"""A real S3 server (moto_server) on a free local port, checking request signatures.

The fixture creates an IAM user with an access key first, then switches moto's
authentication on, so a wrong secret key is refused as AWS would refuse it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ecpds.core.devserver import free_port, wait_for_port

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


def _iam_user(endpoint: str) -> tuple[str, str]:
    """An access key with every permission, made while moto still accepts anything."""
    import boto3

    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",
    )
    iam.create_user(UserName="ecpds")
    iam.put_user_policy(UserName="ecpds", PolicyName="all", PolicyDocument=ALLOW_ALL)
    key = iam.create_access_key(UserName="ecpds")["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto_server on 127.0.0.1:<free port>, authentication on, one IAM user."""
    port = free_port()
    command = moto_server_command(port)
    if command is None:
        pytest.skip("moto_server not installed (pip install 'moto[server]')")
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        wait_for_port("127.0.0.1", port, timeout=60, proc=proc)
        endpoint = f"http://127.0.0.1:{port}"
        key_id, secret = _iam_user(endpoint)
        httpx.post(f"{endpoint}/moto-api/reset-auth", content=b"0").raise_for_status()
        yield S3Server(endpoint, REGION, key_id, secret)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
