"""Discovery runs against real providers (local folders and OpenSSH): rules with date
tokens and regexes, settled files, only-new keys, on_change, delete_original, outages."""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime, timedelta

import pytest

from ecpds.core.devserver import free_port

from .conftest import Acquisition, write


def _day(offset: int) -> str:
    return (datetime.now(UTC) + timedelta(days=offset)).strftime("%Y%m%d")


async def test_date_tokens_and_regex_acquire_exactly_the_matching_files(
    acq: Acquisition, sshd
) -> None:
    root = sshd.folder(acq.name("provider"))
    today, yesterday, older = _day(0), _day(-1), _day(-3)
    write(root / today / "t2m_12.grib", b"today t2m")
    write(root / today / "msl_12.grib", b"today msl")
    write(root / today / "t2m_12.grib.tmp", b"not matching: suffix")
    write(root / today / "readme.txt", b"not matching")
    write(root / yesterday / "t2m_00.grib", b"yesterday t2m")
    write(root / older / "t2m_00.grib", b"three days ago: no offset lists it")
    rules = [
        {
            "folder": "{date:%Y%m%d}",
            "date_offsets": [0, -1, -2],  # no folder for two days ago: nothing to take
            "pattern": r"(?P<param>[a-z0-9]+)_(?P<step>\d+)\.grib",
            "target": "{date:%Y%m%d}/{param}/{name}",
            "metadata": {"param": "{param}", "step": "{step}"},
        }
    ]
    destination, host = acq.acquisition_host(
        sshd.url(root), rules, credentials={"private_key": sshd.private_key}
    )
    outcome = await acq.run(destination, host)
    assert outcome.status == "ok", outcome
    assert (outcome.found, outcome.new, outcome.fetched, outcome.failed) == (5, 3, 3, 0)
    files = acq.files(destination)
    assert sorted(files) == sorted(
        [f"{today}/msl/msl_12.grib", f"{today}/t2m/t2m_12.grib", f"{yesterday}/t2m/t2m_00.grib"]
    )
    t2m = files[f"{today}/t2m/t2m_12.grib"]
    assert acq.stored(t2m) == b"today t2m"
    assert t2m.meta == {"param": "t2m", "step": "12"}
    assert t2m.source == sshd.url(root / today / "t2m_12.grib")
    [run] = acq.runs(host)
    assert run.skipped == {"name matches no rule": 2, "date folders not there": 1}
    assert run.error is None and run.finished is not None and run.duration is not None

    # A second run finds the same files and acquires nothing.
    again = await acq.run(destination, host)
    assert (again.status, again.found, again.new, again.fetched) == ("ok", 5, 0, 0)
    assert acq.runs(host)[-1].skipped == {
        "name matches no rule": 2,
        "already acquired": 3,
        "date folders not there": 1,
    }
    assert len(acq.files(destination)) == 3

    # No provider secret in any workflow history of the runs or their fetches.
    histories = await acq.histories(f"discovery-{destination}")
    histories += await acq.histories("retrieval")
    assert "discovery" in histories
    assert sshd.private_key.split("\n")[1] not in histories


async def test_a_growing_file_is_left_until_it_is_settled(acq: Acquisition) -> None:
    root = acq.tmp / "provider"
    growing = write(root / "big.bin", b"x" * 100, mtime=None)  # written just now
    destination, host = acq.acquisition_host(f"file://{root}", [{"glob": "*.bin"}])
    first = await acq.run(destination, host)
    assert (first.new, acq.runs(host)[-1].skipped) == (0, {"not settled": 1})
    with growing.open("ab") as f:
        f.write(b"y" * 100)
    second = await acq.run(destination, host)
    assert (second.new, acq.runs(host)[-1].skipped) == (0, {"not settled": 1})
    # Listed again with the same size and time: settled, acquired whole.
    third = await acq.run(destination, host)
    assert (third.new, third.fetched) == (1, 1)
    assert acq.stored(acq.files(destination)["big.bin"]) == b"x" * 100 + b"y" * 100


async def test_a_changed_file_is_requeued_under_on_change_requeue(acq: Acquisition) -> None:
    root = acq.tmp / "provider"
    write(root / "a.dat", b"first")
    write(root / "b.dat", b"first")
    rules = [
        {"pattern": r"a\.dat", "on_change": "requeue", "target": "{name}"},
        {"pattern": r"b\.dat", "on_change": "ignore", "target": "{name}"},
    ]
    destination, host = acq.acquisition_host(f"file://{root}", rules)
    assert (await acq.run(destination, host)).fetched == 2
    write(root / "a.dat", b"second version", mtime=time.time() - 1800)
    write(root / "b.dat", b"second version", mtime=time.time() - 1800)
    outcome = await acq.run(destination, host)
    assert (outcome.new, outcome.fetched) == (1, 1)
    assert acq.runs(host)[-1].skipped == {"changed, on_change is ignore": 1}
    contents = sorted(acq.stored(f) for f in _all_files(acq, destination))
    assert contents == [b"first", b"first", b"second version"]


def _all_files(acq: Acquisition, destination: str) -> list:
    from sqlmodel import Session, col, select

    from ecpds.core.models import DataFile, DataTransfer, Destination

    with Session(acq.engine) as session:
        return list(
            session.exec(
                select(DataFile)
                .join(DataTransfer, col(DataTransfer.data_file_id) == col(DataFile.id))
                .join(Destination, col(Destination.id) == col(DataTransfer.destination_id))
                .where(Destination.name == destination)
            ).all()
        )


async def test_delete_original_only_after_a_verified_fetch(acq: Acquisition) -> None:
    root = acq.tmp / "provider"
    write(root / "keep.dat", b"kept: its rule keeps originals")
    # Listed, but its fetch fails (larger than the destination takes): the original stays.
    write(root / "move.dat", b"x" * 100)
    rules = [
        {"pattern": r"move\.dat", "delete_original": True, "settle_age": 0},
        {"pattern": r"keep\.dat"},
    ]
    destination, host = acq.acquisition_host(f"file://{root}", rules)
    acq.update_destination(destination, max_file_size=64)
    failed = await acq.run(destination, host)
    assert (failed.status, failed.new, failed.fetched, failed.failed) == ("partial", 2, 1, 1)
    assert (root / "move.dat").read_bytes() == b"x" * 100
    [failure] = [t.last_error for t in acq.transfers(destination) if t.status == "FAIL"]
    assert "larger than the limit of 64 bytes" in (failure or ""), failure
    # The failed file's key is forgotten: once it fits, the next run fetches it and only
    # then removes the original.
    write(root / "move.dat", b"moved into the store")
    outcome = await acq.run(destination, host)
    assert (outcome.status, outcome.new, outcome.fetched) == ("ok", 1, 1)
    assert acq.stored(acq.files(destination)["move.dat"]) == b"moved into the store"
    assert not (root / "move.dat").exists()
    assert (root / "keep.dat").exists()


async def test_a_provider_down_fails_the_run_and_the_next_one_catches_up(
    acq: Acquisition,
) -> None:
    root = acq.tmp / "provider"
    write(root / "one.dat", b"1")
    write(root / "two.dat", b"2")
    destination, host = acq.acquisition_host(f"file://{root}", [{"glob": "*.dat"}])
    moved = acq.tmp / "away"
    shutil.move(root, moved)
    down = await acq.run(destination, host)
    assert down.status == "failed"
    assert down.error is not None and "\n" not in down.error and "does not exist" in down.error
    run = acq.runs(host)[-1]
    assert (run.status, run.error) == ("failed", down.error)
    shutil.move(moved, root)
    up = await acq.run(destination, host)
    assert (up.status, up.new, up.fetched) == ("ok", 2, 2)
    assert sorted(acq.files(destination)) == ["one.dat", "two.dat"]


async def test_dry_run_lists_what_would_be_fetched_and_why_others_are_skipped(
    acq: Acquisition,
) -> None:
    root = acq.tmp / "provider"
    write(root / "small.dat", b"1")
    write(root / "large.dat", b"1" * 100)
    write(root / "other.txt", b"1")
    destination, host = acq.acquisition_host(f"file://{root}", [{"glob": "*.dat", "min_size": 10}])
    plan = acq.dry_run(host)
    assert [f["path"] for f in plan.new] == ["large.dat"]
    skipped = {f["path"]: (f["rule"], f["reason"]) for f in plan.skipped}
    assert skipped == {
        "small.dat": (0, "smaller than min_size"),
        "other.txt": (None, "name matches no rule"),
    }
    assert acq.runs(host) == [] and acq.files(destination) == {}


async def test_acquire_and_forward_delivers_to_a_dissemination_host(acq: Acquisition) -> None:
    root = acq.tmp / "provider"
    write(root / "obs_1.bufr", b"observation one")
    write(root / "obs_2.bufr", b"observation two")
    outbox = acq.tmp / "remote-site"
    outbox.mkdir()
    site = acq.name("site")
    acq.add_host(site, f"file://{outbox}")
    destination, host = acq.acquisition_host(
        f"file://{root}", [{"glob": "obs_*.bufr", "target": "in/{name}"}], forward=[site]
    )
    outcome = await acq.run(destination, host)
    assert (outcome.new, outcome.fetched) == (2, 2)
    await acq.wait_for(
        lambda: (
            all(t.status == "DONE" for t in acq.transfers(destination))
            and len(acq.transfers(destination)) == 2
        ),
        "both transfers delivered",
    )
    assert (outbox / "in" / "obs_1.bufr").read_bytes() == b"observation one"
    assert (outbox / "in" / "obs_2.bufr").read_bytes() == b"observation two"


async def test_no_provider_password_in_any_workflow_history(acq: Acquisition, sshd) -> None:
    if sshd.password_user is None:
        pytest.skip("password logins need the tests to run as root (to make the sshd user)")
    root = sshd.folder(acq.name("provider"))
    write(root / "secret-free.dat", b"data")
    shutil.chown(root / "secret-free.dat", sshd.password_user, sshd.password_user)
    broker_password = f"mqtt-{acq.name('pw')}"
    destination, host = acq.acquisition_host(
        sshd.url(root, user=sshd.password_user),
        [{"glob": "*.dat", "delete_original": True}],
        credentials={"password": sshd.password, "mqtt_password": broker_password},
    )
    outcome = await acq.run(destination, host)
    assert (outcome.status, outcome.fetched) == ("ok", 1), outcome
    assert not (root / "secret-free.dat").exists()
    histories = await acq.histories(f"discovery-{destination}")
    [data_file] = acq.files(destination).values()
    histories += await acq.histories(f"retrievals-{data_file.id}")
    assert "DiscoveryWorkflow" in histories and "RetrievalBatchWorkflow" in histories
    assert sshd.password not in histories
    assert broker_password not in histories


async def test_an_sftp_provider_down_for_a_run_then_caught_up(acq: Acquisition, sshd) -> None:
    root = sshd.folder(acq.name("provider"))
    write(root / "a.grib", b"a")
    write(root / "b.grib", b"b")
    nobody = f"sftp://{sshd.key_user}@127.0.0.1:{free_port()}{root}"
    destination, host = acq.acquisition_host(
        nobody, [{"glob": "*.grib"}], credentials={"private_key": sshd.private_key}
    )
    down = await acq.run(destination, host)
    assert down.status == "failed" and down.error is not None
    assert "\n" not in down.error and "Traceback" not in down.error
    assert acq.runs(host)[-1].error == down.error
    acq.update_host(host, url=sshd.url(root))
    up = await acq.run(destination, host)
    assert (up.status, up.new, up.fetched) == ("ok", 2, 2)


async def test_a_retried_discovery_takes_up_what_its_dead_attempt_registered(
    acq: Acquisition,
) -> None:
    """An attempt that died between registering its files and linking them to their keys
    leaves unlinked keys; the retry (same run) must find those files, not register again."""
    from sqlmodel import Session, col, select, update

    from ecpds.core import acquisition
    from ecpds.core.models import AcquiredFile, DataFile

    root = acq.tmp / "provider"
    for i in range(3):
        write(root / f"obs_{i}.bufr", f"observation {i}".encode())
    destination, host = acq.acquisition_host(f"file://{root}", [{"glob": "*.bufr"}])
    run_id = acquisition.start_run(acq.engine, host=host, destination=destination)
    first = acquisition.discover(
        acq.engine, acq.box, run_id=run_id, host=host, destination=destination
    )
    assert first.new == 3
    with Session(acq.engine) as session:
        # What the dead attempt leaves: its keys claimed but not linked to their files.
        session.exec(
            update(AcquiredFile).where(col(AcquiredFile.run_id) == run_id).values(data_file_id=None)
        )
        session.commit()
    retried = acquisition.discover(
        acq.engine, acq.box, run_id=run_id, host=host, destination=destination
    )
    assert sorted(retried.data_file_ids) == sorted(first.data_file_ids)
    with Session(acq.engine) as session:
        names = session.exec(
            select(DataFile.name).where(col(DataFile.id).in_(first.data_file_ids))
        ).all()
        assert sorted(names) == ["obs_0.bufr", "obs_1.bufr", "obs_2.bufr"]
        assert (
            len(session.exec(select(DataFile).where(col(DataFile.source).like(f"%{root}%"))).all())
            == 3
        )
        linked = session.exec(
            select(AcquiredFile.data_file_id).where(col(AcquiredFile.run_id) == run_id)
        ).all()
        assert sorted(linked) == sorted(first.data_file_ids)
