"""The whole portal process (`serve`): REST-managed users and keys, then all four front-ends."""

from __future__ import annotations

import asyncio
import ftplib
import hashlib
import io
import json
import os
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncssh
import boto3
import httpx
import pytest
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import ClientError
from typer.testing import CliRunner

from ecpds.cli.main import app as main_app
from ecpds.core.devserver import free_port, wait_for_port
from ecpds.core.settings import Settings
from ecpds.portal.server import serve

from .conftest import LoopThread

PASSWORD = "carol-password-1"


@pytest.fixture
def running(tmp_path: Path, loop_thread: LoopThread) -> Iterator[Settings]:
    settings = Settings(
        home=tmp_path / "var",
        https_port=free_port(),
        s3_port=free_port(),
        ftp_port=free_port(),
        sftp_port=free_port(),
        mqtt_port=free_port(),
        mqtts_port=free_port(),
        mqtt_ws_port=free_port(),
        temporal_address=f"127.0.0.1:{free_port()}",
    )
    stop = asyncio.Event()
    done = loop_thread.submit(serve(settings, stop))
    for port in (settings.https_port, settings.s3_port, settings.ftp_port, settings.sftp_port):
        wait_for_port("127.0.0.1", port, timeout=60)
    yield settings
    loop_thread.loop.call_soon_threadsafe(stop.set)
    done.result(30)


def mixed_downloads(running: Settings, s3: BaseClient) -> list[str]:
    def https() -> bytes:
        url = f"https://127.0.0.1:{running.https_port}/data/gamma/big.bin"
        return httpx.get(url, auth=("carol", PASSWORD), verify=False, timeout=60).content

    def over_s3() -> bytes:
        return bytes(s3.get_object(Bucket="gamma", Key="big.bin")["Body"].read())

    def over_ftp() -> bytes:
        got = bytearray()
        with ftplib.FTP() as ftp:
            ftp.connect("127.0.0.1", running.ftp_port, timeout=60)
            ftp.login("carol", PASSWORD)
            ftp.retrbinary("RETR /gamma/big.bin", got.extend)
        return bytes(got)

    def over_sftp() -> bytes:
        async def get() -> bytes:
            async with (
                asyncssh.connect(
                    "127.0.0.1", running.sftp_port, username="carol", password=PASSWORD,
                    known_hosts=None, client_keys=None,
                ) as conn,
                conn.start_sftp_client() as sftp,
                sftp.open("/gamma/big.bin", "rb") as handle,
            ):  # fmt: skip
                return bytes(await handle.read())

        return asyncio.run(get())

    clients = [https, over_s3, over_ftp, over_sftp] * 5
    with ThreadPoolExecutor(len(clients)) as pool:
        return [hashlib.md5(data).hexdigest() for data in pool.map(lambda f: f(), clients)]


def test_four_front_ends_one_portal(running: Settings) -> None:
    admin = tomllib.loads((running.home / "admin.toml").read_text())
    api = httpx.Client(
        base_url=f"https://127.0.0.1:{running.https_port}/api/v1",
        auth=(admin["api_user"], admin["api_password"]),
        verify=False,
        timeout=30,
    )
    assert api.post("/destinations", json={"name": "gamma"}).status_code == 201
    user = {"name": "carol", "password": PASSWORD, "destinations": ["gamma"]}
    assert api.post("/users", json=user).status_code == 201
    created = api.post("/users/carol/keys")
    assert created.status_code == 201, created.text
    keys = created.json()
    listed = api.get("/users/carol/keys").json()
    assert [k["access_key_id"] for k in listed] == [keys["access_key_id"]]

    with httpx.Client(verify=False, auth=("carol", PASSWORD), timeout=30) as web:
        base = f"https://127.0.0.1:{running.https_port}/data"
        assert web.put(f"{base}/gamma/day1/a.txt", content=b"via https").status_code == 201
        assert web.get(f"{base}/gamma/day1/a.txt").content == b"via https"
        assert api.put(f"{base}/gamma/day1/x.txt", content=b"admin").status_code == 201

    s3 = boto3.client(
        "s3",
        endpoint_url=f"https://127.0.0.1:{running.s3_port}",
        aws_access_key_id=keys["access_key_id"],
        aws_secret_access_key=keys["secret_access_key"],
        region_name="us-east-1",
        verify=False,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    assert s3.get_object(Bucket="gamma", Key="day1/a.txt")["Body"].read() == b"via https"
    s3.put_object(Bucket="gamma", Key="day1/b.txt", Body=b"via s3")

    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", running.ftp_port, timeout=30)
    ftp.login("carol", PASSWORD)
    ftp.storbinary("STOR /gamma/day1/c.txt", io.BytesIO(b"via ftp"))
    got = bytearray()
    ftp.retrbinary("RETR /gamma/day1/b.txt", got.extend)
    assert bytes(got) == b"via s3"
    ftp.quit()

    async def over_sftp() -> list[str]:
        async with (
            asyncssh.connect(
                "127.0.0.1", running.sftp_port, username="carol", password=PASSWORD,
                known_hosts=None, client_keys=None,
            ) as conn,
            conn.start_sftp_client() as sftp,
        ):  # fmt: skip
            async with sftp.open("/gamma/day1/c.txt", "rb") as handle:
                assert await handle.read() == b"via ftp"
            return sorted(await sftp.listdir("/gamma/day1"))

    names = asyncio.run(over_sftp())
    assert names == [".", "..", "a.txt", "b.txt", "c.txt", "x.txt"]

    # Twenty downloads at once, five per front-end, all of the same 2 MiB file.
    big = os.urandom(2 * 1024 * 1024)
    s3.put_object(Bucket="gamma", Key="big.bin", Body=big)
    assert mixed_downloads(running, s3) == [hashlib.md5(big).hexdigest()] * 20

    # A policy gives carol a second destination, on every front-end at once.
    assert api.post("/destinations", json={"name": "delta"}).status_code == 201
    policy = {"name": "ops", "destinations": ["delta"], "users": ["carol"]}
    assert api.post("/policies", json=policy).status_code == 201
    assert api.get("/policies/ops").json()["users"] == ["carol"]
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["delta", "gamma"]
    s3.put_object(Bucket="delta", Key="p.txt", Body=b"via policy")
    refused = api.post("/policies", json={"name": "bad", "destinations": ["nowhere"]})
    assert refused.status_code == 422 and "nowhere" in refused.json()["detail"]
    assert api.delete("/policies/ops").status_code == 204
    with pytest.raises(ClientError) as gone:
        s3.put_object(Bucket="delta", Key="q.txt", Body=b"x")
    assert gone.value.response["Error"]["Code"] == "NoSuchBucket"

    cli_env = {
        "ECPDS_API_URL": f"https://127.0.0.1:{running.https_port}/api/v1",
        "ECPDS_API_USER": admin["api_user"],
        "ECPDS_API_PASSWORD": admin["api_password"],
    }
    runner = CliRunner()
    made = runner.invoke(main_app, ["key", "create", "carol", "--json"], env=cli_env)
    assert made.exit_code == 0, made.output
    second = json.loads(made.output)["access_key_id"]
    listed_cli = runner.invoke(main_app, ["key", "list", "carol", "--json"], env=cli_env)
    assert {k["access_key_id"] for k in json.loads(listed_cli.output)} == {
        keys["access_key_id"],
        second,
    }
    assert runner.invoke(main_app, ["key", "delete", "carol", second], env=cli_env).exit_code == 0
    made = runner.invoke(
        main_app, ["policy", "create", "ops2", "-d", "gamma", "-u", "carol"], env=cli_env
    )
    assert made.exit_code == 0, made.output
    assert "ops2" in runner.invoke(main_app, ["policy", "list"], env=cli_env).output
    wrong = runner.invoke(main_app, ["key", "list", "nobody"], env=cli_env)
    assert wrong.exit_code != 0 and "nobody" in wrong.output and "Traceback" not in wrong.output

    assert api.delete(f"/users/carol/keys/{keys['access_key_id']}").status_code == 204
    with pytest.raises(ClientError) as revoked:
        s3.list_objects_v2(Bucket="gamma")
    assert revoked.value.response["Error"]["Code"] == "InvalidAccessKeyId"
    api.close()
    s3.close()
