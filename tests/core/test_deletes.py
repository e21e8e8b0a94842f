"""Deletes refuse what they would orphan, and written values are checked, on both catalogs."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine

from ecpds.core import catalog
from ecpds.core.db import session_scope
from ecpds.core.errors import validation_message
from ecpds.core.models import (
    AliasCreate,
    DataFile,
    DataTransfer,
    DataUserCreate,
    DataUserUpdate,
    DestinationCreate,
    DestinationUpdate,
    HostCreate,
    HostUpdate,
    TransferStatus,
    utcnow,
)
from ecpds.core.secrets import CredentialBox, load_or_create_key
from ecpds.core.site import SiteError, parse_site


@pytest.fixture
def box(tmp_path: Path) -> CredentialBox:
    return CredentialBox(load_or_create_key(tmp_path / "secret.key"))


def _site(engine: Engine, box: CredentialBox) -> None:
    """Destination d1 on hosts h1 (primary) and h2, aliased to d2, reached by user ann."""
    with session_scope(engine) as session:
        for name in ("h1", "h2"):
            catalog.create_host(session, box=box, data=HostCreate(name=name, url="file:///tmp/x"))
        catalog.create_destination(session, data=DestinationCreate(name="d1", hosts=["h1", "h2"]))
        catalog.create_destination(session, data=DestinationCreate(name="d2", hosts=["h2"]))
        catalog.create_alias(session, data=AliasCreate(name="a12", source="d1", target="d2"))
        catalog.create_user(session, data=DataUserCreate(name="ann", destinations=["d1"]))


def _transfer(engine: Engine, destination: str, status: TransferStatus) -> int:
    with session_scope(engine) as session:
        data_file = DataFile(name="f.bin")
        session.add(data_file)
        dest = catalog.get_destination(session, name=destination)
        transfer = DataTransfer(
            data_file_id=data_file.id,
            destination_id=dest.id,
            target="f.bin",
            expires=utcnow() + timedelta(days=1),
            status=status,
        )
        session.add(transfer)
        session.flush()
        assert transfer.id is not None
        return transfer.id


def test_a_host_in_use_is_kept_unless_forced(engine: Engine, box: CredentialBox) -> None:
    _site(engine, box)
    with session_scope(engine) as session, pytest.raises(catalog.Conflict) as refused:
        catalog.delete_host(session, name="h1")
    assert (
        str(refused.value) == "host 'h1' is used by destinations 'd1' (primary): delete with force"
    )
    with session_scope(engine) as session:
        destination = catalog.get_destination(session, name="d1")
        assert [h.name for h in catalog.destination_hosts(session, destination=destination)] == [
            "h1",
            "h2",
        ]
        catalog.delete_host(session, name="h1", force=True)
    with session_scope(engine) as session:
        assert catalog.find_host(session, name="h1") is None
        public = catalog.destination_public(session, catalog.get_destination(session, name="d1"))
        assert public.hosts == ["h2"]  # the backup is now the primary
    with (
        session_scope(engine) as session,
        pytest.raises(catalog.Conflict, match=r"'d1' \(primary\), 'd2' \(primary\)"),
    ):
        catalog.delete_host(session, name="h2")


def test_a_destination_in_use_is_kept_unless_forced_and_its_transfers_stay_readable(
    engine: Engine, box: CredentialBox
) -> None:
    _site(engine, box)
    done = _transfer(engine, "d1", TransferStatus.DONE)
    waiting = _transfer(engine, "d1", TransferStatus.WAIT)
    with session_scope(engine) as session, pytest.raises(catalog.Conflict) as refused:
        catalog.delete_destination(session, name="d1")
    assert str(refused.value) == (
        "destination 'd1' is used by 1 unfinished transfer, alias 'a12', user 'ann': "
        "delete with force"
    )
    with session_scope(engine) as session:
        assert catalog.delete_destination(session, name="d1", force=True) == [waiting]
    with session_scope(engine) as session:
        assert catalog.find_destination(session, name="d1") is None
        assert catalog.find_alias(session, name="a12") is None
        assert (
            catalog.user_public(session, catalog.get_user(session, name="ann")).destinations == []
        )
        kept = {
            t.id: catalog.transfer_public(session, t)
            for t in catalog.list_transfers(session)
            if t.id in (done, waiting)
        }
        assert kept[done].destination == kept[waiting].destination == "d1"
        assert kept[done].status is TransferStatus.DONE
        assert kept[waiting].status is TransferStatus.STOP
        assert kept[waiting].last_error == "destination 'd1' deleted"
        # A new destination of the same name starts with an empty history.
        catalog.create_destination(session, data=DestinationCreate(name="d1"))
        assert catalog.list_transfers(session, destinations=["d1"]) == []
    with session_scope(engine) as session:
        catalog.delete_destination(session, name="d2")  # unused: no force needed


def test_transfer_ids_are_not_reused_after_a_destination_is_deleted(
    engine: Engine, box: CredentialBox
) -> None:
    _site(engine, box)
    first = _transfer(engine, "d2", TransferStatus.DONE)
    with session_scope(engine) as session:
        catalog.delete_destination(session, name="d2", force=True)
        session.delete(catalog.get_transfer(session, id=first))
    with session_scope(engine) as session:
        catalog.create_destination(session, data=DestinationCreate(name="d2"))
    assert _transfer(engine, "d2", TransferStatus.WAIT) > first


def test_no_user_deletes_itself_and_the_last_admin_stays(engine: Engine) -> None:
    with session_scope(engine) as session:
        root = catalog.create_user(session, data=DataUserCreate(name="root", admin=True))
        ops = catalog.create_user(session, data=DataUserCreate(name="ops", admin=True))
        catalog.create_user(session, data=DataUserCreate(name="guest"))
    with session_scope(engine) as session, pytest.raises(catalog.Conflict) as refused:
        catalog.delete_user(session, name="root", caller=root)
    assert str(refused.value) == "user 'root' cannot delete itself: ask another admin"
    with session_scope(engine) as session:
        catalog.delete_user(session, name="root", caller=ops)
    with session_scope(engine) as session, pytest.raises(catalog.Conflict) as refused:
        catalog.delete_user(session, name="ops")
    assert str(refused.value) == "user 'ops' is the last admin: make another user admin first"
    with session_scope(engine) as session:
        catalog.update_user(session, name="guest", data=DataUserUpdate(admin=True))
        catalog.delete_user(session, name="ops")
        assert [u.name for u in catalog.list_users(session)] == ["guest"]


COMPRESSIONS = "none, gzip, bzip2, lbzip2, lzma, zip, lz4, snappy, zstd"
BAD_DESTINATION_VALUES = [
    ({"compression": "rar"}, f"compression: unknown compression 'rar': use {COMPRESSIONS}"),
    ({"active_from": "25:99"}, "active_from: '25:99' is not a time of day: use HH:MM"),
    ({"active_until": "7:00"}, "active_until: '7:00' is not a time of day: use HH:MM"),
    ({"default_priority": 100}, "default_priority 100: Input should be less than or equal to 99"),
    ({"incoming_priority": -1}, "incoming_priority -1: Input should be greater than or equal to 0"),
    ({"default_lifetime": 0}, "default_lifetime 0: Input should be greater than 0"),
    ({"incoming_lifetime": -5}, "incoming_lifetime -5: Input should be greater than 0"),
    ({"max_file_size": -1}, "max_file_size -1: Input should be greater than or equal to 0"),
    (
        {"compression_min_size": -1},
        "compression_min_size -1: Input should be greater than or equal",
    ),
    ({"max_connections": 0}, "max_connections 0: Input should be greater than or equal to 1"),
    ({"on_host_failure": "panic"}, "'next_and_stay' or 'next_and_retry'"),
    ({"if_target_exists": "skip"}, "if_target_exists: Input should be 'overwrite' or 'resume'"),
    ({"checksums": ["md4"]}, "checksums.0: Input should be 'sha256' or 'sha512'"),
    ({"compression_pattern": "("}, "compression_pattern: '(' is not a regular expression"),
    ({"target_template": "{name}"}, "target_template: unknown token {name}"),
    ({"notification": {"qos": 3}}, "notification: qos 3: Input should be less than or equal to 2"),
    ({"notification": {"topic": "a/#"}}, "notification: topic 'a/#': no wildcards"),
    ({"notification": {"broker": "broker:1883"}}, "broker 'broker:1883': use 'embedded' or a URL"),
    ({"notification": {"broker": "http://b"}}, "broker 'http://b': use 'embedded' or a URL"),
    ({"notification": {"protocol": "5"}}, "the embedded broker speaks MQTT 3.1.1"),
    ({"notification": {"insecure": True}}, "ca_file, insecure: only for another broker"),
    (
        {"notification": {"broker": "mqtt://b:1883", "ca_file": "/etc/ca.pem"}},
        "ca_file, insecure: only for an mqtts:// or wss:// broker",
    ),
    ({"notification": {"format": "template"}}, "format 'template' needs a template"),
    ({"notification": {"notify": "always"}}, "notify: Input should be 'none', 'store'"),
    ({"backup_url": "archive"}, "backup_url: 'archive' is neither an absolute path nor a URL"),
]


def _refusal(model: type[Any], values: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as refused:
        model.model_validate(values)
    message = validation_message(refused.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(("values", "message"), BAD_DESTINATION_VALUES)
def test_destination_values_are_checked_on_create_update_and_apply(
    values: dict[str, Any], message: str
) -> None:
    assert message in _refusal(DestinationCreate, {"name": "d"} | values)
    assert message in _refusal(DestinationUpdate, values)
    with pytest.raises(SiteError) as refused:
        parse_site({"destination": [{"name": "d"} | values]})
    assert message in str(refused.value)


BAD_HOST_VALUES = [
    ({"url": "far/in"}, "url: 'far/in' has no scheme: use a URL such as sftp://"),
    ({"kind": "mirror"}, "kind: Input should be 'dissemination', 'acquisition', 'backup' or"),
    ({"retry_count": -1}, "retry_count -1: Input should be greater than or equal to 0"),
    ({"max_connections": -1}, "max_connections -1: Input should be greater than or equal to 0"),
]


@pytest.mark.parametrize(("values", "message"), BAD_HOST_VALUES)
def test_host_values_are_checked_on_create_update_and_apply(
    values: dict[str, Any], message: str
) -> None:
    assert message in _refusal(HostCreate, {"name": "h", "url": "file:///x"} | values)
    assert message in _refusal(HostUpdate, values)
    with pytest.raises(SiteError) as refused:
        parse_site({"host": [{"name": "h", "url": "file:///x"} | values]})
    assert message in str(refused.value)


def test_user_values_are_checked() -> None:
    allowed = "use get, put, delete, dir, mkdir, rename"
    assert f"operations: unknown operation 'fly': {allowed}" in _refusal(
        DataUserUpdate, {"operations": ["get", "fly"]}
    )
    assert "path_pattern: '[' is not a regular expression" in _refusal(
        DataUserCreate, {"name": "u", "path_pattern": "["}
    )


def test_good_values_pass() -> None:
    destination = DestinationCreate(
        name="d",
        compression="gzip",
        active_from="00:00",
        active_until="23:59",
        target_template="{date:%Y}/{basename}",
        notification={"notify": "both", "broker": "mqtts://broker:8883", "user": "u"},
        backup_url="/srv/archive",
        compression_pattern=r"\.grib$",
    )
    assert destination.compression == "gzip"
    assert DestinationUpdate(backup_url="s3://bucket/dir", compression="none").backup_url
    assert HostCreate(name="h", url="sftp://ops@far:22/in").url == "sftp://ops@far:22/in"
