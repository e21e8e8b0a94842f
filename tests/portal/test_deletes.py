"""Deletes over the REST API refuse what they would orphan and stop what they leave behind.

Real HTTPS (uvicorn in a thread) against a real Temporal dev server, on SQLite and
PostgreSQL; values are checked as they are written.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from temporalio.client import WorkflowExecutionStatus

from ecpds.core.dispatch import destination_workflow_id
from ecpds.core.settings import Settings
from ecpds.core.store import Store

from .test_api import Api, _run_api, make_site, ok, refused


@pytest.fixture
def api(settings: Settings, engine: Engine, store: Store) -> Iterator[Api]:
    yield from _run_api(settings, engine, store)


@pytest.fixture
def temporal_api(
    settings: Settings, engine: Engine, store: Store, temporal_server: str, task_queue: str
) -> Iterator[Api]:
    yield from _run_api(settings, engine, store, temporal_server, task_queue)


def _status(api: Api, workflow_id: str) -> WorkflowExecutionStatus | None:
    assert api.temporal is not None
    handle = api.temporal.get_workflow_handle(workflow_id)
    return api.loop.run(handle.describe()).status


def test_deleting_a_destination_stops_its_scheduler_and_keeps_its_transfers(
    temporal_api: Api, tmp_path: Path
) -> None:
    api = temporal_api
    make_site(api, tmp_path)
    queued = ok(
        api.admin.post("/destinations/d2/files", params={"name": "q.bin"}, content=b"q"), 201
    )
    [transfer] = ok(api.admin.get("/transfers", params={"data_file_id": queued["id"]}))
    scheduler = destination_workflow_id("d2")
    assert _status(api, scheduler) is WorkflowExecutionStatus.RUNNING

    refused(
        api.admin.delete("/destinations/d2"),
        409,
        "destination 'd2' is used by 1 unfinished transfer, alias 'a12': delete with force",
    )
    assert ok(api.admin.get("/destinations/d2"))["name"] == "d2"
    ok(api.admin.delete("/destinations/d2", params={"force": True}), 204)

    refused(api.admin.get("/destinations/d2"), 404, "d2")
    assert _status(api, scheduler) is WorkflowExecutionStatus.TERMINATED
    kept = ok(api.admin.get(f"/transfers/{transfer['id']}"))
    assert (kept["destination"], kept["status"]) == ("d2", "STOP")
    assert kept["last_error"] == "destination 'd2' deleted"
    # The name can be used again; the new destination does not inherit the old history.
    ok(api.admin.post("/destinations", json={"name": "d2", "hosts": ["h1"]}), 201)
    assert ok(api.admin.get("/transfers", params={"destination": "d2"})) == []
    again = ok(
        api.admin.post("/destinations/d2/files", params={"name": "r.bin"}, content=b"r"), 201
    )
    assert min(again["transfers"]) > transfer["id"]
    assert _status(api, scheduler) is WorkflowExecutionStatus.RUNNING


def test_a_host_in_use_and_the_caller_itself_are_not_deleted(
    temporal_api: Api, tmp_path: Path
) -> None:
    api = temporal_api
    make_site(api, tmp_path)
    refused(
        api.admin.delete("/hosts/h1"),
        409,
        "host 'h1' is used by destinations 'd1' (primary), 'd2' (primary): delete with force",
    )
    assert ok(api.admin.get("/destinations/d1"))["hosts"] == ["h1"]
    refused(api.admin.delete("/users/admin"), 409, "user 'admin' cannot delete itself")
    refused(api.admin.delete("/users/admin", params={"force": True}), 409, "itself")
    ok(api.admin.post("/users", json={"name": "root", "admin": True, "password": "root-pass"}), 201)
    with api.client(auth=("root", "root-pass")) as root:
        ok(root.delete("/users/admin"), 204)
        refused(root.delete("/users/root"), 409, "itself")


def test_the_last_admin_stays_an_active_admin(api: Api) -> None:
    for change in ({"admin": False}, {"active": False}):
        refused(api.admin.patch("/users/admin", json=change), 409, "cannot demote", "itself")
        refused(api.admin.post("/apply", json={"user": [{"name": "admin"} | change]}), 409, "last")
    assert ok(api.admin.get("/users/admin"))["admin"] is True
    ok(api.admin.post("/users", json={"name": "root", "admin": True, "password": "root-pass"}), 201)
    refused(api.admin.patch("/users/admin", json={"active": False}), 409, "itself")
    with api.client(auth=("root", "root-pass")) as root:
        assert ok(root.patch("/users/admin", json={"admin": False}))["admin"] is False


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"compression": "rar"}, ("compression", "'rar'", "gzip", "zstd")),
        ({"active_from": "25:99"}, ("active_from", "'25:99'", "HH:MM")),
        ({"default_priority": 120}, ("default_priority", "99")),
        ({"if_target_exists": "skip"}, ("if_target_exists", "'overwrite' or 'resume'")),
    ],
)
def test_destination_values_are_checked_when_written(
    api: Api, tmp_path: Path, body: dict[str, object], words: tuple[str, ...]
) -> None:
    make_site(api, tmp_path)
    before = ok(api.admin.get("/destinations/d1"))
    refused(api.admin.patch("/destinations/d1", json=body), 422, *words)
    refused(api.admin.post("/destinations", json={"name": "dx"} | body), 422, *words)
    refused(api.admin.post("/apply", json={"destination": [{"name": "dx"} | body]}), 422, *words)
    assert ok(api.admin.get("/destinations/d1")) == before
    refused(api.admin.get("/destinations/dx"), 404, "dx")
