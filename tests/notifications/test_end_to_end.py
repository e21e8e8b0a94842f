"""Notifications end to end, as a data user sees them: a REST upload to a served portal,
its transfer delivered by a real worker, and the outbox's publisher (the same worker)
announcing both on the embedded broker, heard by a paho subscriber and `ecpds listen`.

Nothing here writes an outbox row or publishes by hand.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from peers.loop import LoopThread
from peers.mqtt import MqttBroker
from portal.conftest import served_portal

from ecpds.core.notifications import check_wis2
from ecpds.core.settings import Settings
from ecpds.workers.worker import run_worker
from notifications.conftest import Received, subscribed
from notifications.test_listen import Listener, Site

BOB_PASSWORD = "bob-hears-it-all-1"


@dataclass
class Served:
    site: Site  # the listener's view: settings, admin client, state folder
    api: str
    sites: Path  # where the file:// host delivers

    def destination(self, prefix: str, notification: dict[str, object]) -> str:
        """A new destination (its name), delivering to a local folder, and its data user
        bob-<name>."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        admin = self.site.admin
        url = f"file://{self.sites / name}"
        host = admin.post(f"{self.api}/hosts", json={"name": f"{name}-h", "url": url})
        assert host.status_code == 201, host.text
        made = admin.post(
            f"{self.api}/destinations",
            json={"name": name, "hosts": [f"{name}-h"], "notification": notification},
        )
        assert made.status_code == 201, made.text
        user = {"name": f"bob-{name}", "password": BOB_PASSWORD, "destinations": [name]}
        assert admin.post(f"{self.api}/users", json=user).status_code == 201
        return name

    def listen(self, destination: str, *args: str) -> Listener:
        """`ecpds listen ARGS` as the destination's data user, once it has subscribed."""
        return Listener(self.site, *args, user=f"bob-{destination}", password=BOB_PASSWORD)

    def upload(self, destination: str, name: str, data: bytes) -> dict[str, object]:
        answer = self.site.admin.post(
            f"{self.api}/destinations/{destination}/files", params={"name": name}, content=data
        )
        assert answer.status_code == 201, answer.text
        body: dict[str, object] = answer.json()
        return body


@pytest.fixture(scope="module")
def served(temporal_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A portal and a worker (dissemination and publisher) on one Temporal task queue."""
    home = tmp_path_factory.mktemp("e2e") / "var"
    queue = f"test-{uuid.uuid4().hex[:12]}"
    with (
        served_portal(home, temporal_server, task_queue=queue) as (settings, login),
        httpx.Client(auth=login, verify=False, timeout=30) as admin,
    ):
        worker = LoopThread()
        stop = asyncio.Event()
        running = worker.submit(run_worker(settings, stop))
        try:
            site = Site(
                settings=settings,
                login=login,
                engine=None,  # type: ignore[arg-type]  # not used: nothing is written by hand
                admin=admin,
                publisher=None,  # type: ignore[arg-type]
                xdg=tmp_path_factory.mktemp("xdg"),
            )
            api = f"https://127.0.0.1:{settings.https_port}/api/v1"
            yield Served(site, api, home.parent / "sites")
        finally:
            worker.loop.call_soon_threadsafe(stop.set)
            running.result(60)
            worker.close()


def bob(settings: Settings, destination: str) -> MqttBroker:
    return MqttBroker("127.0.0.1", settings.mqtt_port, "3.1.1", f"bob-{destination}", BOB_PASSWORD)


async def heard_upload(
    served: Served, destination: str, name: str, data: bytes
) -> tuple[dict[str, object], list[Received]]:
    """A REST upload to `destination` (notify both) and the two notifications its data
    user hears on the embedded broker: the store and the delivery."""
    broker = bob(served.site.settings, destination)
    async with subscribed(broker, f"{destination}/#", version="3.1.1") as paho:
        uploaded = await asyncio.to_thread(served.upload, destination, name, data)
        return uploaded, await paho.wait_for_count(2, timeout=120)


async def test_upload_and_delivery_reach_paho_and_ecpds_listen(
    served: Served, tmp_path: Path
) -> None:
    name = served.destination("e2e", {"notify": "both"})
    data = b"an analysis, announced twice\n" * 100
    folder = tmp_path / "downloads"
    listener = await asyncio.to_thread(
        served.listen,
        name,
        "--format",
        "json",
        "--count",
        "2",
        "--download",
        str(folder),
    )
    uploaded, messages = await heard_upload(served, name, "t2m.grib", data)
    code, out, err = await asyncio.to_thread(listener.finish)

    payloads = {p["event"]: p for p in (json.loads(m.payload) for m in messages)}
    assert set(payloads) == {"store", "delivery"}
    store, delivery = payloads["store"], payloads["delivery"]
    md5 = hashlib.md5(data).hexdigest()
    assert store["name"] == "t2m.grib" and store["size"] == len(data) and store["md5"] == md5
    assert store["data_file_id"] == uploaded["id"]
    assert store["urls"]["https"].endswith(f"/data/{name}/t2m.grib")
    assert delivery["transfer_id"] == uploaded["transfers"][0]  # type: ignore[index]
    assert delivery["location"].endswith(f"/{name}/t2m.grib")
    assert (served.sites / name / "t2m.grib").read_bytes() == data
    assert {m.topic for m in messages} == {f"{name}/t2m.grib"}

    assert code == 0, err
    heard = [json.loads(line) for line in out.splitlines()]
    assert sorted(h["id"] for h in heard) == sorted(p["id"] for p in payloads.values())
    assert (folder / "t2m.grib").read_bytes() == data  # verified by its MD5 on the way

    # Later, the same two again from the real history, once each.
    replay = await asyncio.to_thread(
        served.listen,
        name,
        "--from",
        "1h",
        "--destination",
        name,
        "--format",
        "json",
        "--count",
        "2",
    )
    assert sorted(await asyncio.to_thread(replay.ids)) == sorted(h["id"] for h in heard)


async def test_wis2_over_mqtt5_to_an_external_mosquitto(
    served: Served, mosquitto: MqttBroker
) -> None:
    """The same path to a broker of the site's own: MQTT 5 properties and a valid WIS2
    message for the store and for the delivery."""
    root = f"origin/a/wis2/e2e-{uuid.uuid4().hex[:8]}"
    name = served.destination(
        "e2e-wis2",
        {
            "notify": "both",
            "broker": mosquitto.url(),
            "protocol": "5",
            "format": "wis2",
            "topic": f"{root}/data/core/weather",
            "wis2": {"metadata_id": "urn:wmo:md:int-ecpds:forecasts"},
        },
    )
    data = b"GRIB" + bytes(range(256)) * 8
    async with subscribed(mosquitto, f"{root}/#", version="5") as paho:
        await asyncio.to_thread(served.upload, name, "t2m.grib2", data)
        messages = await paho.wait_for_count(2, timeout=120)
    sha512 = base64.b64encode(hashlib.sha512(data).digest()).decode()
    for message in messages:
        body = json.loads(message.payload)
        check_wis2(body)
        assert message.topic == f"{root}/data/core/weather"
        assert body["properties"]["integrity"] == {"method": "sha512", "value": sha512}
        assert body["properties"]["metadata_id"] == "urn:wmo:md:int-ecpds:forecasts"
        assert body["links"][0]["length"] == len(data)
        assert message.properties["ContentType"] == "application/geo+json"
        assert message.properties["MessageExpiryInterval"] > 0
        assert ("id", body["id"]) in message.properties["UserProperty"]
    assert len({json.loads(m.payload)["id"] for m in messages}) == 2


async def test_listen_keeps_one_event_and_shows_it_in_its_table(
    served: Served, tmp_path: Path
) -> None:
    name = served.destination("e2e-event", {"notify": "both"})
    _, messages = await heard_upload(served, name, "z500.grib", b"geopotential")
    [delivery] = [json.loads(m.payload) for m in messages if b'"delivery"' in m.payload]
    listener = await asyncio.to_thread(
        served.listen,
        name,
        "--from",
        "1h",
        "--destination",
        name,
        "--event",
        "delivery",
        "--count",
        "1",
    )
    code, out, err = await asyncio.to_thread(listener.finish)
    assert code == 0, err
    header, line = out.splitlines()
    assert header.split() == ["created", "event", "destination", "size", "name"]
    assert line.split()[1:] == ["delivery", name, str(len(b"geopotential")), "z500.grib"]
    assert delivery["event"] == "delivery"
