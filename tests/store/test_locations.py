"""Store locations: a local folder and an S3 replica, read fall-back, repair, archives."""

from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path

import pytest

from ecpds.core import store as store_module
from ecpds.core.store import VERIFY_FIRST_MAX, IntegrityError, Location, Store


def adler(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


def s3_location(s3_server, bucket: str) -> Location:
    return Location(
        f"s3://{bucket}/store",
        key=s3_server.access_key_id,
        secret=s3_server.secret_access_key,
        client_kwargs={"endpoint_url": s3_server.endpoint, "region_name": s3_server.region},
        skip_instance_cache=True,
    )


@pytest.fixture
def two_folders(tmp_path: Path) -> Store:
    return Store([str(tmp_path / "a"), str(tmp_path / "b")])


def corrupt(location: Location, object_id: str) -> None:
    with location.fs.open(location.key(object_id), "r+b") as f:
        f.seek(5)
        f.write(b"#")


def test_replica_in_s3_has_the_same_checksums(tmp_path: Path, s3_server) -> None:
    store = Store([str(tmp_path / "local"), s3_location(s3_server, s3_server.bucket())])
    data = os.urandom(5 * 2**20 + 3)
    obj = store.write("f00d01", [data[i : i + 2**20] for i in range(0, len(data), 2**20)])
    assert obj.locations == [store.primary.url]
    report = store.repair("f00d01", obj.adler32)
    assert report.good == [store.primary.url] and report.repaired == [store.locations[1].url]
    for location in store.locations:
        copy = location.fs.cat_file(location.key("f00d01"))
        assert hashlib.md5(copy).hexdigest() == obj.md5 == hashlib.md5(data).hexdigest()
        assert adler(copy) == obj.adler32
    assert store.verify("f00d01", obj.adler32)


def test_read_falls_back_when_a_copy_is_missing_or_corrupted(two_folders: Store) -> None:
    store = two_folders
    data = b"0123456789" * 1000
    obj = store.write("beef01", [data])
    assert store.repair("beef01", obj.adler32).repaired == [store.locations[1].url]
    corrupt(store.primary, "beef01")
    assert b"".join(store.iter_bytes("beef01", adler32=obj.adler32)) == data
    store.primary.delete("beef01")
    assert b"".join(store.iter_bytes("beef01", adler32=obj.adler32)) == data
    assert b"".join(store.iter_bytes("beef01", start=3, end=13)) == data[3:13]


def test_large_corrupted_copy_fails_once_then_reads_from_the_replica(tmp_path: Path) -> None:
    store = Store([str(tmp_path / "a"), str(tmp_path / "b")])
    data = os.urandom(VERIFY_FIRST_MAX + 100)
    obj = store.write("cafe01", [data])
    store.repair("cafe01", obj.adler32)
    corrupt(store.primary, "cafe01")
    with pytest.raises(IntegrityError, match="does not match"):
        b"".join(store.iter_bytes("cafe01", adler32=obj.adler32))
    # The retry skips the copy found bad.
    assert b"".join(store.iter_bytes("cafe01", adler32=obj.adler32)) == data


def test_a_suspicion_lapses_once_another_process_may_have_repaired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store([str(tmp_path / "a"), str(tmp_path / "b")])
    data = os.urandom(VERIFY_FIRST_MAX + 100)
    obj = store.write("cafe02", [data])
    store.repair("cafe02", obj.adler32)
    corrupt(store.primary, "cafe02")
    with pytest.raises(IntegrityError):
        b"".join(store.iter_bytes("cafe02", adler32=obj.adler32))
    # Another worker repairs the copy; this one still takes it for bad, for a while.
    assert Store(store.urls).repair("cafe02", obj.adler32).repaired == [store.primary.url]
    assert store.repair("cafe02", obj.adler32, check=False).good == [store.locations[1].url]
    corrupt(store.primary, "cafe02")
    with pytest.raises(IntegrityError):
        b"".join(store.iter_bytes("cafe02", adler32=obj.adler32))
    Store(store.urls).repair("cafe02", obj.adler32)
    monkeypatch.setattr(store_module, "SUSPECT_SECONDS", 0)
    assert store.repair("cafe02", obj.adler32, check=False).good == store.urls


def test_repair_restores_deleted_and_corrupted_copies(two_folders: Store) -> None:
    store = two_folders
    obj = store.write("abcd01", [b"payload" * 100])
    store.repair("abcd01", obj.adler32)
    store.locations[1].delete("abcd01")
    corrupt(store.primary, "abcd01")
    report = store.repair("abcd01", obj.adler32)
    # The only good copy is gone: nothing to repair from, and nothing is made up.
    assert report.good == [] and sorted(report.lost) == sorted(store.urls)
    obj2 = store.write("abcd02", [b"payload" * 100])
    store.repair("abcd02", obj2.adler32)
    corrupt(store.locations[1], "abcd02")
    report = store.repair("abcd02", obj2.adler32)
    assert report.good == [store.primary.url] and report.repaired == [store.locations[1].url]
    assert store.verify("abcd02", obj2.adler32)


def test_archive_is_written_once(two_folders: Store, tmp_path: Path) -> None:
    obj = two_folders.write("aaaa01", [b"first"])
    archive = tmp_path / "archive"
    assert two_folders.archive("aaaa01", str(archive), "x/y.grib", obj.adler32)
    assert not two_folders.archive("aaaa01", str(archive), "x/y.grib", obj.adler32)
    assert (archive / "x" / "y.grib").read_bytes() == b"first"
    with pytest.raises(Exception, match="invalid archive name"):
        two_folders.archive("aaaa01", str(archive), "../escape", obj.adler32)


def test_an_object_written_by_another_process_is_seen_after_a_listing(s3_server) -> None:
    """Each replica has its own S3 client: a listing kept by one must not hide new objects."""
    bucket = s3_server.bucket()
    one, two = Store([s3_location(s3_server, bucket)]), Store([s3_location(s3_server, bucket)])
    one.write("ab0001", [b"first"])
    assert one.partials() == []  # lists the location
    stored = two.write("ab0002", [b"second"])
    assert one.exists("ab0002")
    assert b"".join(one.iter_bytes("ab0002", adler32=stored.adler32)) == b"second"
