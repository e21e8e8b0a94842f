"""The options of a push are checked in one place: every door refuses them in the same words,
and `ecpds put` shows the portal's own answer (no lookup of its own before the upload)."""

from __future__ import annotations

import httpx
import pytest
from sqlmodel import Session, select

from ecpds.core import catalog
from ecpds.core.db import session_scope
from ecpds.core.models import DataFile, DataUserCreate, HostKind

from .conftest import System

# (CLI options, the same options for the REST API, the words of the refusal)
BAD_OPTIONS = [
    pytest.param(
        ("-m", "a=1,broken"), {"metadata": "a=1,broken"}, "metadata 'broken'", id="metadata"
    ),
    pytest.param(("--priority", "120"), {"priority": 120}, "priority 120", id="priority"),
    pytest.param(("--delay", "-5"), {"delay": -5}, "delay -5", id="negative-delay"),
    pytest.param(
        ("--delay", "60", "--at", "2030-01-01T06:00:00+00:00"),
        {"delay": 60, "at": "2030-01-01T06:00:00+00:00"},
        "either a delay or a time",
        id="delay-and-at",
    ),
]


def _one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0].removeprefix("error: ")


def _nothing_stored(system: System) -> None:
    with Session(system.engine) as session:
        assert session.exec(select(DataFile)).all() == []
    assert system.store.partials() == []


@pytest.mark.parametrize(("cli_options", "fields", "words"), BAD_OPTIONS)
def test_every_door_refuses_bad_options_in_the_same_words(
    system: System, cli_options: tuple[str, ...], fields: dict, words: str
) -> None:
    system.destination("checked")
    incoming = system.tmp / "incoming"
    incoming.mkdir()
    (incoming / "obs.bufr").write_bytes(b"observation")
    system.host("incoming", f"file://{incoming}", kind=HostKind.ACQUISITION)
    product = system.tmp / "p.grib"
    product.write_bytes(b"x" * 100)
    source = f"file://{incoming}/obs.bufr"

    by_cli_upload = _one_error_line(system.cli("put", str(product), "-d", "checked", *cli_options))
    by_cli_sources = _one_error_line(system.cli("put", "-s", source, "-d", "checked", *cli_options))
    auth = ("admin", system.env["ECPDS_API_PASSWORD"])
    with httpx.Client(base_url=system.settings.api_url, auth=auth, timeout=60) as api:
        upload = api.post(
            "/destinations/checked/files", params={"name": "p.grib"} | fields, content=b"x"
        )
        sources = api.post(
            "/destinations/checked/sources", json={"sources": [{"url": source}]} | fields
        )
    assert upload.status_code == sources.status_code == 422, (upload.text, sources.text)
    detail = upload.json()["detail"]
    assert sources.json()["detail"] == detail and words in detail, (detail, sources.text)
    assert by_cli_upload == by_cli_sources == f"{detail} (HTTP 422)"
    _nothing_stored(system)


def test_put_to_an_unknown_destination_is_one_line(system: System) -> None:
    """The upload's own 404 comes back even while the CLI is still sending a large file."""
    product = system.tmp / "large.bin"
    with product.open("wb") as out:
        out.truncate(64 << 20)
    for args, stdin in (
        ((str(product), "-d", "nowhere"), None),
        (("-", "-d", "nowhere", "--target", "piped.bin"), b"y" * (3 << 20)),
    ):
        line = _one_error_line(system.cli("put", *args, input=stdin))
        assert line == "unknown destination 'nowhere' (HTTP 404)"
    _nothing_stored(system)


def test_put_reports_the_portals_other_refusals_as_they_are(system: System) -> None:
    """A refusal other than an unknown destination is shown, with its status, not swallowed."""
    system.destination("theirs")
    system.destination("full", max_pending=1)
    with session_scope(system.engine) as session:
        catalog.create_user(
            session,
            data=DataUserCreate(name="dave", password="dave-password-1", destinations=["full"]),
        )
    as_dave = {"ECPDS_API_USER": "dave", "ECPDS_API_PASSWORD": "dave-password-1"}
    product = system.tmp / "p.grib"
    product.write_bytes(b"z" * 1000)

    # Not the user's: the same answer as an unknown destination, so names are not disclosed.
    refused = _one_error_line(system.cli("put", str(product), "-d", "theirs", **as_dave))
    assert refused == "unknown destination 'theirs' (HTTP 404)", refused

    first = system.cli("put", str(product), "-d", "full", **as_dave)
    assert first.exit_code == 0, first.output
    busy = _one_error_line(system.cli("put", str(product), "-d", "full", **as_dave))
    assert busy == (
        "destination 'full' already has 1 pending transfers (max_pending) (HTTP 429)"
    ), busy
    assert [f.name for f in system.files_named("p.grib")] == ["p.grib"]
