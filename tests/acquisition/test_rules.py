"""Selection rules and acquisition settings: date tokens with offsets and cycles, and the
one-line refusals of bad settings in the catalog, REST and site.toml alike."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine

from ecpds.core import catalog
from ecpds.core.acquisition import SelectionRule, rule_folders
from ecpds.core.db import session_scope
from ecpds.core.errors import Invalid
from ecpds.core.models import HostCreate
from ecpds.core.secrets import CredentialBox, load_or_create_key
from ecpds.core.site import SiteError, parse_site

NOW = datetime(2026, 12, 7, 13, 40, tzinfo=UTC)


def test_date_offsets_count_days_back() -> None:
    rule = SelectionRule(folder="/data/{date:%Y%m%d}", date_offsets=[0, -1])
    assert [f for f, _ in rule_folders(rule, NOW)] == ["data/20261207", "data/20261206"]


def test_with_cycle_hours_offsets_count_cycles() -> None:
    rule = SelectionRule(
        folder="{date:%Y%m%d}/{date:%H}", date_offsets=[0, -1, -2, -3], cycle_hours=6
    )
    assert [f for f, _ in rule_folders(rule, NOW)] == [
        "20261207/12",
        "20261207/06",
        "20261207/00",
        "20261206/18",
    ]


def test_a_folder_named_by_two_offsets_is_listed_once() -> None:
    rule = SelectionRule(folder="{date:%Y%m%d}", date_offsets=[0, -1, -2], cycle_hours=6)
    assert [f for f, _ in rule_folders(rule, NOW)] == ["20261207"]


@pytest.mark.parametrize(
    ("acquisition", "message"),
    [
        ({"rules": [{"pattern": "(unclosed"}]}, "is not a regular expression"),
        ({"rules": [{"pattern": "a", "glob": "*"}]}, "give a pattern or a glob, not both"),
        (
            {"rules": [{"pattern": r"(?P<param>\w+)\.grib", "target": "{step}/{name}"}]},
            "target '{step}/{name}' names step: use date, folder, name, param, path",
        ),
        ({"rules": [{"folder": "{name}/x"}]}, "only {date:...} tokens are allowed"),
        ({"rules": [{"min_size": 10, "max_size": 5}]}, "max_size 5 is below min_size 10"),
        ({"rules": [{"only_new": "name"}]}, "only_new: Input should be"),
        ({"trigger": "mqtt"}, "trigger 'mqtt' needs the mqtt settings"),
        ({"rules": []}, "trigger 'schedule' needs at least one rule"),
        ({"rules": [{}], "every": "300"}, "every: Input should be a valid integer"),
        ({"rules": [{"colour": "red"}]}, "rules.0.colour: unknown key"),
    ],
)
def test_bad_settings_are_refused_in_one_line(acquisition: dict, message: str) -> None:
    site = {
        "host": [
            {"name": "p", "kind": "acquisition", "url": "file:///tmp", "acquisition": acquisition}
        ]
    }
    with pytest.raises(SiteError) as refused:
        parse_site(site)
    text = str(refused.value)
    assert "\n" not in text and message in text and "host.0.acquisition" in text, text


def test_acquisition_settings_and_the_broker_password_belong_to_acquisition_hosts(
    engine: Engine, tmp_path: Path
) -> None:
    box = CredentialBox(load_or_create_key(tmp_path / "key"))
    with session_scope(engine) as session:
        catalog.create_host(
            session,
            box=box,
            data=HostCreate(
                name="provider",
                kind="acquisition",
                url="sftp://user@provider:22/data",
                credentials={"password": "pw", "mqtt_password": "broker-pw"},
                acquisition={
                    "trigger": "mqtt",
                    "mqtt": {"url": "mqtt://u@b:1883", "topics": ["a/#"]},
                },
            ),
        )
        assert catalog.host_login(session, box=box, name="provider") == {"password": "pw"}
        with pytest.raises(Invalid, match="acquisition settings are for hosts of kind acquisition"):
            catalog.create_host(
                session,
                box=box,
                data=HostCreate(
                    name="site", url="file:///tmp", acquisition={"rules": [{"glob": "*"}]}
                ),
            )
        with pytest.raises(Invalid, match="unknown credential 'mqtt_password'"):
            catalog.create_host(
                session,
                box=box,
                data=HostCreate(
                    name="site", url="sftp://u@h/x", credentials={"mqtt_password": "x"}
                ),
            )
