"""Integrity (ADLER32 on the way out, MD5/SHA of the bytes delivered) and throttling."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path

import pytest
from peers.sshd import SshServer

from ecpds.core.protocols import ProtocolError
from ecpds.core.store import IntegrityError, Store
from ecpds.core.throttle import Throttle, ThrottleError
from ecpds.core.transmit import SendRequest, send


class FakeClock:
    """A clock that moves only when the throttle sleeps or the source says time passed."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept = 0.0

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.now += seconds


def test_bandwidth_limit_paces_the_stream() -> None:
    clock = FakeClock()
    chunks = [b"x" * 100_000] * 10  # 1 MB at 200 kB/s: about 5 s of pacing
    out = list(Throttle(max_rate=200_000).apply(chunks, "h", clock.time, clock.sleep))
    assert b"".join(out) == b"".join(chunks)
    assert max(len(c) for c in out) <= 20_000
    assert 4.8 <= clock.slept <= 5.0


def test_minimum_rate_and_maximum_duration_interrupt() -> None:
    def slow(clock: FakeClock):
        for _ in range(100):
            clock.now += 1.0  # 1 kB per second
            yield b"y" * 1000

    clock = FakeClock()
    throttle = Throttle(min_rate=5000, grace=10)
    with pytest.raises(ThrottleError, match="below the minimum of 5000 B/s") as info:
        list(throttle.apply(slow(clock), "sftp host h1", clock.time, clock.sleep))
    assert info.value.retryable and 10 < clock.now < 13
    clock = FakeClock()
    with pytest.raises(ThrottleError, match="maximum duration of 30 s"):
        list(Throttle(max_duration=30).apply(slow(clock), "h", clock.time, clock.sleep))


def test_max_duration_over_sftp_leaves_a_resumable_partial(store: Store, sshd: SshServer) -> None:
    data = os.urandom(3 << 20)
    object_id = os.urandom(8).hex()
    adler = store.write(object_id, [data]).adler32
    folder = sshd.folder("throttled")
    options = {"max_rate": 1 << 20, "max_duration": 0.5, "chunk_size": 1 << 20}
    request = SendRequest(
        object_id, len(data), adler, "slowhost", sshd.url(folder), options, "t.bin"
    )
    with pytest.raises(ProtocolError, match="maximum duration") as info:
        send(store, request, {"private_key": sshd.private_key}, progress=lambda n: None)
    assert info.value.retryable and "slowhost" in str(info.value)
    assert not (folder / "t.bin").exists()
    assert 0 < (folder / ".t.bin.ecpds-part").stat().st_size < len(data)


def test_corrupt_store_object_is_never_delivered(store: Store, tmp_path: Path) -> None:
    data = os.urandom(2 << 20)
    object_id = os.urandom(8).hex()
    adler = store.write(object_id, [data]).adler32
    path = Path(store.primary.key(object_id))
    damaged = bytearray(path.read_bytes())
    damaged[-1] ^= 0xFF
    path.write_bytes(bytes(damaged))
    md5 = hashlib.md5(data).hexdigest()  # the catalog's: known, but the bytes read are checked
    request = SendRequest(
        object_id, len(data), adler, "h", f"file://{tmp_path / 'out'}", {}, "c.bin", md5
    )
    with pytest.raises(IntegrityError):
        send(store, request, {}, progress=lambda n: None)
    assert list((tmp_path / "out").iterdir()) == []


def test_md5_is_the_objects_unless_compressed(store: Store, tmp_path: Path) -> None:
    data = os.urandom(1 << 20)
    object_id = os.urandom(8).hex()
    stored = store.write(object_id, [data])
    assert stored.md5 == hashlib.md5(data).hexdigest()
    out = f"file://{tmp_path}"
    plain = SendRequest(object_id, len(data), stored.adler32, "h", out, {}, "p.bin", stored.md5)
    assert send(store, plain, {}, progress=lambda n: None).md5 == stored.md5
    packed = replace(plain, target="z.bin", compression="gzip")
    result = send(store, packed, {}, progress=lambda n: None)
    # Compressed bytes are new: their MD5 is computed on the way, not taken from the store.
    assert result.md5 == hashlib.md5((tmp_path / "z.bin.gz").read_bytes()).hexdigest()
    assert result.md5 != stored.md5


def test_md5_and_sha_in_one_pass(store: Store, tmp_path: Path) -> None:
    data = os.urandom(1 << 20)
    object_id = os.urandom(8).hex()
    adler = store.write(object_id, [data]).adler32
    request = SendRequest(
        object_id,
        len(data),
        adler,
        "h",
        f"file://{tmp_path}",
        {"checksums": ["sha512"]},
        "s.bin",
        checksums=("sha256",),
    )
    result = send(store, request, {}, progress=lambda n: None)
    assert result.md5 == hashlib.md5(data).hexdigest()
    assert result.extra["sha256"] == hashlib.sha256(data).hexdigest()
    assert result.extra["sha512"] == hashlib.sha512(data).hexdigest()
