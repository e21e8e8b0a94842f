"""What the console's tests share: a served portal with a small catalog, and a logged-in
HTTPS client (httpx, no browser)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from portal.conftest import served_portal
from sqlmodel import select

from ecpds.core import acquisition
from ecpds.core.db import make_engine, session_scope
from ecpds.core.models import AcquiredFile, DataTransfer, Destination, Host

DATA_PASSWORD = "carol-password-1"
HOST_PASSWORD = "host-secret-never-shown"


@dataclass
class Site:
    base: str
    login: tuple[str, str]
    transfer: int
    data_file: str
    beta_file: str
    run: int  # an acquisition run for alpha, with the uploaded file
    beta_run: int


@pytest.fixture(scope="module")
def site(temporal_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A served portal with two destinations and one upload to `alpha` (its transfer)
    and one to `beta`.

    `beta` sends on `beta-sftp`, a host with a password credential; data user carol
    reaches `beta` directly and through policy `beta-readers`; `alpha-acq` is an
    acquisition host with one run for `alpha`, and `beta` has a run of its own.
    """
    home = tmp_path_factory.mktemp("console") / "var"
    queue = f"test-{uuid.uuid4().hex[:12]}"
    with served_portal(home, temporal_server, task_queue=queue) as (settings, login):
        base = f"https://127.0.0.1:{settings.https_port}"
        with httpx.Client(base_url=f"{base}/api/v1", auth=login, verify=False, timeout=30) as api:
            url = f"file://{home.parent / 'sites'}"
            assert api.post("/hosts", json={"name": "alpha-h", "url": url}).status_code == 201
            sftp = {
                "name": "beta-sftp",
                "url": "sftp://bob@127.0.0.1:2222/in",
                "credentials": {"password": HOST_PASSWORD},
            }
            assert api.post("/hosts", json=sftp).status_code == 201
            acq = {"name": "alpha-acq", "kind": "acquisition", "url": url}
            assert api.post("/hosts", json=acq).status_code == 201
            for name, host in (("alpha", "alpha-h"), ("beta", "beta-sftp")):
                made = api.post("/destinations", json={"name": name, "hosts": [host]})
                assert made.status_code == 201, made.text
            user = {"name": "carol", "password": DATA_PASSWORD, "destinations": ["beta"]}
            assert api.post("/users", json=user).status_code == 201
            policy = {"name": "beta-readers", "destinations": ["beta"], "users": ["carol"]}
            assert api.post("/policies", json=policy).status_code == 201
            for name, destination, due in (
                ("t2m-alpha", "alpha", "00:00"),
                ("z500", "beta", "00:00"),
            ):
                expected = {"name": name, "destination": destination, "pattern": "zzz", "due": due}
                assert api.post("/expected", json=expected).status_code == 201
            up = api.post("/destinations/alpha/files", params={"name": "t2m.grib"}, content=b"x")
            assert up.status_code == 201, up.text
            [transfer] = api.get("/transfers", params={"destination": "alpha"}).json()
            beta_up = api.post(
                "/destinations/beta/files", params={"name": "z500.grib"}, content=b"y"
            )
            assert beta_up.status_code == 201, beta_up.text
            beta_file = beta_up.json()["id"]
        # No worker runs here: the runs are written as the acquisition workflow writes them,
        # and the transfer's host as a send attempt records it.
        engine = make_engine(settings.catalog_url)
        run = acquisition.start_run(engine, host="alpha-acq", destination="alpha")
        beta_run = acquisition.start_run(engine, host="beta-sftp", destination="beta")
        with session_scope(engine) as session:
            alpha = session.exec(select(Destination).where(Destination.name == "alpha")).one()
            host = session.exec(select(Host).where(Host.name == "alpha-h")).one()
            sent = session.get(DataTransfer, transfer["id"])
            assert alpha.id is not None and sent is not None
            sent.host_id = host.id
            session.add(sent)
            session.add(
                AcquiredFile(
                    destination_id=alpha.id,
                    key="k" * 64,
                    target="t2m.grib",
                    path="in/t2m.grib",
                    size=1,
                    data_file_id=transfer["data_file_id"],
                    run_id=run,
                )
            )
        engine.dispose()
        yield Site(base, login, transfer["id"], transfer["data_file_id"], beta_file, run, beta_run)


def logged_in(site: Site, user: str, password: str) -> httpx.Client:
    """A client holding `user`'s session cookie, logged in through the form."""
    client = httpx.Client(base_url=site.base, verify=False, timeout=30)
    form = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf, form.text
    answer = client.post(
        "/login",
        data={"csrf": csrf[1], "username": user, "password": password, "next": "/"},
    )
    assert answer.status_code == 303, answer.text
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=lax" in cookie
    return client
