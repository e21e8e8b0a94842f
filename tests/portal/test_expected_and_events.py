"""Expected products and the event log through the served portal's REST API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ecpds.core.devserver import free_port
from portal.conftest import served_portal

READER_PASSWORD = "reader-expects-1"


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, tuple[str, str]]]:
    home: Path = tmp_path_factory.mktemp("expected") / "var"
    with served_portal(home, f"127.0.0.1:{free_port()}") as (settings, login):
        yield f"https://127.0.0.1:{settings.https_port}", login


def test_expected_products_by_destination_and_their_state(
    portal: tuple[str, tuple[str, str]],
) -> None:
    base, login = portal
    with httpx.Client(base_url=f"{base}/api/v1", auth=login, verify=False) as admin:
        for name in ("dwd", "knmi"):
            assert admin.post("/destinations", json={"name": name}).status_code == 201
        reader = {"name": "reader", "password": READER_PASSWORD, "destinations": ["dwd"]}
        assert admin.post("/users", json=reader).status_code == 201
        for name, destination in (("t2m-dwd", "dwd"), ("t2m-knmi", "knmi")):
            made = admin.post(
                "/expected",
                json={"name": name, "destination": destination, "pattern": "t2m", "due": "23:59"},
            )
            assert made.status_code == 201, made.text
        refusals = {
            ("pattern", "(t2m"): "is not a regular expression",
            ("due", "25:00"): "is not a time of day: use HH:MM",
            ("destination", "nowhere"): "unknown destination 'nowhere'",
        }
        for (field, value), says in refusals.items():
            body = {"name": "bad", "destination": "dwd", "pattern": "x", "due": "06:00"}
            refused = admin.post("/expected", json=body | {field: value})
            assert refused.status_code == 422, refused.text
            assert says in refused.json()["detail"] and "\n" not in refused.json()["detail"]
        sent = admin.put(f"{base}/data/dwd/t2m.grib", content=b"temperature")
        assert sent.status_code == 201, sent.text
        states = {s["name"]: s for s in admin.get("/arrivals").json()}
        assert set(states) == {"t2m-dwd", "t2m-knmi"}
        assert states["t2m-dwd"]["state"] in {"arrived", "on time"}  # before or at 23:59
        assert states["t2m-dwd"]["target"] == "t2m.grib"
        assert states["t2m-knmi"]["state"] in {"waiting", "missing"}
        scraped = admin.get(f"{base}/metrics").text
        dwd_state = states["t2m-dwd"]["state"]
        assert (
            f'ecpds_expected_product{{destination="dwd",name="t2m-dwd",state="{dwd_state}"}} 1.0'
            in scraped
        )
        assert admin.delete("/expected/t2m-knmi").status_code == 204
    with httpx.Client(
        base_url=f"{base}/api/v1", auth=("reader", READER_PASSWORD), verify=False
    ) as mine:
        assert [s["name"] for s in mine.get("/arrivals").json()] == ["t2m-dwd"]
        assert mine.post("/expected", json={}).status_code in (403, 422)


def test_every_operation_is_in_the_event_log_and_uploads_are_not(
    portal: tuple[str, tuple[str, str]],
) -> None:
    base, login = portal
    with httpx.Client(base_url=f"{base}/api/v1", auth=login, verify=False) as admin:
        assert admin.post("/destinations", json={"name": "logged"}).status_code == 201
        assert admin.post("/destinations", json={"name": "logged"}).status_code == 409
        upload = admin.post("/destinations/logged/files", params={"name": "a.grib"}, content=b"a")
        assert upload.status_code == 201, upload.text
        wrong = httpx.delete(
            f"{base}/api/v1/destinations/logged", auth=("admin", "not-it"), verify=False
        )
        assert wrong.status_code == 401
        events = admin.get("/events", params={"limit": 50}).json()
    mine = [(e["user"], e["method"], e["path"], e["status"]) for e in events]
    assert mine[:3] == [
        ("-", "DELETE", "/api/v1/destinations/logged", 401),
        (login[0], "POST", "/api/v1/destinations", 409),
        (login[0], "POST", "/api/v1/destinations", 201),
    ]
    assert not any(path.endswith("/files") for _, _, path, _ in mine)
    assert all(e["seconds"] >= 0 and e["time"] for e in events)
