"""Pure rules of the dissemination engine: the active window and target-name templates."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ecpds.core.naming import NamingError, target_path
from ecpds.workflows.destination import window_state

NOON = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("start", "end", "inside", "opens_in"),
    [
        (None, None, True, 0.0),
        ("08:00", "18:00", True, 0.0),
        ("13:30", "18:00", False, 5400.0),
        ("06:00", "11:00", False, 18 * 3600.0),
        ("22:00", "13:00", True, 0.0),  # spans midnight
        ("22:00", "06:00", False, 10 * 3600.0),
    ],
)
def test_active_window(start: str | None, end: str | None, inside: bool, opens_in: float) -> None:
    assert window_state(NOON, start, end) == (inside, opens_in)


def name(template: str, target: str = "an/fc/t850.grib") -> str:
    return target_path(
        template, destination="dwd", target=target, data_file_id="abc", transfer_id=7, when=NOON
    )


def test_target_templates() -> None:
    assert name("{target}") == "an/fc/t850.grib"
    assert name("{destination}/{date}/{basename}") == "dwd/20260301/t850.grib"
    assert name("{date:%Y/%m}/{dirname}/{transfer_id}-{data_file_id}") == "2026/03/an/fc/7-abc"
    assert name("/{target}", target="/abs/x") == "abs/x"


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("{nope}/{target}", "unknown token {nope}"),
        ("../{target}", "unsafe path"),
        ("{dirname}", "unsafe path"),
        ("{target", "malformed"),
    ],
)
def test_bad_templates(template: str, problem: str) -> None:
    with pytest.raises(NamingError, match=problem) as caught:
        name(template, target="x")
    assert "\n" not in str(caught.value)
