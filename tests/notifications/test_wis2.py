"""WIS2 notification messages: what a destination in the `wis2` format announces."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import time
import uuid
from typing import Any

import pytest
from acquisition.conftest import Acquisition, acq, write  # noqa: F401 (the fixture)
from dissemination.conftest import (  # noqa: F401 (the fixtures)
    Dissemination,
    dissemination,
    dissemination_without_worker,
)
from dissemination.test_failover import sftp_credentials
from sqlmodel import Session, col, select

from ecpds.core.models import DataFile, Notification
from ecpds.core.notifications import WIS2_CONFORMS_TO, Doors, check_wis2

TOPIC = "origin/a/wis2/int-ecmwf/data/core/weather/prediction/{metadata[param]}"
POLYGON = {
    "type": "Polygon",
    "coordinates": [[[-10.0, 35.0], [30.0, 35.0], [30.0, 70.0], [-10.0, 70.0], [-10.0, 35.0]]],
}


def _messages(env: Any, destination: str) -> list[tuple[Notification, dict[str, Any]]]:
    with Session(env.engine) as session:
        rows = session.exec(
            select(Notification)
            .where(Notification.destination == destination)
            .order_by(col(Notification.id))
        ).all()
    return [(row, json.loads(row.payload)) for row in rows]


def _wis2(**more: Any) -> dict[str, Any]:
    return {
        "notify": "both",
        "format": "wis2",
        "topic": TOPIC,
        "wis2": {
            "data_id": "int-ecmwf/data/core/weather/{metadata[param]}/{target}",
            "metadata_id": "urn:wmo:md:int-ecmwf:ifs-forecasts",
        },
        **more,
    }


async def test_stored_and_delivered_products_give_valid_wis2_messages(
    dissemination: Dissemination,  # noqa: F811
) -> None:
    env = dissemination
    dest = env.name("wis2")
    out = env.tmp / "remote"
    env.add_host(f"{dest}-h", f"file://{out}", retry_count=0)
    env.add_destination(dest, [f"{dest}-h"], notification=_wis2())
    data = b"GRIB" + bytes(range(256)) * 40
    ids = await env.put(
        dest,
        "t2m.grib2",
        data,
        target="fc/t2m.grib2",
        metadata={
            "param": "t2m",
            "datetime": "2026-12-07T00:00:00Z",
            "geometry": json.dumps(POLYGON),
        },
    )
    await env.wait_for(ids, "DONE")
    [(stored_row, stored), (delivered_row, delivered)] = _messages(env, dest)
    sha512 = base64.b64encode(hashlib.sha512(data).digest()).decode()
    for row, message in ((stored_row, stored), (delivered_row, delivered)):
        check_wis2(message)
        assert len(row.payload) <= 8192
        assert row.content_type == "application/geo+json"
        assert row.topic == "origin/a/wis2/int-ecmwf/data/core/weather/prediction/t2m"
        assert message["id"] == row.message_id and uuid.UUID(message["id"])
        assert message["conformsTo"] == [WIS2_CONFORMS_TO]
        assert (message["type"], message["geometry"]) == ("Feature", POLYGON)
        properties = message["properties"]
        assert properties["data_id"] == "int-ecmwf/data/core/weather/t2m/fc/t2m.grib2"
        assert properties["metadata_id"] == "urn:wmo:md:int-ecmwf:ifs-forecasts"
        assert properties["datetime"] == "2026-12-07T00:00:00Z"
        assert properties["pubtime"].endswith("Z")
        assert properties["integrity"] == {"method": "sha512", "value": sha512}
        [link] = message["links"]
        assert (link["rel"], link["length"]) == ("canonical", len(data))
        assert link["type"] == "application/octet-stream"  # .grib2: no registered type
    served = Doors.of(env.settings).urls(dest, "fc/t2m.grib2")["https"]
    assert stored["links"][0]["href"] == served
    # Delivered to a local folder, which no WIS2 link may name: the portal serves it.
    assert delivered["links"][0]["href"] == served
    with Session(env.engine) as session:
        data_file = session.get(DataFile, stored_row.data_file_id)
        assert data_file is not None and data_file.sha512 == hashlib.sha512(data).hexdigest()


async def test_sha512_only_when_a_destination_uses_wis2_and_time_ranges(
    dissemination: Dissemination,  # noqa: F811
) -> None:
    env = dissemination
    plain, ranged = env.name("plain"), env.name("ranged")
    env.add_destination(plain, [], notification={"notify": "store"})
    env.add_destination(ranged, [], notification=_wis2(notify="store"))
    await env.put(plain, "a.txt", b"text")
    window = {"start_datetime": "2026-12-06T00:00:00Z", "end_datetime": "2026-12-07T00:00:00Z"}
    await env.put(ranged, "b.txt", b"text", metadata={"param": "tp"} | window)
    [(row, _)] = _messages(env, plain)
    with Session(env.engine) as session:
        data_file = session.get(DataFile, row.data_file_id)
        assert data_file is not None and data_file.sha512 is None
    [(_, message)] = _messages(env, ranged)
    check_wis2(message)
    assert "datetime" not in message["properties"]
    assert {k: message["properties"][k] for k in window} == window
    assert message["geometry"] is None
    assert message["links"][0]["type"] == "text/plain"


async def test_an_acquired_file_takes_its_sha512_from_its_wis2_integrity(
    acq: Acquisition,  # noqa: F811
) -> None:
    root = acq.tmp / "provider"
    data = b"acquired bytes"
    write(root / "x.bin", data, mtime=time.time() - 3600)
    digest = base64.b64encode(hashlib.sha512(data).digest()).decode()
    rules = [{"glob": "*.bin", "metadata": {"integrity": f"sha512:{digest}", "param": "x"}}]
    destination, host = acq.acquisition_host(f"file://{root}", rules)
    acq.update_destination(destination, notification=_wis2(notify="store"))
    assert (await acq.run(destination, host)).fetched == 1
    [(_, message)] = _messages(acq, destination)
    check_wis2(message)
    assert message["properties"]["integrity"] == {"method": "sha512", "value": digest}


def _valid() -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "conformsTo": [WIS2_CONFORMS_TO],
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [6.9, 50.9]},
        "properties": {
            "data_id": "int-ecmwf/data/core/weather/x",
            "pubtime": "2026-12-07T06:00:00Z",
            "datetime": "2026-12-07T00:00:00Z",
            "integrity": {"method": "sha512", "value": "A2F4"},
        },
        "links": [{"href": "https://h/data/x", "rel": "canonical", "type": "a/b", "length": 1}],
    }


def _without(message: dict[str, Any], *path: str) -> dict[str, Any]:
    changed = copy.deepcopy(message)
    node = changed
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return changed


def _with(message: dict[str, Any], value: Any, *path: str | int) -> dict[str, Any]:
    changed = copy.deepcopy(message)
    node: Any = changed
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return changed


def test_the_schema_check_accepts_a_valid_message() -> None:
    check_wis2(_valid())


@pytest.mark.parametrize(
    ("broken", "says"),
    [
        (_without(_valid(), "id"), "'id' is a required property"),
        (_with(_valid(), "not-a-uuid", "id"), "id"),
        (_with(_valid(), ["http://example.org"], "conformsTo"), "conformsTo"),
        (_without(_valid(), "geometry"), "'geometry' is a required property"),
        (_with(_valid(), {"type": "LineString", "coordinates": []}, "geometry"), "geometry"),
        (_without(_valid(), "properties", "pubtime"), "pubtime"),
        (_without(_valid(), "properties", "datetime"), "properties"),
        (_with(_valid(), {"method": "md5", "value": "AA=="}, "properties", "integrity"), "md5"),
        (_with(_valid(), [], "links"), "links"),
        (
            _with(_valid(), [_valid()["links"][0], _valid()["links"][0]], "links"),
            "links",
        ),
        (
            _with(_valid(), "x" * 9000, "properties", "data_id"),
            "over the limit of 8192",
        ),
    ],
)
def test_the_schema_check_refuses_in_one_line(broken: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError) as caught:
        check_wis2(broken)
    assert says in str(caught.value)
    assert "\n" not in str(caught.value)


async def test_a_delivery_over_sftp_links_to_the_remote_file_without_credentials(
    dissemination: Dissemination,  # noqa: F811
    sshd: Any,
) -> None:
    env = dissemination
    dest = env.name("sftp")
    user, credentials = sftp_credentials(sshd)
    folder = sshd.folder(dest)
    url = sshd.url(folder, user=user)
    env.add_host(f"{dest}-h", url, retry_count=0, credentials=credentials)
    env.add_destination(dest, [f"{dest}-h"], notification=_wis2(notify="delivery", protocol=None))
    ids = await env.put(dest, "o.bufr", b"bufr bytes", metadata={"param": "obs"})
    await env.wait_for(ids, "DONE")
    [(row, message)] = _messages(env, dest)
    check_wis2(message)
    href = message["links"][0]["href"]
    assert href.startswith("sftp://") and href.endswith("/o.bufr")
    assert (folder / "o.bufr").read_bytes() == b"bufr bytes"
    for secret in credentials.values():
        assert secret not in row.payload.decode()
