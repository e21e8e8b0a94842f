"""The first-cut store: streamed writes with checksums, nothing left by a broken write."""

from __future__ import annotations

import hashlib
import os
import zlib

import pytest

from ecpds.core.store import IntegrityError, Store, StoreError


def chunks(data: bytes, size: int = 65536):
    for i in range(0, len(data), size):
        yield data[i : i + size]


def test_write_computes_md5_and_adler32(store: Store) -> None:
    data = os.urandom(3 * 2**20 + 17)
    obj = store.write("abc123", chunks(data))
    assert obj.size == len(data)
    assert obj.md5 == hashlib.md5(data).hexdigest()
    assert obj.adler32 == f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"
    assert b"".join(store.iter_bytes("abc123", adler32=obj.adler32)) == data
    assert b"".join(store.iter_bytes("abc123", start=10, end=20)) == data[10:20]


def test_broken_write_leaves_nothing(store: Store) -> None:
    def broken():
        yield b"x" * 1000
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        store.write("dead01", broken())
    assert not store.exists("dead01")
    assert store.partials() == []


def test_objects_are_written_once(store: Store) -> None:
    store.write("once01", [b"a"])
    with pytest.raises(StoreError, match="already exists"):
        store.write("once01", [b"b"])


def test_verify_detects_corruption(store: Store) -> None:
    obj = store.write("rot001", [b"hello world"])
    path = store.primary.key("rot001")
    with open(path, "r+b") as f:
        f.write(b"J")
    assert not store.verify("rot001", obj.adler32)
    with pytest.raises(IntegrityError):
        list(store.iter_bytes("rot001", adler32=obj.adler32))
