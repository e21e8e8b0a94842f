"""`ecpds listen` and the notification history against a served portal and its broker.

To control what the listener must hear (notifications published hours ago, some only in
the history, some only live, a corrupted checksum), the notifications here are made as
the outbox and its publisher make them: a published outbox row and the same payload
published on the embedded broker by an admin. test_end_to_end.py runs the real path.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import pytest
from portal.conftest import served_portal
from sqlalchemy import Engine

from ecpds.core.db import open_catalog, session_scope
from ecpds.core.devserver import free_port
from ecpds.core.models import Notification
from ecpds.core.settings import Settings

ALICE_PASSWORD = "alice-listens-1"
TIMEOUT = 90


@dataclass
class Site:
    """A served portal with destinations alpha (alice's) and beta, both announcing."""

    settings: Settings
    login: tuple[str, str]
    engine: Engine
    admin: httpx.Client
    publisher: paho.Client
    xdg: Path

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.settings.https_port}"

    def put(self, destination: str, target: str, data: bytes) -> None:
        made = self.admin.put(f"{self.base}/data/{destination}/{target}", content=data)
        assert made.status_code == 201, made.text

    def announce(
        self,
        destination: str,
        target: str,
        data: bytes,
        *,
        created: datetime | None = None,
        history: bool = True,
        live: bool = True,
        md5: str | None = None,
        metadata: dict[str, str] | None = None,
        wis2: bool = False,
    ) -> str:
        """One store notification: in the published history and/or on the broker."""
        message_id = str(uuid.uuid4())
        created = created or datetime.now(UTC)
        digest = md5 or hashlib.md5(data).hexdigest()
        url = f"{self.base}/data/{destination}/{target}"
        payload: dict[str, Any] = {
            "id": message_id,
            "event": "store",
            "destination": destination,
            "name": target.rsplit("/", 1)[-1],
            "target": target,
            "size": len(data),
            "md5": digest,
            "etag": f'"{digest}"',
            "metadata": metadata or {},
            "time": created.isoformat(),
            "expires": None,
            "data_file_id": None,
            "transfer_id": None,
            "urls": {"https": url},
        }
        if wis2:
            sha512 = base64.b64encode(hashlib.sha512(data).digest()).decode()
            payload = {
                "id": message_id,
                "conformsTo": ["http://wis.wmo.int/spec/wnm/1/conf/core"],
                "type": "Feature",
                "geometry": None,
                "properties": {
                    "data_id": f"{destination}/{target}",
                    "pubtime": created.isoformat(),
                    "datetime": created.isoformat(),
                    "integrity": {"method": "sha512", "value": sha512},
                },
                "links": [
                    {
                        "href": url,
                        "rel": "canonical",
                        "type": "application/octet-stream",
                        "length": len(data),
                    }
                ],
            }
        body = json.dumps(payload, separators=(",", ":")).encode()
        topic = f"{destination}/{target}"
        if history:
            with session_scope(self.engine) as session:
                session.add(
                    Notification(
                        message_id=message_id,
                        event="store",
                        destination=destination,
                        topic=topic,
                        payload=body,
                        content_type="application/json",
                        created=created,
                        pending=False,
                        published=datetime.now(UTC),
                    )
                )
        if live:
            self.publisher.publish(topic, body, qos=1).wait_for_publish(TIMEOUT)
        return message_id

    def env(self, user: str | None = None, password: str | None = None) -> dict[str, str]:
        env = {
            **os.environ,
            "XDG_STATE_HOME": str(self.xdg),
            "ECPDS_HOME": str(self.settings.home),
            "ECPDS_HTTPS_PORT": str(self.settings.https_port),
            "ECPDS_MQTT_PORT": str(self.settings.mqtt_port),
        }
        if user is not None and password is not None:
            env |= {"ECPDS_API_USER": user, "ECPDS_API_PASSWORD": password}
        return env


class Listener:
    """`ecpds listen` in its own process; started once it has subscribed."""

    def __init__(self, site: Site, *args: str, user: str | None = None, password: str = ""):
        command = [sys.executable, "-m", "ecpds.cli.main", "listen", *args]
        self.proc = subprocess.Popen(
            command,
            env=site.env(user, password if user else None),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        first = self.proc.stderr.readline()
        if not first.startswith("listening to "):
            self.proc.kill()
            pytest.fail(f"ecpds listen did not start: {first}{self.proc.stderr.read()}")

    def finish(self) -> tuple[int, str, str]:
        try:
            out, err = self.proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            pytest.fail(f"ecpds listen did not finish: {out} {err}")
        return self.proc.returncode, out, err

    def ids(self) -> list[str]:
        code, out, err = self.finish()
        assert code == 0, err
        return [json.loads(line)["id"] for line in out.splitlines()]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    home = tmp_path_factory.mktemp("listen") / "var"
    with (
        served_portal(home, f"127.0.0.1:{free_port()}") as (settings, login),
        httpx.Client(auth=login, verify=False, timeout=30) as admin,
    ):
        api = f"https://127.0.0.1:{settings.https_port}/api/v1"
        for name in ("alpha", "beta"):
            made = admin.post(
                f"{api}/destinations", json={"name": name, "notification": {"notify": "store"}}
            )
            assert made.status_code == 201, made.text
        alice = {"name": "alice", "password": ALICE_PASSWORD, "destinations": ["alpha"]}
        assert admin.post(f"{api}/users", json=alice).status_code == 201
        publisher = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
        publisher.username_pw_set(*login)
        publisher.connect("127.0.0.1", settings.mqtt_port)
        publisher.loop_start()
        engine = open_catalog(settings.catalog_url)
        try:
            yield Site(
                settings=settings,
                login=login,
                engine=engine,
                admin=admin,
                publisher=publisher,
                xdg=tmp_path_factory.mktemp("xdg"),
            )
        finally:
            publisher.disconnect()
            publisher.loop_stop()
            engine.dispose()


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_from_gives_the_missed_ones_once_then_live_ones(site: Site) -> None:
    tag, now = _unique("from"), datetime.now(UTC)
    too_old = site.announce("alpha", f"{tag}-old", b"o", created=now - timedelta(hours=3))
    missed = [
        site.announce("alpha", f"{tag}-missed-{i}", b"m", created=now - timedelta(minutes=50 - i))
        for i in range(3)
    ]
    listener = Listener(
        site, "--from", "2h", "--name", f"^{tag}", "--format", "json", "--count", "6"
    )
    # In the history and on the broker while the listener replays: it must come once.
    live = [site.announce("alpha", f"{tag}-live-{i}", b"l") for i in range(3)]
    got = listener.ids()
    assert got == missed + live
    assert too_old not in got


def test_restart_with_state_misses_nothing(site: Site, tmp_path: Path) -> None:
    tag, state = _unique("state"), tmp_path / "position.json"
    args = ("--state", str(state), "--name", f"^{tag}", "--format", "json")
    first = Listener(site, *args, "--count", "2")
    before = [site.announce("alpha", f"{tag}-before-{i}", b"b") for i in range(2)]
    assert first.ids() == before
    # Nobody listens: these reach the broker unheard, and the history.
    while_down = [site.announce("beta", f"{tag}-down-{i}", b"d") for i in range(3)]
    second = Listener(site, *args, "--count", "4")
    after = site.announce("alpha", f"{tag}-after", b"a")
    assert second.ids() == [*while_down, after]


def test_download_verified_by_md5_and_exec_placeholders(site: Site, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    target = f"{_unique('prod')}/file one.bin"
    site.put("alpha", target, data)
    folder, log = tmp_path / "in", tmp_path / "exec.log"
    listener = Listener(
        site,
        "-d",
        "alpha",
        "--download",
        str(folder),
        "--exec",
        f"printf '%s|%s|%s|%s|%s\\n' {{id}} {{name}} {{size}} {{md5}} {{path}} >> {log}",
        "--count",
        "1",
    )
    message_id = site.announce("alpha", target, data)
    code, _, err = listener.finish()
    assert code == 0, err
    saved = folder / target
    assert saved.read_bytes() == data
    assert not list(folder.rglob("*.part"))
    md5 = hashlib.md5(data).hexdigest()
    assert log.read_text() == f"{message_id}|file one.bin|{len(data)}|{md5}|{saved}\n"


def test_wis2_download_verified_by_its_sha512(site: Site, tmp_path: Path) -> None:
    data = os.urandom(10_000)
    target = f"{_unique('wis2')}/obs.bufr"
    site.put("alpha", target, data)
    folder = tmp_path / "in"
    listener = Listener(site, "-d", "alpha", "--download", str(folder), "--count", "1")
    site.announce("alpha", target, data, wis2=True)
    code, out, err = listener.finish()
    assert code == 0, err
    assert (folder / target).read_bytes() == data
    assert "obs.bufr" in out


def test_bad_options_are_one_line_errors(site: Site) -> None:
    cases = {
        ("--from", "yesterday"): "--from 'yesterday'",
        ("--meta", "novalue"): "--meta 'novalue': use key=value",
        ("--name", "(unclosed"): "is not a regular expression",
        ("-d", "nowhere"): "nowhere",
        ("--broker", "http://127.0.0.1:1"): "use mqtt://, mqtts://, ws:// or wss://",
    }
    for args, expected in cases.items():
        run = subprocess.run(
            [sys.executable, "-m", "ecpds.cli.main", "listen", *args],
            env=site.env("alice", ALICE_PASSWORD),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert run.returncode == 1, run.stderr
        assert run.stderr.startswith("error: ") and expected in run.stderr
        assert len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_corrupted_download_is_refused(site: Site, tmp_path: Path) -> None:
    data = b"the real bytes"
    target = _unique("bad.bin")
    site.put("alpha", target, data)
    folder = tmp_path / "in"
    listener = Listener(site, "-d", "alpha", "--download", str(folder), "--count", "1")
    site.announce("alpha", target, data, md5=hashlib.md5(b"other bytes").hexdigest())
    code, out, err = listener.finish()
    assert code == 1
    assert err.startswith("error: ") and "checksum mismatch" in err
    assert len(err.strip().splitlines()) == 1
    assert not (folder / target).exists()
    assert not list(folder.rglob("*.part"))


def test_data_user_sees_only_its_destinations(site: Site) -> None:
    mine = site.announce("alpha", _unique("mine"), b"x", live=False)
    theirs = site.announce("beta", _unique("theirs"), b"y", live=False)
    api = f"{site.base}/api/v1"
    with httpx.Client(auth=("alice", ALICE_PASSWORD), verify=False, timeout=30) as alice:
        rows: list[dict[str, Any]] = alice.get(
            f"{api}/notifications", params={"limit": 10000}
        ).json()
        assert {row["destination"] for row in rows} == {"alpha"}
        assert mine in {row["message_id"] for row in rows}
        mine_row = next(row for row in rows if row["message_id"] == mine)
        assert mine_row["payload"]["id"] == mine and mine_row["event"] == "store"
        refused = alice.get(f"{api}/notifications", params={"destination": "beta"})
        assert refused.status_code == 404
        assert alice.get(f"{api}/notifications/topics").json() == [
            {
                "destination": "alpha",
                "notify": "store",
                "topic_filter": "alpha/#",
                "format": "json",
                "broker": "embedded",
            }
        ]
    everything = site.admin.get(f"{api}/notifications", params={"limit": 10000}).json()
    assert {mine, theirs} <= {row["message_id"] for row in everything}
    # Paging: after=<id> reads on from there, in id order.
    first, *rest = site.admin.get(f"{api}/notifications", params={"limit": 2}).json()
    page = site.admin.get(f"{api}/notifications", params={"after": first["id"]}).json()
    assert page[0]["id"] == rest[0]["id"] and page[0]["id"] > first["id"]
    # The listener as alice replays only alpha's.
    name = _unique("keep")
    kept = site.announce("alpha", name, b"k", live=False, metadata={"kind": "fc"})
    site.announce("alpha", name + "-other", b"k", live=False, metadata={"kind": "an"})
    listener = Listener(
        site,
        "--from",
        "1h",
        "--name",
        "^keep-",
        "--meta",
        "kind=fc",
        "--format",
        "json",
        "--count",
        "1",
        user="alice",
        password=ALICE_PASSWORD,
    )
    assert listener.ids() == [kept]


@pytest.mark.parametrize("door", ["mqtts", "wss"])
def test_live_over_tls_and_websocket(site: Site, door: str) -> None:
    """The embedded broker's MQTTS door checked with the portal's certificate, and its
    secure WebSocket door without checking (--insecure)."""
    tag = _unique(door)
    if door == "mqtts":
        url = f"mqtts://127.0.0.1:{site.settings.mqtts_port}"
        check = ["--ca", str(site.settings.cert_file)]
    else:
        url = f"wss://127.0.0.1:{site.settings.mqtt_ws_port}"
        check = ["--insecure"]
    listener = Listener(
        site, "--broker", url, *check, "--name", f"^{tag}", "--format", "json", "--count", "1",
        user="alice", password=ALICE_PASSWORD,
    )  # fmt: skip
    sent = site.announce("alpha", f"{tag}.grib", b"x", history=False)
    assert listener.ids() == [sent]
