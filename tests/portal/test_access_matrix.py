"""One access rule at every door: a user granted a destination directly, by policy, or not.

Each case is (door, grant, operation); every door must answer alike: allowed for a
direct or policy grant, refused as not found (as for a destination that does not exist)
otherwise. REST deletes are admin-only for everyone, so REST has no delete case.
"""

from __future__ import annotations

import asyncio
import ftplib
import io
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncssh
import boto3
import httpx
import paho.mqtt.client as paho
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from typer.testing import CliRunner

from ecpds.cli.main import app as main_app
from ecpds.core.devserver import free_port
from ecpds.core.settings import Settings

from .conftest import served_portal

PASSWORD = "dana-password-1"
OTHER_PASSWORD = "erin-password-1"
GRANTS = {"direct": "d-direct", "policy": "d-policy", "none": "d-none"}
ALLOWED, REFUSED = "allowed", "refused as not found"


class Doors:
    """A running portal and the clients that reach it as user dana."""

    def __init__(self, settings: Settings, admin: httpx.Client, keys: dict[str, str]) -> None:
        self.settings = settings
        self.admin = admin
        self.keys = keys
        self.base = f"https://127.0.0.1:{settings.https_port}"

    def seed(self, destination: str, name: str) -> str:
        made = self.admin.put(f"{self.base}/data/{destination}/{name}", content=b"seed")
        assert made.status_code == 201, made.text
        return str(made.json()["id"])

    def api(self, user: str = "dana", password: str = PASSWORD) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.base}/api/v1", auth=(user, password), verify=False, timeout=30
        )


@pytest.fixture(scope="module")
def doors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Doors]:
    home = tmp_path_factory.mktemp("matrix") / "var"
    with (
        served_portal(home, f"127.0.0.1:{free_port()}") as (settings, login),
        httpx.Client(auth=login, verify=False, timeout=30) as admin,
    ):
        api = f"https://127.0.0.1:{settings.https_port}/api/v1"
        for destination in GRANTS.values():
            made = admin.post(
                f"{api}/destinations",
                json={
                    "name": destination,
                    "notification": {"notify": "store", "topic": f"ecpds/{destination}/{{target}}"},
                },
            )
            assert made.status_code == 201, made.text
        user = {"name": "dana", "password": PASSWORD, "destinations": [GRANTS["direct"]]}
        assert admin.post(f"{api}/users", json=user).status_code == 201
        other = {"name": "erin", "password": OTHER_PASSWORD, "destinations": [GRANTS["none"]]}
        assert admin.post(f"{api}/users", json=other).status_code == 201
        policy = {"name": "p1", "destinations": [GRANTS["policy"]], "users": ["dana"]}
        assert admin.post(f"{api}/policies", json=policy).status_code == 201
        keys = admin.post(f"{api}/users/dana/keys").json()
        yield Doors(settings, admin, keys)


def _status(response: httpx.Response, ok: int) -> str:
    if response.status_code == ok:
        return ALLOWED
    assert response.status_code == 404, response.text
    return REFUSED


def rest(doors: Doors, destination: str, operation: str) -> str:
    with doors.api() as api:
        if operation == "list":
            listed = api.get("/files", params={"destination": destination})
            assert listed.status_code == 200, listed.text
            # The files of a destination the caller does not reach are not disclosed.
            return ALLOWED if any(f["name"] == "seed.txt" for f in listed.json()) else REFUSED
        if operation == "get":
            seeded = doors.seed(destination, f"get-{uuid.uuid4().hex[:6]}.txt")
            return _status(api.get(f"/files/{seeded}/content"), 200)
        name = f"rest-{uuid.uuid4().hex[:6]}.txt"
        url = f"/destinations/{destination}/files"
        return _status(api.post(url, params={"name": name}, content=b"x"), 201)


def cli(doors: Doors, destination: str, operation: str, tmp: Path) -> str:
    assert operation == "put"
    local = tmp / f"cli-{uuid.uuid4().hex[:6]}.txt"
    local.write_bytes(b"via the cli")
    env = {
        "ECPDS_API_URL": f"{doors.base}/api/v1",
        "ECPDS_API_USER": "dana",
        "ECPDS_API_PASSWORD": PASSWORD,
    }
    result = CliRunner().invoke(main_app, ["put", str(local), "-d", destination], env=env)
    if result.exit_code == 0:
        return ALLOWED
    assert "404" in result.output or "unknown destination" in result.output, result.output
    return REFUSED


def data(doors: Doors, destination: str, operation: str) -> str:
    with httpx.Client(auth=("dana", PASSWORD), verify=False, timeout=30) as web:
        url = f"{doors.base}/data/{destination}/"
        if operation == "list":
            return _status(web.get(url, params={"format": "json"}), 200)
        if operation == "get":
            return _status(web.get(url + "seed.txt"), 200)
        if operation == "put":
            return _status(web.put(url + f"web-{uuid.uuid4().hex[:6]}.txt", content=b"x"), 201)
        name = f"del-{uuid.uuid4().hex[:6]}.txt"
        doors.seed(destination, name)
        return _status(web.delete(url + name), 204)


def s3(doors: Doors, destination: str, operation: str) -> str:
    client = boto3.client(
        "s3",
        endpoint_url=f"https://127.0.0.1:{doors.settings.s3_port}",
        aws_access_key_id=doors.keys["access_key_id"],
        aws_secret_access_key=doors.keys["secret_access_key"],
        region_name="us-east-1",
        verify=False,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    try:
        if operation == "list":
            client.list_objects_v2(Bucket=destination)
        elif operation == "get":
            client.get_object(Bucket=destination, Key="seed.txt")["Body"].read()
        elif operation == "put":
            client.put_object(Bucket=destination, Key=f"s3-{uuid.uuid4().hex[:6]}", Body=b"x")
        else:
            name = f"del-{uuid.uuid4().hex[:6]}.txt"
            doors.seed(destination, name)
            client.delete_object(Bucket=destination, Key=name)
    except ClientError as exc:
        assert exc.response["Error"]["Code"] in ("NoSuchBucket", "NoSuchKey"), exc.response
        return REFUSED
    return ALLOWED


def ftp(doors: Doors, destination: str, operation: str) -> str:
    with ftplib.FTP() as session:
        session.connect("127.0.0.1", doors.settings.ftp_port, timeout=30)
        session.login("dana", PASSWORD)
        try:
            if operation == "list":
                session.nlst(f"/{destination}")
            elif operation == "get":
                session.retrbinary(f"RETR /{destination}/seed.txt", lambda _: None)
            elif operation == "put":
                name = f"/{destination}/ftp-{uuid.uuid4().hex[:6]}.txt"
                session.storbinary(f"STOR {name}", io.BytesIO(b"x"))
            else:
                name = f"del-{uuid.uuid4().hex[:6]}.txt"
                doors.seed(destination, name)
                session.delete(f"/{destination}/{name}")
        except ftplib.error_perm as exc:
            assert str(exc).startswith("550") and "destination" in str(exc), exc
            return REFUSED
    return ALLOWED


def sftp(doors: Doors, destination: str, operation: str) -> str:
    async def run() -> str:
        async with (
            asyncssh.connect(
                "127.0.0.1", doors.settings.sftp_port, username="dana", password=PASSWORD,
                known_hosts=None, client_keys=None,
            ) as conn,
            conn.start_sftp_client() as client,
        ):  # fmt: skip
            try:
                if operation == "list":
                    await client.listdir(f"/{destination}")
                elif operation == "get":
                    async with client.open(f"/{destination}/seed.txt", "rb") as handle:
                        await handle.read()
                elif operation == "put":
                    name = f"/{destination}/sftp-{uuid.uuid4().hex[:6]}.txt"
                    async with client.open(name, "wb") as handle:
                        await handle.write(b"x")
                else:
                    name = f"del-{uuid.uuid4().hex[:6]}.txt"
                    await asyncio.to_thread(doors.seed, destination, name)
                    await client.remove(f"/{destination}/{name}")
            except asyncssh.SFTPNoSuchFile:
                return REFUSED
        return ALLOWED

    return asyncio.run(run())


def mqtt(doors: Doors, destination: str, operation: str) -> str:
    assert operation == "subscribe"
    granted: list[int] = []
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"dana-{uuid.uuid4().hex}")
    client.username_pw_set("dana", PASSWORD)

    def on_subscribe(_c: object, _u: object, _mid: int, codes: list, _p: object) -> None:
        granted.extend(int(getattr(code, "value", code)) for code in codes)

    client.on_subscribe = on_subscribe
    client.connect("127.0.0.1", doors.settings.mqtt_port)
    client.loop_start()
    try:
        result, _ = client.subscribe(f"ecpds/{destination}/#", qos=1)
        assert result == paho.MQTT_ERR_SUCCESS
        for _ in range(600):
            if granted:
                break
            asyncio.run(asyncio.sleep(0.05))
    finally:
        client.loop_stop()
        client.disconnect()
    assert len(granted) == 1, "the broker did not answer the subscription"
    return REFUSED if granted[0] >= 0x80 else ALLOWED


DOORS: dict[str, tuple[Callable[..., str], tuple[str, ...]]] = {
    "rest": (rest, ("list", "get", "put")),
    "cli": (cli, ("put",)),
    "data": (data, ("list", "get", "put", "delete")),
    "s3": (s3, ("list", "get", "put", "delete")),
    "ftp": (ftp, ("list", "get", "put", "delete")),
    "sftp": (sftp, ("list", "get", "put", "delete")),
    "mqtt": (mqtt, ("subscribe",)),
}
CASES = [
    pytest.param(door, grant, operation, id=f"{door}-{grant}-{operation}")
    for door, (_, operations) in DOORS.items()
    for grant in GRANTS
    for operation in operations
]


@pytest.fixture(scope="module")
def seeded(doors: Doors) -> Doors:
    for destination in GRANTS.values():
        doors.seed(destination, "seed.txt")
    return doors


@pytest.mark.parametrize(("door", "grant", "operation"), CASES)
def test_every_door_answers_alike(
    seeded: Doors, door: str, grant: str, operation: str, tmp_path: Path
) -> None:
    run, _ = DOORS[door]
    args = (seeded, GRANTS[grant], operation) + ((tmp_path,) if door == "cli" else ())
    expected = REFUSED if grant == "none" else ALLOWED
    assert run(*args) == expected, f"{door} {operation} with a {grant} grant"


def test_reused_reqid_answers_only_within_the_callers_destinations(seeded: Doors) -> None:
    reqid = f"req-{uuid.uuid4().hex}"
    with seeded.api() as dana:
        first = dana.post(
            f"/destinations/{GRANTS['direct']}/files",
            params={"name": "once.txt", "reqid": reqid},
            content=b"first",
        )
        assert first.status_code == 201, first.text
        again = dana.post(
            f"/destinations/{GRANTS['direct']}/files",
            params={"name": "once.txt", "reqid": reqid},
            content=b"first",
        )
        assert again.json()["id"] == first.json()["id"]
    with seeded.api("erin", OTHER_PASSWORD) as erin:
        fresh = f"req-{uuid.uuid4().hex}"
        answers = [
            erin.post(
                f"/destinations/{GRANTS['direct']}/files",
                params={"name": "once.txt", "reqid": r},
                content=b"other",
            )
            for r in (reqid, fresh)
        ]
    assert [a.status_code for a in answers] == [404, 404]
    assert (
        answers[0].json()
        == answers[1].json()
        == {"detail": f"unknown destination {GRANTS['direct']!r}"}
    )
    assert first.json()["id"] not in answers[0].text
