"""The web console in headless Chromium (Debian's package, driven by Playwright) against a
served portal and a real worker: log in, hold and restart a destination with its buttons,
requeue, stop and reprioritise a selection, watch a running transfer's progress refresh, see
which host carries a destination's traffic, follow a transfer; a data user sees only its
destinations.

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
# Destination names are global on the session's Temporal server, where an earlier test may
# have left a scheduler of the same name running: these are unique.
ALPHA, BETA = (f"{name}-{uuid.uuid4().hex[:8]}" for name in ("alpha", "beta"))


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
    sites: str  # the URL of a folder hosts may write to


@pytest.fixture(scope="module")
def site(temporal_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A portal and a worker on one task queue; ALPHA has three delivered transfers."""
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
            for name in (ALPHA, BETA):
                made = api.post("/destinations", json={"name": name, "hosts": ["alpha-h"]})
                assert made.status_code == 201, made.text
            user = {"name": "carol", "password": CAROL_PASSWORD, "destinations": [BETA]}
            assert api.post("/users", json=user).status_code == 201
            for n in range(3):
                up = api.post(
                    f"/destinations/{ALPHA}/files",
                    params={"name": f"t{n}.grib"},
                    content=b"g" * 500,
                )
                assert up.status_code == 201, up.text
            wait_for(
                lambda: all(
                    t["status"] == "DONE"
                    for t in api.get("/transfers", params={"destination": ALPHA}).json()
                )
            )
            yield Site(f"https://127.0.0.1:{settings.https_port}", login, api, url)
        finally:
            worker.loop.call_soon_threadsafe(stop.set)
            running.result(60)
            worker.close()


def wait_for(
    check: Callable[[], Any], timeout: float = 60, shown: Callable[[], str] = lambda: ""
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out: {shown()}"
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
    page.click(f"a[href='/destinations/{ALPHA}']")
    page.click(f"form[action='/api/v1/destinations/{ALPHA}/operations/hold'] button")
    assert f"hold sent to {ALPHA}" in page.locator(".message").inner_text()
    wait_for(lambda: site.api.get(f"/destinations/{ALPHA}").json()["on_hold"])
    page.click(f"form[action='/api/v1/destinations/{ALPHA}/operations/restart'] button")
    wait_for(lambda: not site.api.get(f"/destinations/{ALPHA}").json()["on_hold"])
    page.reload()  # the catalog now says so; the page shows it
    assert page.locator(".held").count() == 0
    page.screenshot(path=str(tmp_path / "destination.png"))

    page.goto(f"{site.base}/transfers?destination={ALPHA}")
    ids = [t["id"] for t in site.api.get("/transfers", params={"destination": ALPHA}).json()]
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
    assert page.locator(f"a:has-text('transfer-{ALPHA}-{ids[0]}')").count() == 1
    page.screenshot(path=str(tmp_path / "transfer.png"))


def test_a_data_user_sees_only_its_destinations(browser: Any, site: Site) -> None:
    page = log_in(browser, site, "carol", CAROL_PASSWORD)
    page.goto(f"{site.base}/destinations")
    assert page.locator(f"a[href='/destinations/{BETA}']").count() == 1
    assert page.locator(f"a[href='/destinations/{ALPHA}']").count() == 0
    answer = page.goto(f"{site.base}/destinations/{ALPHA}")
    assert answer is not None and answer.status == 404


def test_running_progress_refreshes_and_a_selection_gets_a_priority(
    browser: Any, site: Site, tmp_path: Path
) -> None:
    # A host held to 64 KiB/s: a 4 MiB upload runs for about a minute, unless stopped.
    slow = f"slow-{uuid.uuid4().hex[:8]}"  # unique, as ALPHA is
    options = {"max_rate": 64 << 10, "chunk_size": 64 << 10}
    url = f"file://{tmp_path / 'slow-sites'}"
    made = site.api.post("/hosts", json={"name": "slow-h", "url": url, "options": options})
    assert made.status_code == 201, made.text
    made = site.api.post("/destinations", json={"name": slow, "hosts": ["slow-h"]})
    assert made.status_code == 201, made.text
    up = site.api.post(
        f"/destinations/{slow}/files", params={"name": "s.grib"}, content=b"s" * (4 << 20)
    )
    assert up.status_code == 201, up.text
    [running] = site.api.get("/transfers", params={"destination": slow}).json()
    tid = running["id"]
    # A bound, not a timing check: the module's worker may still be busy with earlier work.
    wait_for(
        lambda: site.api.get(f"/transfers/{tid}").json()["bytes_sent"] > 0,
        timeout=180,
        shown=lambda: site.api.get(f"/transfers/{tid}").text,
    )

    page = log_in(browser, site, *site.login)
    page.goto(f"{site.base}/destinations/{slow}")
    live = page.locator(f"[data-live='/destinations/{slow}/running']")
    assert "/ 4.0 MiB at " in live.locator("td.progress").inner_text()
    assert page.locator(".traffic").inner_text() == "primary in use"
    assert page.locator("table.hosts tr.in-use td").nth(1).inner_text() == "slow-h"
    # console.js stamps each swap: two different stamps are two fetches of the fragment.
    page.wait_for_function("() => document.querySelector('[data-live]').dataset.updated")
    first = live.get_attribute("data-updated")
    page.wait_for_function(
        "first => document.querySelector('[data-live]').dataset.updated !== first", arg=first
    )
    shown = live.locator("td.progress").inner_text()
    assert " left" in shown and "KiB/s" in shown, shown
    page.screenshot(path=str(tmp_path / "running.png"))

    page.goto(f"{site.base}/transfers/{tid}")
    assert "of 4.0 MiB" in page.locator("tbody[data-live] td.progress").inner_text()

    page.goto(f"{site.base}/transfers?destination={slow}")
    page.check(f"input[name=id][value='{tid}']")
    page.click("button[value=stop]")
    assert "stop sent for 1 transfer" in page.locator(".message").inner_text()
    wait_for(lambda: site.api.get(f"/transfers/{tid}").json()["status"] == "STOP")

    ids = [t["id"] for t in site.api.get("/transfers", params={"destination": ALPHA}).json()]
    page.goto(f"{site.base}/transfers?destination={ALPHA}")
    for chosen in ids[:2]:
        page.check(f"input[name=id][value='{chosen}']")
    page.fill("input[name=value]", "5")
    page.click("button[value=priority]")
    assert "priority 5 sent for 2 transfers" in page.locator(".message").inner_text()
    wait_for(lambda: all(site.api.get(f"/transfers/{t}").json()["priority"] == 5 for t in ids[:2]))
    assert site.api.get(f"/transfers/{ids[2]}").json()["priority"] == 99


def test_a_destination_shows_its_backup_carrying_the_traffic(browser: Any, site: Site) -> None:
    down = f"down-{uuid.uuid4().hex[:8]}"  # unique on the shared Temporal server
    # Nothing can be written below /proc, even as root: the primary fails every cycle.
    common = {"retry_count": 0, "retry_frequency": 1}
    for name, url in (("down-p", "file:///proc/ecpds-down"), ("down-b", site.sites)):
        made = site.api.post("/hosts", json={"name": name, "url": url, **common})
        assert made.status_code == 201, made.text
    made = site.api.post(
        "/destinations",
        json={
            "name": down,
            "hosts": ["down-p", "down-b"],
            "on_host_failure": "next_and_stay",
            "retry_frequency": 1,
        },
    )
    assert made.status_code == 201, made.text
    up = site.api.post(f"/destinations/{down}/files", params={"name": "d.grib"}, content=b"d" * 100)
    assert up.status_code == 201, up.text
    [sent] = site.api.get("/transfers", params={"destination": down}).json()
    wait_for(lambda: site.api.get(f"/transfers/{sent['id']}").json()["status"] == "DONE")
    assert site.api.get(f"/transfers/{sent['id']}").json()["host"] == "down-b"

    page = log_in(browser, site, *site.login)
    page.goto(f"{site.base}/destinations/{down}")
    assert page.locator(".traffic").inner_text() == "backup down-b in use"
    rows = page.locator("table.hosts tbody tr")
    assert rows.nth(0).locator("td").nth(1).inner_text() == "down-p"
    assert rows.nth(0).locator("td").nth(6).inner_text() == "never"
    assert rows.nth(1).get_attribute("class") == "in-use"
    assert rows.nth(1).locator("td").nth(6).inner_text() != "never"

    # With the failing host alone, its transfer waits for a retry: a failed cycle on it.
    made = site.api.post("/destinations", json={"name": "dead", "hosts": ["down-p"]})
    assert made.status_code == 201, made.text
    up = site.api.post("/destinations/dead/files", params={"name": "e.grib"}, content=b"e")
    assert up.status_code == 201, up.text
    [waiting] = site.api.get("/transfers", params={"destination": "dead"}).json()

    def failed_once() -> bool:
        now = site.api.get(f"/transfers/{waiting['id']}").json()
        return now["retry_at"] is not None and now["host"] == "down-p"

    wait_for(failed_once)
    page.goto(f"{site.base}/destinations/dead")
    [row] = page.locator("table.hosts tbody tr").all()
    assert row.locator("td").nth(7).inner_text() == "1"
    assert page.locator(".traffic").inner_text() == "none yet"
    stopped = site.api.post(f"/transfers/{waiting['id']}/operations/stop")
    assert stopped.status_code == 202, stopped.text


def test_an_operator_follows_a_host_to_its_transfers_and_their_files(
    browser: Any, site: Site
) -> None:
    page = log_in(browser, site, *site.login)
    page.click("nav a[href='/hosts']")
    page.click("a[href='/hosts/alpha-h']")
    assert page.locator("h1").inner_text().startswith("alpha-h")
    assert page.locator(f"a[href='/destinations/{ALPHA}']").count() >= 1
    page.click("nav a[href='/datafiles']")
    page.locator("table.datafiles a").first.click()
    assert page.locator("table.transfers a[href^='/transfers/']").count() >= 1
