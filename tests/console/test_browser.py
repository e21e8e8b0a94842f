"""The web console in headless Chromium (Debian's package, driven by Playwright) against a
served portal and a real worker: log in, hold and restart a destination with its buttons,
requeue a selection, follow a transfer; a data user sees only its destinations.

Playwright's sync API runs outside any event loop, so these are plain test functions.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from peers.loop import LoopThread
from portal.conftest import served_portal

from ecpds.workers.worker import run_worker

CAROL_PASSWORD = "carol-password-1"


def chromium() -> str:
    found = shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )
    if found is None:
        pytest.skip("Debian's chromium package is not installed (tests/peers/install.sh)")
    return found


@dataclass
class Site:
    base: str
    login: tuple[str, str]
    api: httpx.Client


@pytest.fixture(scope="module")
def site(temporal_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A portal and a worker on one task queue; `alpha` has three delivered transfers."""
    home = tmp_path_factory.mktemp("browser") / "var"
    queue = f"test-{uuid.uuid4().hex[:12]}"
    with (
        served_portal(home, temporal_server, task_queue=queue) as (settings, login),
        httpx.Client(
            base_url=f"https://127.0.0.1:{settings.https_port}/api/v1",
            auth=login,
            verify=False,
            timeout=30,
        ) as api,
    ):
        worker = LoopThread()
        stop = asyncio.Event()
        running = worker.submit(run_worker(settings, stop))
        try:
            url = f"file://{home.parent / 'sites'}"
            assert api.post("/hosts", json={"name": "alpha-h", "url": url}).status_code == 201
            for name in ("alpha", "beta"):
                made = api.post("/destinations", json={"name": name, "hosts": ["alpha-h"]})
                assert made.status_code == 201, made.text
            user = {"name": "carol", "password": CAROL_PASSWORD, "destinations": ["beta"]}
            assert api.post("/users", json=user).status_code == 201
            for n in range(3):
                up = api.post(
                    "/destinations/alpha/files", params={"name": f"t{n}.grib"}, content=b"g" * 500
                )
                assert up.status_code == 201, up.text
            wait_for(
                lambda: all(
                    t["status"] == "DONE"
                    for t in api.get("/transfers", params={"destination": "alpha"}).json()
                )
            )
            yield Site(f"https://127.0.0.1:{settings.https_port}", login, api)
        finally:
            worker.loop.call_soon_threadsafe(stop.set)
            running.result(60)
            worker.close()


def wait_for(check: Callable[[], Any], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.3)


@pytest.fixture
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    executable = chromium()
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True)
        yield launched
        launched.close()


def log_in(browser: Any, site: Site, user: str, password: str) -> Any:
    page = browser.new_context(
        ignore_https_errors=True, viewport={"width": 1000, "height": 700}
    ).new_page()
    page.goto(f"{site.base}/")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{site.base}/")
    return page


def test_an_operator_holds_restarts_and_requeues(browser: Any, site: Site, tmp_path: Path) -> None:
    page = log_in(browser, site, *site.login)
    assert page.locator("h1").inner_text() == "Dashboard"
    page.screenshot(path=str(tmp_path / "dashboard.png"))

    page.goto(f"{site.base}/destinations")
    page.click("a[href='/destinations/alpha']")
    page.click("form[action='/destinations/alpha/operations/hold'] button")
    assert "hold sent to alpha" in page.locator(".message").inner_text()
    wait_for(lambda: site.api.get("/destinations/alpha").json()["on_hold"])
    page.click("form[action='/destinations/alpha/operations/restart'] button")
    wait_for(lambda: not site.api.get("/destinations/alpha").json()["on_hold"])
    page.reload()  # the catalog now says so; the page shows it
    assert page.locator(".held").count() == 0
    page.screenshot(path=str(tmp_path / "destination.png"))

    page.goto(f"{site.base}/transfers?destination=alpha")
    ids = [t["id"] for t in site.api.get("/transfers", params={"destination": "alpha"}).json()]
    for tid in ids[:2]:
        page.check(f"input[name=id][value='{tid}']")
    page.click("button[value=requeue]")
    assert "requeue sent for 2 transfers" in page.locator(".message").inner_text()
    wait_for(
        lambda: all(site.api.get(f"/transfers/{t}").json()["requeue_count"] == 1 for t in ids[:2])
    )
    assert site.api.get(f"/transfers/{ids[2]}").json()["requeue_count"] == 0

    page.click(f"a[href='/transfers/{ids[0]}']")
    assert page.locator("h1").inner_text().startswith(f"Transfer {ids[0]}")
    assert page.locator(f"a:has-text('transfer-alpha-{ids[0]}')").count() == 1
    page.screenshot(path=str(tmp_path / "transfer.png"))


def test_a_data_user_sees_only_its_destinations(browser: Any, site: Site) -> None:
    page = log_in(browser, site, "carol", CAROL_PASSWORD)
    page.goto(f"{site.base}/destinations")
    assert page.locator("a[href='/destinations/beta']").count() == 1
    assert page.locator("a[href='/destinations/alpha']").count() == 0
    answer = page.goto(f"{site.base}/destinations/alpha")
    assert answer is not None and answer.status == 404


def test_an_operator_follows_a_host_to_its_transfers_and_their_files(
    browser: Any, site: Site
) -> None:
    page = log_in(browser, site, *site.login)
    page.click("nav a[href='/hosts']")
    page.click("a[href='/hosts/alpha-h']")
    assert page.locator("h1").inner_text().startswith("alpha-h")
    assert page.locator("a[href='/destinations/alpha']").count() >= 1
    page.click("nav a[href='/datafiles']")
    page.locator("table.datafiles a").first.click()
    assert page.locator("table.transfers a[href^='/transfers/']").count() >= 1
