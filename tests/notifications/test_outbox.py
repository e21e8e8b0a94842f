"""The outbox: notifications written with the store or delivery they announce."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
from acquisition.conftest import Acquisition, acq, write  # noqa: F401 (the fixture)
from dissemination.conftest import (  # noqa: F401 (the fixtures)
    Dissemination,
    dissemination,
    dissemination_without_worker,
)
from peers.catalog import until
from peers.system import api_and_worker
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from ecpds.core import catalog
from ecpds.core.db import session_scope
from ecpds.core.devserver import free_port
from ecpds.core.models import DataFile, Notification
from ecpds.core.notifications import Doors, settings_of
from ecpds.core.secrets import CredentialBox, load_or_create_key
from ecpds.core.settings import Settings
from ecpds.core.site import apply_site, load_site


def _rows(engine: Engine, destination: str) -> list[Notification]:
    with Session(engine) as session:
        return list(
            session.exec(
                select(Notification)
                .where(Notification.destination == destination)
                .order_by(col(Notification.id))
            ).all()
        )


def _payload(row: Notification) -> dict[str, Any]:
    return json.loads(row.payload)


def test_rest_upload_and_async_push_announce_and_the_password_is_never_shown(
    temporal_server: str, task_queue: str, tmp_path: Path, engine: Engine, catalog_url: str
) -> None:
    port = free_port()
    settings = Settings(
        home=tmp_path / "var",
        database_url=catalog_url,
        store_locations=[str(tmp_path / "store")],
        task_queue=task_queue,
        temporal_address=temporal_server,
        api_url=f"http://127.0.0.1:{port}/api/v1",
    )
    secret = "s3cret-broker-password"
    notification = {
        "notify": "store",
        "broker": "mqtt://127.0.0.1:1883",
        "user": "ecpds",
        "topic": "ecpds/{destination}/{metadata[param]}/{target}",
        "qos": 2,
        "retain": True,
        "expiry": 600,
    }
    with api_and_worker(settings, engine, port) as (_, _, env):
        auth = (env["ECPDS_API_USER"], env["ECPDS_API_PASSWORD"])
        with httpx.Client(base_url=settings.api_url, auth=auth) as http:
            made = http.post(
                "/destinations",
                json={
                    "name": "notified",
                    "notification": notification,
                    "notification_password": secret,
                },
            )
            assert made.status_code == 201, made.text
            shown = [made.text, http.get("/destinations/notified").text]
            patched = http.patch(
                "/destinations/notified", json={"notification_password": secret + "2"}
            )
            assert patched.status_code == 200, patched.text
            shown += [patched.text, http.get("/destinations").text]
            for text in shown:
                assert secret not in text
                assert "notification_password_encrypted" not in text
            assert all("password" not in text for text in shown)

            uploaded = http.post(
                "/destinations/notified/files",
                params={"name": "t2m.grib", "target": "2026/t2m.grib", "metadata": "param=t2m"},
                content=b"forecast bytes",
            )
            assert uploaded.status_code == 201, uploaded.text
            rows = _rows(engine, "notified")
            assert len(rows) == 1
            row = rows[0]
            assert (row.event, row.broker, row.protocol, row.topic) == (
                "store",
                "mqtt://127.0.0.1:1883",
                "5",
                "ecpds/notified/t2m/2026/t2m.grib",
            )
            assert (row.qos, row.retain, row.content_type, row.pending) == (
                2,
                True,
                "application/json",
                True,
            )
            assert row.expires is not None and row.created is not None
            assert round((row.expires - row.created).total_seconds()) == 600
            body = _payload(row)
            doors = Doors.of(settings)
            assert body["id"] == row.message_id
            assert body["urls"] == doors.urls("notified", "2026/t2m.grib")
            assert body["urls"]["https"] == (
                f"https://{settings.public_host}:{settings.https_port}/data/notified/2026/t2m.grib"
            )
            md5 = uploaded.json()["md5"]
            assert (body["name"], body["target"], body["size"], body["md5"], body["etag"]) == (
                "t2m.grib",
                "2026/t2m.grib",
                len(b"forecast bytes"),
                md5,
                f'"{md5}"',
            )
            assert body["metadata"] == {"param": "t2m"}
            assert body["data_file_id"] == uploaded.json()["id"]
            assert body["transfer_id"] == uploaded.json()["transfers"][0]
            assert body["time"].endswith("Z")

            # An asynchronous push: announced once fetched, not when registered.
            source = tmp_path / "provider" / "msl.grib"
            write(source, b"pressure bytes")
            provider = http.post(
                "/hosts", json={"name": "provider", "url": f"file://{source.parent}"}
            )
            assert provider.status_code == 201, provider.text
            pushed = http.post(
                "/destinations/notified/sources",
                json={"sources": [{"url": f"file://{source}"}], "metadata": "param=msl"},
            )
            assert pushed.status_code == 201, pushed.text
            fetched = until(
                lambda: len(_rows(engine, "notified")) == 2 and _rows(engine, "notified"),
                "the fetched file's notification",
            )
            later = _payload(fetched[1])
            assert (later["name"], later["size"], fetched[1].topic) == (
                "msl.grib",
                len(b"pressure bytes"),
                "ecpds/notified/msl/msl.grib",
            )
            with Session(engine) as session:
                data_file = session.get(DataFile, later["data_file_id"])
                assert data_file is not None and data_file.arrived is not None
                assert later["md5"] == data_file.md5


async def test_delivery_done_is_announced_with_its_remote_location(
    dissemination: Dissemination,  # noqa: F811
) -> None:
    env = dissemination
    dest = env.name("deliv")
    out = env.tmp / "remote"
    env.add_host(f"{dest}-h", f"file://{out}", retry_count=0)
    env.add_destination(
        dest, [f"{dest}-h"], notification={"notify": "delivery", "topic": "{event}/{target}"}
    )
    ids = await env.put(dest, "obs.bufr", b"observations", target="obs/obs.bufr")
    assert _rows(env.engine, dest) == []  # announces deliveries only
    await env.wait_for(ids, "DONE")
    rows = await _eventually(env.engine, dest, 1)
    row = rows[0]
    assert (row.event, row.topic, row.broker, row.protocol, row.transfer_id) == (
        "delivery",
        "delivery/obs/obs.bufr",
        "embedded",
        "3.1.1",
        ids[0],
    )
    body = _payload(row)
    assert body["location"] == f"file://{out}/obs/obs.bufr"
    assert (out / "obs" / "obs.bufr").read_bytes() == b"observations"
    assert body["event"] == "delivery" and body["transfer_id"] == ids[0]
    transfer = env.transfers(ids)[0]
    assert row.expires == transfer.expires  # the transfer's remaining lifetime


async def test_nothing_when_notify_is_none_and_a_bad_template_never_fails_a_store(
    dissemination: Dissemination,  # noqa: F811
) -> None:
    env = dissemination
    silent, broken, both = env.name("silent"), env.name("broken"), env.name("both")
    env.add_destination(silent, [])
    env.add_destination(
        broken, [], notification={"notify": "store", "format": "template", "template": "{nope}"}
    )
    env.add_destination(
        both,
        [],
        notification={
            "notify": "both",
            "format": "template",
            "template": "{name} {size} {metadata[run]}",
            "topic": "x/{metadata[missing]}/{dirname}/{basename}/{date:%Y}",
            "expiry": 0,
        },
    )
    for name in (silent, broken, both):
        assert await env.put(name, "f.dat", b"12345", target="a/f.dat", metadata={"run": "00"})
    assert _rows(env.engine, silent) == []
    assert _rows(env.engine, broken) == []
    [row] = _rows(env.engine, both)
    assert row.payload == b"f.dat 5 00"
    assert row.topic == f"x/unknown/a/f.dat/{row.created.year}"
    assert (row.content_type, row.expires) == (None, None)


async def test_acquired_files_are_announced(acq: Acquisition) -> None:  # noqa: F811
    root = acq.tmp / "provider"
    write(root / "a.bin", b"first", mtime=time.time() - 3600)
    write(root / "b.bin", b"second", mtime=time.time() - 3600)
    destination, host = acq.acquisition_host(f"file://{root}", [{"glob": "*.bin"}])
    acq.update_destination(destination, notification={"notify": "store"})
    outcome = await acq.run(destination, host)
    assert outcome.fetched == 2
    rows = _rows(acq.engine, destination)
    assert sorted(_payload(r)["name"] for r in rows) == ["a.bin", "b.bin"]
    assert {r.topic for r in rows} == {f"{destination}/a.bin", f"{destination}/b.bin"}
    again = await acq.run(destination, host)
    assert again.new == 0 and len(_rows(acq.engine, destination)) == 2


async def _eventually(engine: Engine, destination: str, count: int) -> list[Notification]:
    # The row is committed with DONE: by the time the test sees DONE it is there.
    rows = _rows(engine, destination)
    assert len(rows) == count, rows
    return rows


def test_site_toml_keeps_the_broker_password_sealed(engine: Engine, tmp_path: Path) -> None:
    box = CredentialBox(load_or_create_key(tmp_path / "key"))
    site = tmp_path / "site.toml"
    site.write_text(
        "[[destination]]\n"
        'name = "wmo"\n'
        'notification_password = "broker-secret"\n'
        "[destination.notification]\n"
        'notify = "both"\n'
        'broker = "mqtts://broker.example:8883"\n'
        'user = "ecpds"\n'
        'format = "wis2"\n'
    )
    spec = load_site(site)
    with session_scope(engine) as session:
        assert apply_site(session, box, spec).created == ["destination wmo"]
    with session_scope(engine) as session:
        assert apply_site(session, box, spec).unchanged == ["destination wmo"]
        destination = catalog.get_destination(session, name="wmo")
        sealed = destination.notification_password_encrypted
        assert sealed and "broker-secret" not in sealed
        assert box.open(sealed) == {"password": "broker-secret"}
        assert settings_of(destination.notification).mqtt_version == "5"
        shown = catalog.destination_public(session, destination).model_dump_json()
        assert "broker-secret" not in shown and "password" not in shown
    site.write_text(site.read_text().replace("broker-secret", "rotated"))
    with session_scope(engine) as session:
        assert apply_site(session, box, load_site(site)).updated == ["destination wmo"]
        destination = catalog.get_destination(session, name="wmo")
        assert box.open(destination.notification_password_encrypted) == {"password": "rotated"}
