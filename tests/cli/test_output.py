"""The CLI's output for people, against a real portal (REST over HTTPS in a thread)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from portal.test_api import Api, _run_api, ok
from sqlalchemy import Engine, update
from sqlmodel import col
from typer.testing import CliRunner, Result

from ecpds.cli.main import app
from ecpds.core.models import DataTransfer, TransferStatus
from ecpds.core.settings import Settings
from ecpds.core.store import Store

runner = CliRunner()
Ecpds = Callable[..., Result]


@pytest.fixture
def api(settings: Settings, engine: Engine, store: Store, tmp_path: Path) -> Iterator[Api]:
    """Host `ecmwf-sftp` (file://) serving destination `ecmwf-data`; its alias `ecmwf-copy`."""
    for running in _run_api(settings, engine, store):
        remote = tmp_path / "remote"
        host = {"name": "ecmwf-sftp", "url": f"file://{remote}"}
        ok(running.admin.post("/hosts", json=host), 201)
        for name in ("ecmwf-data", "ecmwf-copy"):
            destination = {"name": name, "hosts": ["ecmwf-sftp"]}
            ok(running.admin.post("/destinations", json=destination), 201)
        alias = {"name": "to-copy", "source": "ecmwf-data", "target": "ecmwf-copy"}
        ok(running.admin.post("/aliases", json=alias), 201)
        yield running


@pytest.fixture
def ecpds(api: Api, settings: Settings) -> Ecpds:
    """Run `ecpds ARGS…` as the admin `ecpds up` created (its admin.toml), or as `user`."""

    def run(*args: str, user: tuple[str, str] | None = None) -> Result:
        env = {"ECPDS_HOME": str(settings.home), "ECPDS_API_URL": api.url, "ECPDS_CONFIG": ""}
        if user is not None:
            env |= {"ECPDS_API_USER": user[0], "ECPDS_API_PASSWORD": user[1]}
        return runner.invoke(app, list(args), env=env)

    return run


def push(api: Api, destination: str, target: str, size: int) -> list[int]:
    params = {"name": Path(target).name, "target": target}
    answer = ok(
        api.admin.post(f"/destinations/{destination}/files", params=params, content=b"x" * size),
        201,
    )
    return answer["transfers"]


def running_at(engine: Engine, transfer_id: int, sent: int, rate: float) -> None:
    """What the worker writes while it sends (activities/transmit.py): bytes and rate."""
    with engine.begin() as conn:
        conn.execute(
            update(DataTransfer)
            .where(col(DataTransfer.id) == transfer_id)
            .values(status=TransferStatus.EXEC, bytes_sent=sent, rate=rate)
        )


def test_sizes_and_rates_read_for_people(api: Api, ecpds: Ecpds, engine: Engine) -> None:
    transfer_id = push(api, "ecmwf-copy", "big.grib", 3 << 19)[0]  # 1.5 MiB
    running_at(engine, transfer_id, 3 << 18, 256 * 1024.0)  # half of it, at 256 KiB/s

    listed = ecpds("transfers")
    assert listed.exit_code == 0, listed.output
    assert "768.0 KiB" in listed.stdout and "786432" not in listed.stdout

    shown = ecpds("transfer", "show", str(transfer_id))
    assert shown.exit_code == 0, shown.output
    assert "768.0 KiB of 1.5 MiB (50%), 256.0 KiB/s, ETA 3 s" in shown.stdout
    fields = dict(
        re.findall(r"│ (\w+)\s+│ ([^│]*?)\s+│", shown.stdout)  # the record's rows
    )
    assert fields["size"] == "1.5 MiB" and fields["bytes_sent"] == "768.0 KiB"
    assert fields["rate"] == "256.0 KiB/s" and fields["eta"] == "3 s"

    raw = ecpds("transfer", "show", str(transfer_id), "--json")
    assert '"bytes_sent": 786432' in raw.stdout and '"rate": 262144.0' in raw.stdout


def test_piped_tables_are_not_cut_at_80_columns(api: Api, ecpds: Ecpds) -> None:
    target = "forecasts/" + "long-product-name-" * 6 + "0001.grib"
    push(api, "ecmwf-copy", target, 10)
    result = ecpds("transfers")
    assert result.exit_code == 0, result.output
    (row,) = [line for line in result.stdout.splitlines() if "ecmwf-copy" in line]
    assert target in row and len(row) > 80


def test_put_names_one_transfer_or_several(api: Api, ecpds: Ecpds, tmp_path: Path) -> None:
    data = tmp_path / "obs.bufr"
    data.write_bytes(b"observation")
    one = ecpds("put", str(data), "-d", "ecmwf-copy")
    assert one.exit_code == 0, one.output
    assert re.search(r"  transfer \d+$", one.stdout.strip()), one.stdout
    many = ecpds("put", str(data), "-d", "ecmwf-data", "--target", "again.bufr")
    assert many.exit_code == 0, many.output
    assert re.search(r"  transfers \d+, \d+$", many.stdout.strip()), many.stdout


def test_dry_run_says_what_it_would_do(api: Api, ecpds: Ecpds, tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text(
        '[[destination]]\nname = "ecmwf-new"\n'
        '[[destination]]\nname = "ecmwf-copy"\nhosts = ["ecmwf-sftp"]\ncomment = "copies"\n'
        '[[destination]]\nname = "ecmwf-data"\nhosts = ["ecmwf-sftp"]\n'
    )
    dry = ecpds("apply", "-f", str(site), "--dry-run")
    assert dry.exit_code == 0, dry.output
    changes = re.findall(r"│ (would create|would update|unchanged|created|updated)", dry.stdout)
    assert changes == ["would create", "would update", "unchanged"], dry.stdout
    assert [d["name"] for d in ok(api.admin.get("/destinations"))] == ["ecmwf-copy", "ecmwf-data"]

    done = ecpds("apply", "-f", str(site))
    changes = re.findall(r"│ (would create|would update|unchanged|created|updated)", done.stdout)
    assert changes == ["created", "updated", "unchanged"], done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["put", "--bogus"], "error: No such option: --bogus"),
        (["transfer", "priority", "7"], "error: Missing argument 'value'."),
        (["destination", "show"], "error: Missing argument 'name'."),
        (["transfers", "--limit", "many"], "error: Invalid value for '--limit':"),
    ],
)
def test_usage_error_is_one_line_with_exit_code_2(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "╭" not in result.stderr, result.stderr
    assert result.stderr.startswith(message), result.stderr
    assert "--help" in result.stderr


def test_unknown_names_come_with_a_suggestion(api: Api, ecpds: Ecpds, tmp_path: Path) -> None:
    def error(*args: str, user: tuple[str, str] | None = None) -> str:
        result = ecpds(*args, user=user)
        assert result.exit_code == 1
        return result.stderr.strip()

    data = tmp_path / "obs.bufr"
    data.write_bytes(b"observation")
    hint = "(did you mean 'ecmwf-data'?)"
    assert error("destination", "show", "ecmwf-dat").startswith(
        f"error: unknown destination 'ecmwf-dat' {hint}"
    )
    assert f"unknown destination 'ecmwf-dta' {hint}" in error("put", str(data), "-d", "ecmwf-dta")
    assert error("host", "show", "ecmwf-sfpt").startswith(
        "error: unknown host 'ecmwf-sfpt' (did you mean 'ecmwf-sftp'?)"
    )
    # A data user is told only of the names it may see.
    carol = {"name": "carol", "password": "carol-password", "destinations": ["ecmwf-copy"]}
    ok(api.admin.post("/users", json=carol), 201)
    as_carol = ("carol", "carol-password")
    for name in ("ecmwf-dat", "ecmwf-data"):  # absent, and not hers: the same answer
        for args in (("destination", "show", name), ("put", str(data), "-d", name)):
            assert error(*args, user=as_carol) == (
                f"error: unknown destination '{name}' (did you mean 'ecmwf-copy'?) (HTTP 404)"
            )


def test_watch_refreshes_the_table(api: Api, ecpds: Ecpds, engine: Engine) -> None:
    transfer_id = push(api, "ecmwf-copy", "big.grib", 1 << 20)[0]
    running_at(engine, transfer_id, 1 << 18, 128 * 1024.0)
    result = ecpds("transfers", "--watch", "--interval", "0.1", "--count", "2")
    assert result.exit_code == 0, result.output
    assert len(re.findall(r"1 transfer\(s\) at \d\d:\d\d:\d\d", result.stdout)) == 2
    (row, _) = [line for line in result.stdout.splitlines() if f"│ {transfer_id} " in line]
    assert "256.0 KiB of 1.0 MiB (25%)" in row and "128.0 KiB/s" in row and "6 s" in row
    assert "--watch shows a table" in ecpds("transfers", "--watch", "--json").stderr


def test_the_last_admin_cannot_be_demoted(api: Api, ecpds: Ecpds, tmp_path: Path) -> None:
    for change in ({"admin": False}, {"active": False}):
        answer = api.admin.patch("/users/admin", json=change)
        assert answer.status_code == 409, answer.text
        assert answer.json()["detail"] == (
            "user 'admin' cannot demote or deactivate itself: ask another admin"
        )
    site = tmp_path / "site.toml"
    site.write_text('[[user]]\nname = "admin"\nadmin = false\n')
    result = ecpds("apply", "-f", str(site))
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: site.toml: user 'admin' is the last admin: make another user admin first (HTTP 409)"
    )
    assert ok(api.admin.get("/users/admin"))["admin"] is True

    # With another admin, the first may be made a data user through the site file.
    ok(api.admin.post("/users", json={"name": "dora", "admin": True}), 201)
    assert ecpds("apply", "-f", str(site)).exit_code == 0
    assert api.admin.get("/users/dora").status_code == 403  # admin is a data user now
