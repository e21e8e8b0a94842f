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

DATA_PASSWORD = "carol-password-1"


@dataclass
class Site:
    base: str
    login: tuple[str, str]
    transfer: int


@pytest.fixture(scope="module")
def site(temporal_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A served portal with two destinations and one upload to `alpha` (its transfer)."""
    home = tmp_path_factory.mktemp("console") / "var"
    queue = f"test-{uuid.uuid4().hex[:12]}"
    with served_portal(home, temporal_server, task_queue=queue) as (settings, login):
        base = f"https://127.0.0.1:{settings.https_port}"
        with httpx.Client(base_url=f"{base}/api/v1", auth=login, verify=False, timeout=30) as api:
            url = f"file://{home.parent / 'sites'}"
            assert api.post("/hosts", json={"name": "alpha-h", "url": url}).status_code == 201
            for name in ("alpha", "beta"):
                made = api.post("/destinations", json={"name": name, "hosts": ["alpha-h"]})
                assert made.status_code == 201, made.text
            user = {"name": "carol", "password": DATA_PASSWORD, "destinations": ["beta"]}
            assert api.post("/users", json=user).status_code == 201
            for name, destination, due in (
                ("t2m-alpha", "alpha", "00:00"),
                ("z500", "beta", "00:00"),
            ):
                expected = {"name": name, "destination": destination, "pattern": "zzz", "due": due}
                assert api.post("/expected", json=expected).status_code == 201
            up = api.post("/destinations/alpha/files", params={"name": "t2m.grib"}, content=b"x")
            assert up.status_code == 201, up.text
            [transfer] = api.get("/transfers", params={"destination": "alpha"}).json()
        yield Site(base, login, transfer["id"])


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
