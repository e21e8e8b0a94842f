"""The web console over HTTPS (httpx, no browser): every page answers, the access layer
decides who sees what, and a POST without the session's CSRF token is refused."""

from __future__ import annotations

import contextlib
import re

import httpx

from console.conftest import DATA_PASSWORD, Site, logged_in


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
    with contextlib.closing(logged_in(site, *site.login)) as admin:
        refused = admin.post("/destinations/alpha/operations/hold", data={})
        assert refused.status_code == 403
        wrong = admin.post("/transfers/requeue", data={"csrf": "forged", "id": site.transfer})
        assert wrong.status_code == 403
    anonymous = httpx.post(f"{site.base}/login", data={"username": "x"}, verify=False)
    assert anonymous.status_code == 403


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
        refused = carol.post("/destinations/beta/operations/hold", data={"csrf": csrf[1]})
        assert refused.status_code == 403


def test_the_dashboard_shows_the_days_traffic_runs_and_store(site: Site) -> None:
    with contextlib.closing(logged_in(site, *site.login)) as admin:
        page = admin.get("/").text
    assert re.search(r"Counts as of \d\d:\d\d:\d\d UTC", page)
    # The one upload, to alpha, queued one transfer in the last 24 hours.
    assert re.search(r"Transfers queued per hour, \d\d:00 to now \(UTC\):\s+1 in all", page)
    assert page.count("<svg") == 3 and page.count('class="bar-queued"') == 24
    assert "no acquisition runs" in page
    store = re.search(r"<tr><td><code>([^<]+)</code></td><td>(\d+)</td>", page)
    assert store and store[1].endswith("store") and store[2] == "1"  # the uploaded file
    with contextlib.closing(logged_in(site, "carol", DATA_PASSWORD)) as carol:
        mine = carol.get("/").text
    # carol reaches beta only: none of alpha's traffic, and no store usage.
    assert re.search(r"Transfers queued per hour, \d\d:00 to now \(UTC\):\s+0 in all", mine)
    assert "Store usage" not in mine and "Store usage" in page


def test_arrivals_charts_the_busiest_destinations_or_the_one_asked(site: Site) -> None:
    queued = r"{}: transfers queued per hour, \d\d:00 to now \(UTC\):\s+{} in all"
    with contextlib.closing(logged_in(site, *site.login)) as admin:
        busiest = admin.get("/arrivals").text
        assert 'id="chart-alpha"' in busiest and 'id="chart-beta"' not in busiest
        assert re.search(queued.format("alpha", 1), busiest)
        beta = admin.get("/arrivals", params={"destination": "beta"}).text
        assert 'id="chart-beta"' in beta and 'id="chart-alpha"' not in beta
        assert re.search(queued.format("beta", 0), beta)
        unknown = admin.get("/arrivals", params={"destination": "nowhere"})
        assert unknown.status_code == 404 and "nowhere" in unknown.text
        assert "Traceback" not in unknown.text
    with contextlib.closing(logged_in(site, "carol", DATA_PASSWORD)) as carol:
        assert 'id="chart-alpha"' not in carol.get("/arrivals").text
        assert carol.get("/arrivals", params={"destination": "alpha"}).status_code == 404
