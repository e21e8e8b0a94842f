"""OpenECPDS's `GET /ecpds/v1/destination/list?id=USER`, as Aviso calls it, on a served portal."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from ecpds.core.devserver import free_port

from .conftest import served_portal

PASSWORD = "dana-password-1"
OTHER_PASSWORD = "erin-password-1"
DESTINATIONS = ("d-direct", "d-policy", "d-other")


@dataclass
class Portal:
    url: str  # of the route
    admin: tuple[str, str]


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portal]:
    """dana reaches d-direct directly and d-policy by policy; erin reaches d-other;
    frank, deactivated, was given d-direct."""
    home = tmp_path_factory.mktemp("compat") / "var"
    with (
        served_portal(home, f"127.0.0.1:{free_port()}") as (settings, login),
        httpx.Client(auth=login, verify=False, timeout=30) as admin,
    ):
        base = f"https://127.0.0.1:{settings.https_port}"
        api = f"{base}/api/v1"
        for name in DESTINATIONS:
            assert admin.post(f"{api}/destinations", json={"name": name}).status_code == 201
        users = [
            {"name": "dana", "password": PASSWORD, "destinations": ["d-direct"]},
            {"name": "erin", "password": OTHER_PASSWORD, "destinations": ["d-other"]},
            {"name": "frank", "password": "frank-password", "destinations": ["d-direct"]},
        ]
        for user in users:
            assert admin.post(f"{api}/users", json=user).status_code == 201
        assert admin.patch(f"{api}/users/frank", json={"active": False}).status_code == 200
        policy = {"name": "p1", "destinations": ["d-policy"], "users": ["dana"]}
        assert admin.post(f"{api}/policies", json=policy).status_code == 201
        yield Portal(f"{base}/ecpds/v1/destination/list", login)


def ask(portal: Portal, auth: tuple[str, str], **params: str) -> httpx.Response:
    return httpx.get(portal.url, params=params, auth=auth, verify=False, timeout=30)


def names(answer: httpx.Response) -> list[str]:
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["success"] == "yes"
    return [entry["name"] for entry in body["destinationList"]]


def one_line(answer: httpx.Response, status: int) -> str:
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail
    return detail


def test_an_admin_sees_every_destination_of_itself_and_any_users(portal: Portal) -> None:
    admin_name = portal.admin[0]
    assert names(ask(portal, portal.admin, id=admin_name)) == sorted(DESTINATIONS)
    assert names(ask(portal, portal.admin, id="dana")) == ["d-direct", "d-policy"]
    assert names(ask(portal, portal.admin, id="erin")) == ["d-other"]
    assert names(ask(portal, portal.admin, id="frank")) == []  # deactivated


def test_a_data_user_sees_only_its_own_destinations(portal: Portal) -> None:
    answer = ask(portal, ("dana", PASSWORD), id="dana")
    assert answer.json() == {
        "destinationList": [{"name": "d-direct"}, {"name": "d-policy"}],
        "success": "yes",
    }
    assert names(ask(portal, ("erin", OTHER_PASSWORD), id="erin")) == ["d-other"]


def test_a_data_user_may_not_ask_about_another(portal: Portal) -> None:
    detail = one_line(ask(portal, ("dana", PASSWORD), id="erin"), 403)
    assert "dana" in detail and "erin" in detail
    # The same answer whether the other user exists or not: no probing of names.
    assert "ghost" in one_line(ask(portal, ("dana", PASSWORD), id="ghost"), 403)


def test_a_wrong_password_is_refused(portal: Portal) -> None:
    answer = ask(portal, ("dana", "not-the-password"), id="dana")
    one_line(answer, 401)
    assert answer.headers["www-authenticate"].startswith("Basic")
    one_line(httpx.get(portal.url, params={"id": "dana"}, verify=False, timeout=30), 401)


def test_an_unknown_user_has_no_destinations_and_a_missing_id_is_one_line(
    portal: Portal,
) -> None:
    unknown = ask(portal, portal.admin, id="ghost")
    assert unknown.status_code == 200
    assert unknown.json() == {
        "destinationList": [],
        "success": "no",
        "error": "unknown user 'ghost'",
    }
    assert "id" in one_line(ask(portal, portal.admin), 422)
