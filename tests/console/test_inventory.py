"""The console's inventory pages over HTTPS (httpx): data files, hosts, users and policies,
acquisition runs; who sees which, and that a host's credentials never show."""

from __future__ import annotations

import contextlib

from console.conftest import DATA_PASSWORD, HOST_PASSWORD, Site, logged_in
from ecpds.portal.console.inventory import url_without_password


def _pages(site: Site) -> list[str]:
    return [
        "/datafiles",
        "/datafiles?name=t2m&group=&since=2000-01-01T00:00&until=",
        f"/datafiles/{site.data_file}",
        "/hosts",
        "/hosts/alpha-h",
        "/hosts/beta-sftp",
        "/hosts/alpha-acq",
        "/users",
        "/users/carol",
        "/policies",
        "/policies/beta-readers",
        "/acquisition",
        "/acquisition?destination=alpha&host=alpha-acq&status=running",
        f"/acquisition/{site.run}",
    ]


def test_every_inventory_page_answers_for_an_admin(site: Site) -> None:
    with contextlib.closing(logged_in(site, *site.login)) as admin:
        for page in _pages(site):
            answer = admin.get(page)
            assert answer.status_code == 200, (page, answer.text)
            assert "Traceback" not in answer.text and HOST_PASSWORD not in answer.text
        files = admin.get("/datafiles").text
        assert f'href="/datafiles/{site.data_file}"' in files
        assert "t2m.grib" not in admin.get("/datafiles?name=z500").text
        assert "t2m.grib" not in admin.get("/datafiles?since=2999-01-01T00:00").text
        one = admin.get(f"/datafiles/{site.data_file}").text
        assert f'href="/transfers/{site.transfer}"' in one and "MD5" in one
        hosts = admin.get("/hosts").text
        assert "sftp://bob@127.0.0.1:2222/in" in hosts and "password" in hosts  # its key
        assert 'href="/destinations/beta"' in admin.get("/hosts/beta-sftp").text
        assert f'href="/transfers/{site.transfer}"' in admin.get("/hosts/alpha-h").text
        assert f'href="/acquisition/{site.run}"' in admin.get("/hosts/alpha-acq").text
        users = admin.get("/users").text
        assert 'href="/users/carol"' in users and 'href="/policies/beta-readers"' in users
        assert "$argon2" not in users and "$argon2" not in admin.get("/users/carol").text
        policy = admin.get("/policies/beta-readers").text
        assert 'href="/users/carol"' in policy and 'href="/destinations/beta"' in policy
        runs = admin.get("/acquisition").text
        assert f'href="/acquisition/{site.run}"' in runs
        assert f'href="/acquisition/{site.beta_run}"' in runs
        assert f'href="/acquisition/{site.run}"' not in admin.get("/acquisition?status=ok").text
        run = admin.get(f"/acquisition/{site.run}").text
        assert f'href="/datafiles/{site.data_file}"' in run
        nav = admin.get("/").text
        assert 'href="/users"' in nav and 'href="/policies"' in nav


def test_unknown_names_and_bad_times_answer_with_the_error_page(site: Site) -> None:
    with contextlib.closing(logged_in(site, *site.login)) as admin:
        for page in (
            "/datafiles/nothing",
            "/hosts/nowhere",
            "/users/nobody",
            "/policies/none",
            "/acquisition/999999",
        ):
            answer = admin.get(page)
            assert answer.status_code == 404, (page, answer.text)
            assert "unknown" in answer.text and "Traceback" not in answer.text
        assert "did you mean &#39;alpha-h&#39;" in admin.get("/hosts/alpha-hh").text
        bad = admin.get("/datafiles?since=yesterday")
        assert bad.status_code == 422 and "is not a time" in bad.text
        bad = admin.get("/acquisition?status=done")
        assert bad.status_code == 422 and "unknown run status" in bad.text


def test_a_data_user_sees_only_what_reaches_its_destinations(site: Site) -> None:
    with contextlib.closing(logged_in(site, "carol", DATA_PASSWORD)) as carol:
        files = carol.get("/datafiles").text
        assert f"/datafiles/{site.beta_file}" in files
        assert f"/datafiles/{site.data_file}" not in files
        assert "z500.grib" in carol.get(f"/datafiles/{site.beta_file}").text
        assert carol.get(f"/datafiles/{site.data_file}").status_code == 404
        hosts = carol.get("/hosts").text
        assert 'href="/hosts/beta-sftp"' in hosts and "/hosts/alpha-h" not in hosts
        assert "alpha-acq" not in hosts and HOST_PASSWORD not in hosts
        beta = carol.get("/hosts/beta-sftp")
        assert beta.status_code == 200 and HOST_PASSWORD not in beta.text
        for page in ("/hosts/alpha-h", "/hosts/alpha-acq", f"/acquisition/{site.run}"):
            assert carol.get(page).status_code == 404, page
        # No suggestion of a host name carol does not reach (an admin gets one).
        assert "did you mean" not in carol.get("/hosts/alpha-hh").text
        runs = carol.get("/acquisition").text
        assert f"/acquisition/{site.beta_run}" in runs and f"/acquisition/{site.run}" not in runs
        assert f"/acquisition/{site.run}" not in carol.get("/acquisition?destination=alpha").text
        assert carol.get(f"/acquisition/{site.beta_run}").status_code == 200
        for page in ("/users", "/users/carol", "/policies", "/policies/beta-readers"):
            assert carol.get(page).status_code == 404, page
        nav = carol.get("/").text
        assert 'href="/hosts"' in nav and 'href="/users"' not in nav


def test_a_password_in_a_host_url_is_not_shown() -> None:
    assert url_without_password("ftp://bob:pw@h.example:21/in") == "ftp://bob@h.example:21/in"
    assert url_without_password("sftp://bob:@[::1]:22/in") == "sftp://bob@[::1]:22/in"
    assert url_without_password("sftp://bob@h.example/in") == "sftp://bob@h.example/in"
