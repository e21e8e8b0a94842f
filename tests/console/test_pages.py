"""The web console over HTTPS (httpx, no browser): every page answers, the access layer
decides who sees what, and a POST without the session's CSRF token is refused."""

from __future__ import annotations

import contextlib
import html
import re

import httpx

from console.conftest import DATA_PASSWORD, Site, logged_in
from ecpds.portal.console import units


def test_every_page_answers_for_an_admin(site: Site) -> None:
    with contextlib.closing(logged_in(site, *site.login)) as admin:
        pages = [
            "/",
            "/destinations",
            "/destinations?name=alp&status=Idle",
            "/destinations/alpha",
            "/transfers",
            "/transfers?destination=alpha&status=WAIT&name=t2m",
            f"/transfers/{site.transfer}",
            "/arrivals",
            "/events",
            "/events?user=admin",
            "/console-static/console.css",
            "/console-static/console.js",
        ]
        for page in pages:
            answer = admin.get(page)
            assert answer.status_code == 200, (page, answer.text)
            assert "Traceback" not in answer.text and "Internal Server Error" not in answer.text
        assert "t2m.grib" in admin.get("/transfers?destination=alpha").text
        assert f"transfer-alpha-{site.transfer}" in admin.get(f"/transfers/{site.transfer}").text
        assert admin.get("/destinations/nowhere").status_code == 404
        # Due at 00:00 and never arrived (nothing matches "zzz"): missing, on the dashboard.
        assert "Expected products late or missing" in admin.get("/").text
        assert "t2m-alpha (alpha, due 00:00): missing" in admin.get("/").text
        assert admin.get("/arrivals").text.count("<td>missing</td>") == 2
        assert "POST /api/v1/expected" in admin.get("/events").text


def test_a_post_without_the_csrf_token_is_refused(site: Site) -> None:
    bulk = "/api/v1/transfers/operations"
    with contextlib.closing(logged_in(site, *site.login)) as admin:
        refused = admin.post("/api/v1/destinations/alpha/operations/hold", data={})
        assert refused.status_code == 403
        assert refused.json()["detail"].startswith("missing or wrong CSRF token")
        for operation in ("requeue", "stop", "priority"):
            wrong = admin.post(
                f"{bulk}/{operation}", data={"csrf": "forged", "id": site.transfer, "value": 5}
            )
            assert wrong.status_code == 403, operation
        assert admin.post(f"{bulk}/stop", data={"id": site.transfer}).status_code == 403
        # Without a form, the session's token comes in the X-CSRF-Token header.
        assert admin.post(f"{bulk}/stop", params={"id": site.transfer}).status_code == 403
        forged = admin.post(f"{bulk}/stop", headers={"X-CSRF-Token": "forged"})
        assert forged.status_code == 403
        # A read needs no token: the console's cookie logs in to the REST API too.
        assert admin.get("/api/v1/destinations/alpha").json()["name"] == "alpha"
    anonymous = httpx.post(f"{site.base}/login", data={"username": "x"}, verify=False)
    assert anonymous.status_code == 403
    forged_cookie = httpx.get(
        f"{site.base}/api/v1/destinations", cookies={"ecpds_console": "x.y"}, verify=False
    )
    assert forged_cookie.status_code == 401
    assert forged_cookie.json()["detail"] == "the console session has ended: log in again"


def test_a_console_operation_is_the_rest_apis_and_lands_in_the_event_log(site: Site) -> None:
    with contextlib.closing(logged_in(site, *site.login)) as admin:
        csrf = _csrf(admin, "/destinations/alpha")
        page = admin.get("/destinations/alpha").text
        assert 'action="/api/v1/destinations/alpha/operations/clean-expired"' in page
        form = {"csrf": csrf, "next": "/destinations/alpha"}
        answer = admin.post("/api/v1/destinations/alpha/operations/clean-expired", data=form)
        assert answer.status_code == 303, answer.text
        assert answer.headers["location"] == (
            "/destinations/alpha?message=clean-expired+sent+to+alpha"
        )
        # The same route, called as an API client: JSON, not a redirect.
        api = admin.post(
            "/api/v1/transfers/operations/schedule-now",
            params={"id": [site.transfer, 999999]},
            headers={"X-CSRF-Token": csrf},
        )
        assert api.status_code == 202, api.text
        assert api.json() == {
            "operation": "schedule-now",
            "value": None,
            "sent": [site.transfer],
            "refused": [
                {"transfer": 999999, "status": 404, "detail": "transfer 999999 does not exist"}
            ],
        }
        # A form's `next` elsewhere than this site goes back to the console's root.
        away = admin.post(
            "/api/v1/destinations/alpha/operations/clean-expired",
            data={"csrf": csrf, "next": "//elsewhere.example/"},
        )
        assert away.headers["location"].startswith("/?message=")
        events = admin.get("/events?user=admin").text
        assert "POST /api/v1/destinations/alpha/operations/clean-expired" in html.unescape(events)


def test_a_data_user_sees_only_its_destinations(site: Site) -> None:
    assert httpx.get(f"{site.base}/", verify=False).status_code == 303  # to the login form
    with contextlib.closing(logged_in(site, "carol", DATA_PASSWORD)) as carol:
        listing = carol.get("/destinations").text
        assert "/destinations/beta" in listing and "/destinations/alpha" not in listing
        assert carol.get("/destinations/alpha").status_code == 404
        assert carol.get(f"/transfers/{site.transfer}").status_code == 404
        assert "t2m.grib" not in carol.get("/transfers").text
        arrivals = carol.get("/arrivals").text
        assert "z500" in arrivals and "t2m-alpha" not in arrivals
        assert carol.get("/events").status_code == 404
        page = carol.get("/destinations/beta")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf and "clean-expired" not in page.text  # no operation buttons
        hold = "/api/v1/destinations/beta/operations/hold"
        refused = carol.post(hold, data={"csrf": csrf[1]})
        assert refused.status_code == 403
        assert refused.json()["detail"] == "user 'carol' is not an admin"
        bulk = {"csrf": csrf[1], "id": site.transfer, "value": 1}
        priority = "/api/v1/transfers/operations/priority"
        assert carol.post(priority, data=bulk).status_code == 403
        assert carol.get("/destinations/alpha/running").status_code == 404
        assert carol.get(f"/transfers/{site.transfer}/progress").status_code == 404
        assert carol.get("/destinations/beta/running").status_code == 200
    assert httpx.get(f"{site.base}/destinations/beta/running", verify=False).status_code == 303


def _csrf(client: httpx.Client, page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', client.get(page).text)
    assert found
    return found[1]


def test_a_selection_gets_one_operation_and_a_bad_one_a_message(site: Site) -> None:
    with contextlib.closing(logged_in(site, *site.login)) as admin:
        page = admin.get("/transfers").text
        for label in ("Requeue selected", "Stop selected", "Set priority of selected"):
            assert label in page
        csrf = _csrf(admin, "/transfers")

        def bulk(operation: str, **fields: object) -> str:
            answer = admin.post(
                f"/api/v1/transfers/operations/{operation}",
                data={"csrf": csrf, "next": "/transfers?destination=alpha", **fields},
            )
            assert answer.status_code == 303, answer.text
            assert answer.headers["location"].startswith("/transfers?destination=alpha&message=")
            shown = admin.get(answer.headers["location"])
            assert shown.status_code == 200
            found = re.search(r'<p class="message">([^<]*)</p>', shown.text)
            assert found, shown.text
            return html.unescape(found[1])

        one = {"id": site.transfer}
        assert bulk(operation="priority", value="7", **one) == "priority 7 sent for 1 transfer"
        assert bulk(operation="schedule-now", **one) == "schedule-now sent for 1 transfer"
        assert bulk(operation="priority", value="150", **one) == (
            "priority 150 is out of range: use 0 (urgent) to 99"
        )
        assert bulk(operation="priority", value="high", **one) == (
            "priority 'high' is not a number from 0 (urgent) to 99"
        )
        assert bulk(operation="priority", value="²", **one) == (
            "priority '²' is not a number from 0 (urgent) to 99"
        )
        assert bulk(operation="hold", **one) == "hold is not a transfer operation"
        assert bulk(operation="extend", value="soon", **one) == (
            "extend 'soon' is not a number of seconds"
        )
        assert bulk(operation="priority", **one) == (
            "priority '' is not a number from 0 (urgent) to 99"
        )
        assert bulk(operation="stop") == "no transfer selected"
        assert bulk(operation="stop", id="²") == "no transfer selected"
        assert bulk(operation="stop", id=["999999", str(site.transfer)]) == (
            "stop sent for 1 transfer; transfer 999999 does not exist"
        )


def test_the_live_fragments_show_progress_in_human_units(site: Site) -> None:
    with contextlib.closing(logged_in(site, *site.login)) as admin:
        page = admin.get("/destinations/alpha").text
        assert 'data-live="/destinations/alpha/running"' in page
        assert '<script src="/console-static/console.js" defer></script>' in page
        running = admin.get("/destinations/alpha/running")
        assert running.status_code == 200
        assert '<table class="transfers">' in running.text and "<html" not in running.text
        progress = admin.get(f"/transfers/{site.transfer}/progress")
        assert progress.status_code == 200 and "<html" not in progress.text
        assert "0 B of 1 B" in progress.text  # the upload is one byte, nothing sent yet
        assert admin.get("/destinations/nowhere/running").status_code == 404
        assert admin.get("/transfers/999999/progress").status_code == 404


def test_a_destination_shows_its_hosts_in_order_and_which_carries_traffic(site: Site) -> None:
    with contextlib.closing(
        httpx.Client(base_url=f"{site.base}/api/v1", auth=site.login, verify=False)
    ) as api:
        url = "file:///nowhere"
        for name in ("gamma-1", "gamma-2"):
            assert api.post("/hosts", json={"name": name, "url": url}).status_code == 201
        made = api.post("/destinations", json={"name": "gamma", "hosts": ["gamma-1", "gamma-2"]})
        assert made.status_code == 201, made.text
    with contextlib.closing(logged_in(site, *site.login)) as admin:
        page = admin.get("/destinations/gamma").text
        hosts = re.search(r'<table class="hosts">(.*?)</table>', page, re.S)
        assert hosts
        rows = re.findall(r"<tr[^>]*><td>([^<]*)</td><td>([^<]*)</td>", hosts[1])
        assert rows == [("primary", "gamma-1"), ("backup 1", "gamma-2")]
        assert hosts[1].count("never") == 2  # nothing delivered yet
        assert "failed (last 6 h)" in hosts[1]
        assert '<p class="big traffic">none yet</p>' in page
        assert "Window (UTC)" in page and "Waiting" in page


def test_sizes_rates_and_durations_read_in_human_units() -> None:
    assert [units.size(n) for n in (0, 1023, 1536, 10 << 20, 200 << 20, 5 << 30)] == [
        "0 B",
        "1023 B",
        "1.5 KiB",
        "10.0 MiB",
        "200 MiB",
        "5.0 GiB",
    ]
    assert units.rate(1.5 * (1 << 20)) == "1.5 MiB/s"
    assert [units.duration(s) for s in (0.4, 45, 80, 3600, 7500, 90061)] == [
        "0 s",
        "45 s",
        "1 min 20 s",
        "1 h",
        "2 h 5 min",
        "1 d 1 h",
    ]
    assert units.size(None) == units.rate(None) == units.duration(None) == ""


def test_the_dashboard_shows_the_days_traffic_runs_and_store(site: Site) -> None:
    with contextlib.closing(logged_in(site, *site.login)) as admin:
        page = admin.get("/").text
    assert re.search(r"Counts as of \d\d:\d\d:\d\d UTC", page)
    # The two uploads, to alpha and beta, queued a transfer each in the last 24 hours.
    assert re.search(r"Transfers queued per hour, \d\d:00 to now \(UTC\):\s+2 in all", page)
    assert page.count("<svg") == 3 and page.count('class="bar-queued"') == 24
    assert "no acquisition runs" not in page and "alpha-acq" in page  # the fixture's runs
    store = re.search(r"<tr><td><code>([^<]+)</code></td><td>(\d+)</td>", page)
    assert store and store[1].endswith("store") and store[2] == "2"  # the uploaded files
    with contextlib.closing(logged_in(site, "carol", DATA_PASSWORD)) as carol:
        mine = carol.get("/").text
    # carol reaches beta only: none of alpha's traffic or runs, and no store usage.
    assert re.search(r"Transfers queued per hour, \d\d:00 to now \(UTC\):\s+1 in all", mine)
    assert "alpha-acq" not in mine
    assert "Store usage" not in mine and "Store usage" in page


def test_arrivals_charts_the_busiest_destinations_or_the_one_asked(site: Site) -> None:
    queued = r"{}: transfers queued per hour, \d\d:00 to now \(UTC\):\s+{} in all"
    with contextlib.closing(logged_in(site, *site.login)) as admin:
        busiest = admin.get("/arrivals").text
        assert 'id="chart-alpha"' in busiest and 'id="chart-beta"' in busiest
        assert re.search(queued.format("alpha", 1), busiest)
        beta = admin.get("/arrivals", params={"destination": "beta"}).text
        assert 'id="chart-beta"' in beta and 'id="chart-alpha"' not in beta
        assert re.search(queued.format("beta", 1), beta)
        unknown = admin.get("/arrivals", params={"destination": "nowhere"})
        assert unknown.status_code == 404 and "nowhere" in unknown.text
        assert "Traceback" not in unknown.text
    with contextlib.closing(logged_in(site, "carol", DATA_PASSWORD)) as carol:
        mine = carol.get("/arrivals").text
        assert 'id="chart-alpha"' not in mine and 'id="chart-beta"' in mine
        assert carol.get("/arrivals", params={"destination": "alpha"}).status_code == 404


def test_transfers_are_found_by_data_file_and_queue_time(site: Site) -> None:
    with contextlib.closing(logged_in(site, *site.login)) as admin:
        by_file = admin.get("/transfers", params={"file": site.data_file}).text
        assert "t2m.grib" in by_file and "z500.grib" not in by_file
        today = admin.get("/transfers", params={"since": "2000-01-01T00:00"}).text
        assert "t2m.grib" in today and "z500.grib" in today
        later = admin.get("/transfers", params={"since": "2099-01-01T00:00"}).text
        assert "t2m.grib" not in later and '<td colspan="8">none</td>' in later
        before = admin.get("/transfers", params={"until": "2000-01-01T00:00"}).text
        assert "t2m.grib" not in before
        bad = admin.get("/transfers", params={"since": "yesterday"})
        assert bad.status_code == 422 and "is not a time: use e.g. 2030-01-01T06:00" in bad.text
        assert "<title>Refused" in bad.text
        assert "Traceback" not in bad.text
