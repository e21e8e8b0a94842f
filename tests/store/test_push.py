"""Synchronous and asynchronous push through `ecpds put`, against the real API and worker."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import zlib
from pathlib import Path

import httpx
from sqlmodel import Session, select

from ecpds.core import catalog
from ecpds.core.db import session_scope
from ecpds.core.models import DataFile, DataTransfer, DataUserCreate, HostKind, TransferStatus

from .conftest import System, environ_with


def adler(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


def put_json(system: System, *args: str) -> dict:
    result = system.cli("put", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_sync_push_has_the_right_checksums_in_every_location(system: System) -> None:
    archive = system.tmp / "archive"
    system.destination("bucket", backup_url=str(archive))
    data = os.urandom(3 * 2**20 + 11)
    product = system.tmp / "t850.grib"
    product.write_bytes(data)
    answer = put_json(system, str(product), "-d", "bucket", "-m", "step=12,type=fc", "--asap")
    assert answer["md5"] == hashlib.md5(data).hexdigest() and answer["adler32"] == adler(data)

    data_file = system.until(
        lambda: (f := system.data_file(answer["id"])) and len(f.locations) == 3 and f,
        "the replicas of the new object",
    )
    assert sorted(data_file.locations) == sorted(system.store.urls)
    assert data_file.meta == {"step": "12", "type": "fc"}
    for location in system.store.locations:
        copy = location.fs.cat_file(location.key(answer["id"]))
        assert hashlib.md5(copy).hexdigest() == answer["md5"]
        assert adler(copy) == answer["adler32"]
    backup = system.until(
        lambda: (archive / "t850.grib").exists() and archive / "t850.grib", "backup"
    )
    assert backup.read_bytes() == data

    shown = system.cli("status", answer["id"], "--json")
    assert shown.exit_code == 0, shown.output
    status = json.loads(shown.stdout)
    assert status["file"]["md5"] == answer["md5"]
    assert [t["status"] for t in status["transfers"]] == ["HOLD"]  # a bucket: kept for pick-up
    listed = json.loads(system.cli("files", "-d", "bucket", "-m", "step=12", "--json").stdout)
    assert [f["id"] for f in listed] == [answer["id"]]
    transfers = json.loads(
        system.cli("transfers", "-d", "bucket", "--status", "hold", "--json").stdout
    )
    assert [t["data_file_id"] for t in transfers] == [answer["id"]]
    by_destination = json.loads(system.cli("view", "destination", "bucket", "--json").stdout)
    assert [(e["path"], e["id"]) for e in by_destination] == [("t850.grib", answer["id"])]
    by_step = json.loads(system.cli("view", "metadata", "step", "--json").stdout)
    assert [(e["path"], e["size"]) for e in by_step] == [("12/t850.grib", len(data))]


def test_same_reqid_twice_gives_one_data_file(system: System) -> None:
    system.destination("once")
    product = system.tmp / "once.bin"
    product.write_bytes(b"the same request" * 1000)
    first = put_json(system, str(product), "-d", "once", "--reqid", "req-42")
    second = put_json(system, str(product), "-d", "once", "--reqid", "req-42")
    assert first == second
    assert len(system.files_named("once.bin")) == 1
    objects = [p for p in system.store.primary.fs.find(system.store.primary.root)]
    assert len(objects) == 1 and system.store.partials() == []


def test_stdin_push(system: System) -> None:
    system.destination("piped")
    data = b"from a pipe\n" * 5000
    result = system.cli(
        "put", "-", "-d", "piped", "--target", "dir/piped.txt", "--json", input=data
    )
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["name"] == "piped.txt" and answer["size"] == len(data)
    assert answer["md5"] == hashlib.md5(data).hexdigest()


def test_bad_input_is_one_line_and_stores_nothing(system: System) -> None:
    system.destination("strict")
    product = system.tmp / "p.grib"
    product.write_bytes(b"x" * 100)
    cases = [
        (("put", str(system.tmp / "missing.grib"), "-d", "strict"), "no such file"),
        (("put", str(product), "-d", "nowhere"), "unknown destination 'nowhere'"),
        (("put", str(product), "-d", "strict", "-m", "a=1,broken"), "metadata 'broken'"),
        (("put", str(product), "-d", "strict", "--lifetime", "2001-01-01T00:00:00Z"), "past"),
        (("put", str(product), "-d", "strict", "--lifetime", "soon"), "lifetime 'soon'"),
        (("put", "-", "-d", "strict"), "needs --target"),
        (("put", str(product), "-d", "strict", "--priority", "120"), "priority 120"),
        (("put", str(product), "-d", "strict", "--asap", "--delay", "5"), "--asap"),
        (("wait", "no-such-group"), "unknown group 'no-such-group'"),
        (("status", "0123abcd"), "unknown data file"),
    ]
    for args, message in cases:
        result = system.cli(*args, input=b"")
        assert result.exit_code == 1, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, result.stderr)
        assert message in lines[0], (args, lines[0])
    with Session(system.engine) as session:
        assert session.exec(select(DataFile)).all() == []
    assert system.store.partials() == []


def test_client_killed_mid_upload_leaves_nothing(system: System) -> None:
    system.destination("killed")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ecpds.cli.main", "put", "-", "-d", "killed", "--target", "big"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=environ_with(system.env),
    )
    assert proc.stdin is not None
    block = os.urandom(1 << 20)
    try:
        for _ in range(8):
            proc.stdin.write(block)
        proc.stdin.flush()
        system.until(lambda: system.store.partials(), "the upload to start arriving")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    system.until(lambda: not system.store.partials(), "the partial object to be removed")
    assert system.files_named("big") == []
    assert not any(system.store.primary.fs.find(system.store.primary.root))


def _sftp_group(system: System, sshd, count: int) -> tuple[Path, list[bytes]]:
    folder = sshd.folder(f"fetch-{system.settings.task_queue}")
    contents = []
    for i in range(count):
        data = os.urandom(64 * 1024 + i)
        (folder / f"obs-{i:03d}.bufr").write_bytes(data)
        contents.append(data)
    system.host(
        "hpc",
        sshd.url(folder),
        kind=HostKind.ACQUISITION,
        credentials={"private_key": sshd.private_key},
    )
    return folder, contents


def test_async_group_from_sftp_and_wait(system: System, sshd) -> None:
    system.destination("obs")
    folder, contents = _sftp_group(system, sshd, 50)
    listing = system.tmp / "sources.txt"
    listing.write_text("".join(sshd.url(folder / f"obs-{i:03d}.bufr") + "\n" for i in range(50)))
    registered = system.cli(
        "put", "--sources-from", str(listing), "-d", "obs", "--group", "g50", "--json"
    )
    assert registered.exit_code == 0, registered.output
    files = json.loads(registered.stdout)["files"]
    assert len(files) == 50

    waited = system.cli("wait", "g50", "--interval", "0.3", "--timeout", "240")
    assert waited.exit_code == 0, waited.output
    assert "all 50 files are in the store" in waited.stdout
    for item, data in zip(files, contents, strict=True):
        data_file = system.data_file(item["id"])
        assert data_file.md5 == hashlib.md5(data).hexdigest()
        assert data_file.adler32 == adler(data) and data_file.size == len(data)
        assert b"".join(system.store.iter_bytes(item["id"], adler32=data_file.adler32)) == data
    with Session(system.engine) as session:
        statuses = set(session.exec(select(DataTransfer.status)).all())
    assert statuses == {TransferStatus.HOLD}


def test_async_failure_is_named_by_wait(system: System, sshd) -> None:
    system.destination("obs2")
    folder, _ = _sftp_group(system, sshd, 1)
    good, bad = sshd.url(folder / "obs-000.bufr"), sshd.url(folder / "absent.bufr")
    registered = system.cli("put", "-s", good, "-s", bad, "-d", "obs2", "--group", "gbad")
    assert registered.exit_code == 0, registered.output
    waited = system.cli("wait", "gbad", "--interval", "0.3", "--timeout", "120")
    assert waited.exit_code == 1
    last = waited.stderr.strip().splitlines()[-1]
    assert last == "error: 1 of 2 files failed: absent.bufr", waited.stderr
    assert "no such file" in waited.stderr


def test_sources_that_may_not_be_read_are_refused(system: System, sshd) -> None:
    system.destination("obs3")
    result = system.cli("put", "-s", sshd.url("/tmp/x.bufr"), "-d", "obs3")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "register a host" in result.stderr

    folder, _ = _sftp_group(system, sshd, 1)
    escape = system.cli("put", "-s", sshd.url(f"{folder}/../../etc/passwd"), "-d", "obs3")
    assert escape.exit_code == 1 and "'..' is not allowed" in escape.stderr
    with session_scope(system.engine) as session:
        catalog.create_user(
            session,
            data=DataUserCreate(name="carol", password="carol-password", destinations=["obs3"]),
        )
    as_carol = {"ECPDS_API_USER": "carol", "ECPDS_API_PASSWORD": "carol-password"}
    for url in (sshd.url(folder / "obs-000.bufr"), "file:///etc/hostname"):
        refused = system.cli("put", "-s", url, "-d", "obs3", **as_carol)
        assert refused.exit_code == 1, refused.output
        assert "not under a host of this destination" in refused.stderr
    assert system.files_named("obs-000.bufr") == [] and system.files_named("hostname") == []


def test_async_push_is_disseminated_once_fetched(system: System, sshd) -> None:
    outgoing = system.tmp / "outgoing"
    system.host("out", f"file://{outgoing}")
    system.destination(f"site-{system.settings.task_queue}", hosts=["out"])
    folder, contents = _sftp_group(system, sshd, 1)
    result = system.cli(
        "put",
        "-s",
        sshd.url(folder / "obs-000.bufr"),
        "-d",
        f"site-{system.settings.task_queue}",
        "--target",
        "in/obs.bufr",
        "--json",
    )
    assert result.exit_code == 0, result.output
    [registered] = json.loads(result.stdout)["files"]

    def delivered() -> bool:
        with Session(system.engine) as session:
            transfer = session.get(DataTransfer, registered["transfers"][0])
            return transfer is not None and transfer.status == TransferStatus.DONE

    system.until(delivered, "the transfer to be DONE")
    assert (outgoing / "in" / "obs.bufr").read_bytes() == contents[0]


def test_upload_through_the_web_door_is_replicated(system: System) -> None:
    """Every door ingests the same way: a /data/ PUT gets its replicas at once too."""
    system.destination("webdoor")
    data = os.urandom(2 * 2**20 + 5)
    base = system.settings.api_url.removesuffix("/api/v1")
    answer = httpx.put(
        f"{base}/data/webdoor/w.grib",
        content=data,
        auth=("admin", system.env["ECPDS_API_PASSWORD"]),
        timeout=60,
    )
    assert answer.status_code == 201, answer.text
    (stored,) = system.files_named("w.grib")
    data_file = system.until(
        lambda: (f := system.data_file(stored.id)) and len(f.locations) == 3 and f,
        "the replicas of the object uploaded through /data/",
    )
    for location in system.store.locations:
        assert location.fs.cat_file(location.key(data_file.id)) == data
