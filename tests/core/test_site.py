"""site.toml: strict parsing with one-line errors; apply is idempotent and all-or-nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from ecpds.core import catalog, errors
from ecpds.core.db import session_scope
from ecpds.core.secrets import CredentialBox, load_or_create_key
from ecpds.core.site import SiteError, apply_site, load_site, parse_site

SITE = """
[[host]]
name = "primary"
url = "sftp://ops@primary.example/incoming"
credentials = { password = "first-secret" }
options = { requests = 16 }

[[host]]
name = "spare"
url = "file:///srv/spare"

[[destination]]
name = "met-office"
hosts = ["primary", "spare"]
max_connections = 6

[[destination]]
name = "archive"

[[alias]]
name = "met-to-archive"
source = "met-office"
target = "archive"
pattern = '\\.grib$'

[[user]]
name = "reader"
password = "reader-password"
destinations = ["archive", "met-office"]

[[expected]]
name = "t2m-00"
destination = "met-office"
pattern = 't2m_\\d{10}\\.grib$'
due = "06:30"
"""


@pytest.fixture
def box(tmp_path: Path) -> CredentialBox:
    return CredentialBox(load_or_create_key(tmp_path / "secret.key"))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def test_apply_creates_then_reports_unchanged(
    engine: Engine, box: CredentialBox, tmp_path: Path
) -> None:
    spec = load_site(_write(tmp_path, SITE))
    with session_scope(engine) as session:
        report = apply_site(session, box, spec)
    assert len(report.created) == 7 and report.updated == []
    with session_scope(engine) as session:
        again = apply_site(session, box, spec)
    assert again.created == again.updated == [] and len(again.unchanged) == 7
    with Session(engine) as session:
        met = catalog.get_destination(session, name="met-office")
        assert catalog.destination_public(session, met).hosts == ["primary", "spare"]
        assert catalog.host_credentials(session, box=box, name="primary") == {
            "password": "first-secret"
        }

    changed = SITE.replace("first-secret", "second-secret").replace('"06:30"', '"07:00"')
    with session_scope(engine) as session:
        report = apply_site(session, box, load_site(_write(tmp_path, changed)))
    assert report.updated == ["host primary", "expected t2m-00"]
    with Session(engine) as session:
        assert catalog.get_expected(session, name="t2m-00").due == "07:00"


def test_dry_run_changes_nothing(engine: Engine, box: CredentialBox, tmp_path: Path) -> None:
    spec = load_site(_write(tmp_path, SITE))
    with session_scope(engine) as session:
        report = apply_site(session, box, spec, dry_run=True)
    assert len(report.created) == 7
    with Session(engine) as session:
        assert catalog.list_destinations(session) == []
        assert catalog.list_hosts(session) == []


def test_a_bad_entry_applies_nothing(engine: Engine, box: CredentialBox, tmp_path: Path) -> None:
    text = SITE.replace('hosts = ["primary", "spare"]', 'hosts = ["primary", "ghost"]')
    spec = load_site(_write(tmp_path, text))
    with (
        pytest.raises(errors.Invalid, match="'met-office'.*'ghost'"),
        session_scope(engine) as session,
    ):
        apply_site(session, box, spec)
    with Session(engine) as session:
        assert catalog.list_hosts(session) == []
        assert catalog.list_users(session) == []


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[[host]]\nname = "h"\nurl = "file:///x"\ncolour = "red"\n', ["host.0.colour", "unknown"]),
        ('[[planet]]\nname = "x"\n', ["planet", "unknown key"]),
        ('[[destination]]\nname = "d"\nmax_connections = "many"\n', ["max_connections"]),
        ("[[host]\nname=", ["not valid TOML"]),
    ],
)
def test_site_errors_are_one_line(tmp_path: Path, text: str, words: list[str]) -> None:
    with pytest.raises(SiteError) as error:
        load_site(_write(tmp_path, text))
    message = str(error.value)
    assert "\n" not in message and str(tmp_path) in message
    for word in words:
        assert word in message


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(SiteError, match="cannot read"):
        load_site(tmp_path / "absent.toml")


def test_parse_site_from_json_shape() -> None:
    spec = parse_site({"destination": [{"name": "d", "hosts": []}]})
    assert [d.name for d in spec.destination] == ["d"]
