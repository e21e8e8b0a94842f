"""Every console page with a big catalog (1,000 destinations, 200,000 transfers): each GET
route of the app, its path filled from seeded samples and its list filters tried, answers
the admin and a data user without a server error (issue 15)."""

from __future__ import annotations

import contextlib
import enum
import re
import time
import types
import typing
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from peers.catalog import PG_URL, fresh_pg_schema
from peers.seed import seed
from portal.conftest import served_portal

from console.conftest import DATA_PASSWORD, Site, logged_in
from ecpds.core import acquisition
from ecpds.core.db import open_catalog
from ecpds.core.secrets import CredentialBox, load_or_create_key
from ecpds.portal.api.app import create_app

DESTINATIONS = 1_000
TRANSFERS = 200_000
# The other doors of the same app, and the login form (tested in test_pages.py).
OTHER_DOORS = ("/api/", "/data/", "/ecpds/", "/console-static", "/metrics", "/login")
# Pages a data user may not open at all: it gets 404, as for a page that does not exist.
ADMIN_ONLY = {"/events", "/users", "/users/{name}", "/policies", "/policies/{name}"}
MINE = ["site-0001", "site-0002", "site-0003"]  # carol's
THEIRS = "site-0500"
# Values for the list pages' query parameters that are not an enum (every member is tried)
# or `page` (2).
FILTERS = {
    "name": "00",
    "destination": MINE[0],
    "user": "admin",
    "group": "g",
    "file": "no-such-file",
    "since": "2026-01-01T00:00:00",
    "until": "2099-01-01T00:00:00",
    "host": "source-h",
    "status": "ok",  # an acquisition run's (the transfer and destination ones are enums)
}


@dataclass
class Sample:
    """A value for a path parameter: one the data user reaches, and one it does not."""

    mine: str
    theirs: str


@dataclass
class BigSite:
    site: Site
    # By the path segment before a parameter: /destinations/{name} takes "destinations".
    samples: dict[str, Sample]
    seeded_in: float
    routes: list[RouteContext]


@pytest.fixture(scope="module")
def big(temporal_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BigSite]:
    """A served portal on a seeded catalog (PostgreSQL when configured), with real rows
    among the seeded ones: hosts, a data user and a policy, expected products, uploads
    (their transfers and a notification) and acquisition runs."""
    folder = tmp_path_factory.mktemp("big")
    url = fresh_pg_schema(PG_URL) if PG_URL else f"sqlite:///{folder / 'catalog.db'}"
    engine = open_catalog(url)
    began = time.perf_counter()
    seed(engine, destinations=DESTINATIONS, transfers=TRANSFERS)
    seeded_in = time.perf_counter() - began
    home = folder / "var"
    queue = f"test-{uuid.uuid4().hex[:12]}"
    try:
        with served_portal(home, temporal_server, task_queue=queue, database_url=url) as (
            settings,
            login,
        ):
            base = f"https://127.0.0.1:{settings.https_port}"
            with httpx.Client(
                base_url=f"{base}/api/v1", auth=login, verify=False, timeout=60
            ) as api:
                files, transfers = _real_rows(api, home.parent / "sites")
            box = CredentialBox(load_or_create_key(settings.key_file))
            runs = {}
            for destination in (MINE[0], THEIRS):
                run = acquisition.start_run(engine, host="source-h", destination=destination)
                acquisition.finish_run(engine, box, run_id=run, discovered=None, error=None)
                runs[destination] = str(run)
            samples = {
                "destinations": Sample(MINE[0], THEIRS),
                "transfers": Sample(transfers[MINE[0]], transfers[THEIRS]),
                "files": Sample(files[MINE[0]], files[THEIRS]),
                "datafiles": Sample(files[MINE[0]], files[THEIRS]),
                "hosts": Sample("site-h", "source-h"),
                "users": Sample("carol", "admin"),
                "policies": Sample("europe", "polar"),
                "expected": Sample("t2m-0001", "z500-0500"),
                "runs": Sample(runs[MINE[0]], runs[THEIRS]),
                "acquisition": Sample(runs[MINE[0]], runs[THEIRS]),
            }
            app = create_app(settings, engine=engine)
            yield BigSite(
                Site(
                    base,
                    login,
                    int(transfers[MINE[0]]),
                    files[MINE[0]],
                    files[THEIRS],
                    int(runs[MINE[0]]),
                    int(runs[THEIRS]),
                ),
                samples,
                seeded_in,
                [page for page in iter_route_contexts(app.routes) if _console_page(page)],
            )
    finally:
        engine.dispose()


def _real_rows(api: httpx.Client, sites: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Rows as operators and users make them, through the REST API; the uploads' data file
    and transfer ids by destination."""
    for host in (
        {"name": "site-h", "url": f"file://{sites}"},
        {"name": "source-h", "url": f"file://{sites}/incoming", "kind": "acquisition"},
    ):
        assert api.post("/hosts", json=host).status_code == 201
    for name in [*MINE, THEIRS]:
        change = {"hosts": ["site-h"], "notification": {"notify": "store"}}
        assert api.patch(f"/destinations/{name}", json=change).status_code == 200
    user = {"name": "carol", "password": DATA_PASSWORD, "destinations": MINE[:2]}
    assert api.post("/users", json=user).status_code == 201
    for policy in (
        {"name": "europe", "destinations": MINE[2:], "users": ["carol"]},
        {"name": "polar", "destinations": [THEIRS]},
    ):
        assert api.post("/policies", json=policy).status_code == 201
    for name, destination in (("t2m-0001", MINE[0]), ("z500-0500", THEIRS)):
        expected = {"name": name, "destination": destination, "pattern": "t2m", "due": "00:00"}
        assert api.post("/expected", json=expected).status_code == 201
    files, transfers = {}, {}
    for destination in (MINE[0], THEIRS):
        up = api.post(
            f"/destinations/{destination}/files", params={"name": "t2m.grib"}, content=b"x"
        )
        assert up.status_code == 201, up.text
        files[destination] = up.json()["id"]
        [transfers[destination]] = map(str, up.json()["transfers"])
    return files, transfers


def _console_page(route: RouteContext) -> bool:
    return "GET" in (route.methods or ()) and not (route.path or "/").startswith(OTHER_DOORS)


def _filled(route: RouteContext, samples: dict[str, Sample]) -> tuple[str, str]:
    """The route's path for the data user's things, and for another user's."""
    mine = theirs = route.path
    for segment, parameter in re.findall(r"([^/]+)/\{(\w+)[^}]*\}", route.path):
        sample = samples.get(segment)
        assert sample is not None, (
            f"add a sample for {route.path} (samples[{segment!r}] in {__name__})"
        )
        placeholder = re.compile(r"\{" + parameter + r"(:[^}]*)?\}")
        mine = placeholder.sub(sample.mine, mine, count=1)
        theirs = placeholder.sub(sample.theirs, theirs, count=1)
    return mine, theirs


def _enum_of(annotation: object) -> type[enum.Enum] | None:
    candidates = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else ()
    for candidate in (annotation, *candidates):
        if isinstance(candidate, type) and issubclass(candidate, enum.Enum):
            return candidate
    return None


def _queries(route: RouteContext) -> list[str]:
    """Each list filter alone (every member of an enum), then all of them together."""
    if not isinstance(route.original_route, APIRoute):
        return []
    choices: dict[str, list[str]] = {}
    for parameter in route.original_route.dependant.query_params:
        kind = _enum_of(parameter.field_info.annotation)
        if kind is not None:
            choices[parameter.name] = [str(member.value) for member in kind]
        elif parameter.name == "page":
            choices[parameter.name] = ["2"]
        else:
            assert parameter.name in FILTERS, (
                f"add a filter sample for ?{parameter.name}= of {route.path}"
                f" (FILTERS in {__name__})"
            )
            choices[parameter.name] = [FILTERS[parameter.name]]
    alone = [urlencode({name: value}) for name, values in choices.items() for value in values]
    together = [urlencode({name: values[0] for name, values in choices.items()})]
    return alone + together if len(choices) > 1 else alone


def _get(client: httpx.Client, page: str, times: dict[str, float]) -> httpx.Response:
    began = time.perf_counter()
    answer = client.get(page)
    times[page] = max(times.get(page, 0.0), time.perf_counter() - began)
    assert "Traceback" not in answer.text and "Internal Server Error" not in answer.text, page
    return answer


def test_every_page_answers_with_a_big_catalog(
    big: BigSite, capsys: pytest.CaptureFixture[str]
) -> None:
    began = time.perf_counter()
    times: dict[str, float] = {}
    paths = {route.path for route in big.routes}
    assert {"/", "/destinations/{name}", "/transfers/{id}"} <= paths, paths  # found them
    with (
        contextlib.closing(logged_in(big.site, *big.site.login)) as admin,
        contextlib.closing(logged_in(big.site, "carol", DATA_PASSWORD)) as carol,
    ):
        for route in big.routes:
            mine, theirs = _filled(route, big.samples)
            admin_only = route.path in ADMIN_ONLY
            for page in dict.fromkeys([mine, theirs]):
                answer = _get(admin, page, times)
                assert answer.status_code == 200, f"admin at {page}: {answer.status_code}"
            answer = _get(carol, mine, times)
            expected = 404 if admin_only else 200
            assert answer.status_code == expected, (
                f"data user at {mine}: {answer.status_code}, not {expected}"
                + (
                    ""
                    if admin_only
                    else f" (an admin-only page? add it to ADMIN_ONLY in {__name__})"
                )
            )
            if theirs != mine:
                answer = _get(carol, theirs, times)
                assert answer.status_code == 404, f"data user at {theirs}: {answer.status_code}"
            for query in _queries(route):
                for who, client, want in (("admin", admin, 200), ("data user", carol, expected)):
                    answer = _get(client, f"{mine}?{query}", times)
                    assert answer.status_code == want, (
                        f"{who} at {mine}?{query}: {answer.status_code}, not {want}"
                    )
        # The seeded rows are on the pages, not only a page frame.
        assert "site-0999" in _get(admin, "/destinations?page=20", times).text
        assert "product-" in _get(admin, "/transfers", times).text
        assert "<td>site-h</td>" in _get(admin, f"/destinations/{MINE[0]}", times).text
        # Each upload's announcement waits in the outbox (no worker publishes here).
        for client, backlog in ((admin, 2), (carol, 1)):
            dashboard = _get(client, "/", times).text
            assert f'backlog</h2><p class="big">{backlog}</p>' in dashboard, dashboard
        listing = _get(carol, "/destinations", times).text
        assert all(f"/destinations/{name}" in listing for name in MINE)
        assert f"/destinations/{THEIRS}" not in listing
    slowest = sorted(times.items(), key=lambda item: item[1], reverse=True)[:5]
    with capsys.disabled():
        print(
            f"\n{len(times)} pages of {len(big.routes)} routes"
            f" in {time.perf_counter() - began:.1f} s after seeding {DESTINATIONS:,}"
            f" destinations and {TRANSFERS:,} transfers"
            f" in {big.seeded_in:.1f} s ({'PostgreSQL' if PG_URL else 'SQLite'}); slowest:"
        )
        for page, seconds in slowest:
            print(f"  {seconds * 1000:7.0f} ms  {page}")
