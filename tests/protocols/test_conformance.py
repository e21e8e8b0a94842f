"""One conformance suite for every dissemination protocol, each against a real server.

A protocol joins by adding the name of a fixture that yields a `peers.conformance.Peer`
to PEERS.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
from collections.abc import Iterator
from dataclasses import replace

import pytest
from peers.conformance import Peer

from ecpds.core.compression import get_codec
from ecpds.core.protocols import ProtocolError
from ecpds.core.store import Store
from ecpds.core.transmit import SendRequest, discard_partial, partial_offset, send

PEERS = [
    "file_peer",
    "sftp_peer",
    "sftp_asyncssh_peer",
    "ftp_peer",
    "ftps_peer",
    "ftps_vsftpd_peer",
    "webdav_peer",
    "https_put_peer",
    "https_post_peer",
    "s3_peer",
    "azure_peer",
    "gcs_peer",
]

MiB = 1 << 20
BIG = 100 * MiB
# The MD5 the catalog holds for each stored object, which the worker passes to `send`.
CATALOG_MD5: dict[str, str] = {}


class Interrupted(Exception):
    pass


@pytest.fixture(params=PEERS)
def peer(request: pytest.FixtureRequest) -> Peer:
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, dict]]:
    """A store holding the suite's files, written once: name -> (id, data or md5, adler32)."""
    store = Store([str(tmp_path_factory.mktemp("conformance-store"))])
    made: dict[str, tuple[str, bytes, str]] = {}
    for name, data in [
        ("small", os.urandom(10_000)),
        ("empty", b""),
        ("medium", os.urandom(5 * MiB + 123)),
        ("other", os.urandom(7_000)),
    ]:
        object_id = os.urandom(8).hex()
        stored = store.write(object_id, [data])
        made[name] = (object_id, data, stored.adler32)
        CATALOG_MD5[object_id] = stored.md5
    yield store, made


@pytest.fixture(scope="module")
def big_object(objects: tuple[Store, dict]) -> tuple[str, str, str]:
    """100 MiB of random bytes in the store: (id, md5, adler32)."""
    store, _ = objects
    md5 = hashlib.md5()

    def chunks() -> Iterator[bytes]:
        for _ in range(BIG // (4 * MiB)):
            chunk = os.urandom(4 * MiB)
            md5.update(chunk)
            yield chunk

    object_id = os.urandom(8).hex()
    stored = store.write(object_id, chunks())
    CATALOG_MD5[object_id] = stored.md5
    return object_id, md5.hexdigest(), stored.adler32


def _request(peer: Peer, object_id: str, size: int, adler: str, target: str, **kw) -> SendRequest:
    return SendRequest(
        data_file_id=object_id,
        size=size,
        adler32=adler,
        host_name="conformance",
        host_url=kw.pop("url", peer.url),
        host_options={**peer.options, **kw.pop("options", {})},
        target=target,
        md5=CATALOG_MD5[object_id],
        **kw,
    )


def _send(store: Store, peer: Peer, request: SendRequest, credentials=None):
    return send(store, request, peer.credentials if credentials is None else credentials,
                progress=lambda n: None)  # fmt: skip


def test_small_empty_nested_and_sidecar(peer: Peer, objects: tuple[Store, dict]) -> None:
    store, made = objects
    for name, target in [("small", "small.bin"), ("empty", "empty.bin"), ("small", "a/b/c/d.bin")]:
        object_id, data, adler = made[name]
        request = _request(peer, object_id, len(data), adler, target, options={"md5_sidecar": True})
        result = _send(store, peer, request)
        assert peer.read(target) == data
        assert result.md5 == hashlib.md5(data).hexdigest()
        assert result.remote_size == len(data)
        sidecar = peer.read(f"{target}.md5")
        assert sidecar is not None and sidecar.decode().split() == [
            result.md5,
            target.split("/")[-1],
        ]
    assert peer.names() == sorted(
        [
            "small.bin",
            "small.bin.md5",
            "empty.bin",
            "empty.bin.md5",
            "a/b/c/d.bin",
            "a/b/c/d.bin.md5",
        ]
    )


def test_overwrite(peer: Peer, objects: tuple[Store, dict]) -> None:
    store, made = objects
    for name in ("medium", "other"):
        object_id, data, adler = made[name]
        _send(store, peer, _request(peer, object_id, len(data), adler, "same.bin"))
    assert peer.read("same.bin") == made["other"][1]
    assert peer.names() == ["same.bin"]


def test_interrupted_upload_resumes_or_restarts(peer: Peer, objects: tuple[Store, dict]) -> None:
    store, made = objects
    object_id, data, adler = made["medium"]
    request = _request(
        peer, object_id, len(data), adler, "dir/resume.bin", options={"chunk_size": MiB}
    )

    def break_off(count: int) -> None:
        if count >= 2 * MiB:
            raise Interrupted("link broke")

    with pytest.raises(Interrupted):
        send(store, request, peer.credentials, progress=break_off)
    assert peer.read("dir/resume.bin") is None  # never visible under its real name
    offset = partial_offset(request, peer.credentials)
    if peer.resumable:
        assert 0 < offset < len(data)
    else:
        assert offset == 0
    result = _send(store, peer, replace(request, resume_offset=offset))
    assert result.bytes_sent == len(data) - offset
    assert result.md5 == hashlib.md5(data).hexdigest()
    assert peer.read("dir/resume.bin") == data
    assert peer.names() == ["dir/resume.bin"]


def test_discarded_partial_upload_leaves_the_delivered_file(
    peer: Peer, objects: tuple[Store, dict]
) -> None:
    """A transfer restarted elsewhere removes what it began here, and only that."""
    store, made = objects
    other_id, other, other_adler = made["other"]
    _send(store, peer, _request(peer, other_id, len(other), other_adler, "kept.bin"))
    object_id, data, adler = made["medium"]
    request = _request(peer, object_id, len(data), adler, "kept.bin", options={"chunk_size": MiB})

    def break_off(count: int) -> None:
        if count >= 2 * MiB:
            raise Interrupted("link broke")

    with pytest.raises(Interrupted):
        send(store, request, peer.credentials, progress=break_off)
    discard_partial(request, peer.credentials)
    in_place = peer.url.startswith("gcs") or (
        peer.url.startswith("http") and peer.options.get("method") != "webdav"
    )
    if in_place:
        # No rename and no resume: the upload wrote over the name, and removed it on breaking.
        assert peer.names() == []
    else:
        assert peer.read("kept.bin") == other  # the earlier delivery under that name stays
        assert peer.names() == ["kept.bin"]
    if not peer.url.startswith("azure:"):  # Azure drops uncommitted blocks by itself
        assert partial_offset(request, peer.credentials) == 0


def test_parallel_uploads_into_a_new_folder(peer: Peer, objects: tuple[Store, dict]) -> None:
    """Transfers of one destination run side by side, each making the same missing folders."""
    store, made = objects
    object_id, data, adler = made["small"]
    targets = [f"new/deep/f{n}.bin" for n in range(6)]
    with concurrent.futures.ThreadPoolExecutor(len(targets)) as pool:
        sent = pool.map(
            lambda target: _send(store, peer, _request(peer, object_id, len(data), adler, target)),
            targets,
        )
        assert all(result.remote_size == len(data) for result in sent)
    assert peer.names() == sorted(targets)
    assert all(peer.read(target) == data for target in targets)


def test_compressed_delivery(peer: Peer, objects: tuple[Store, dict]) -> None:
    store, made = objects
    object_id, data, adler = made["small"]
    request = _request(peer, object_id, len(data), adler, "z/prod.grib", compression="zstd")
    result = _send(store, peer, request)
    assert result.target == "z/prod.grib.zst"
    packed = peer.read("z/prod.grib.zst")
    assert packed is not None and result.remote_size == len(packed)
    assert b"".join(get_codec("zstd").decompress([packed])) == data


def test_100_mib_file(peer: Peer, objects: tuple[Store, dict], big_object) -> None:
    store, _ = objects
    object_id, md5, adler = big_object
    request = _request(peer, object_id, BIG, adler, "big/100m.bin")
    result = _send(store, peer, request)
    assert result.md5 == md5 and result.remote_size == BIG
    delivered = peer.read("big/100m.bin")
    assert delivered is not None and hashlib.md5(delivered).hexdigest() == md5


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("bad_credentials", "authentication failed"),
        ("unknown_host", "unknown host"),
        ("refused", "connection refused"),
        ("missing_container", "does not exist"),
        ("full_disk", "disk full"),
    ],
)
def test_errors_a_user_sees(
    peer: Peer, objects: tuple[Store, dict], case: str, expected: str
) -> None:
    store, made = objects
    name = "medium" if case == "full_disk" else "small"
    object_id, data, adler = made[name]
    url = {
        "bad_credentials": peer.url,
        "unknown_host": peer.unknown_host_url,
        "refused": peer.refused_url,
        "missing_container": peer.missing_container_url,
        "full_disk": peer.full_disk_url,
    }[case]
    if url is None or (case == "bad_credentials" and peer.bad_credentials is None):
        pytest.skip(f"{case} does not apply to this peer or cannot be arranged here")
    credentials = peer.bad_credentials if case == "bad_credentials" else peer.credentials
    options = {"timeout": 10, **peer.error_options.get(case, {})}
    request = _request(peer, object_id, len(data), adler, "err/x.bin", url=url, options=options)
    with pytest.raises(ProtocolError) as info:
        _send(store, peer, request, credentials)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert "conformance" in message and request.host_url.split(":")[0] in message
    assert info.value.retryable


def test_names_with_spaces_and_accents(peer: Peer, objects: tuple[Store, dict]) -> None:
    store, made = objects
    object_id, data, adler = made["small"]
    target = "Prévisions 2026/t 850 hPa (été).grib"
    _send(store, peer, _request(peer, object_id, len(data), adler, target))
    assert peer.read(target) == data
    assert peer.names() == [target]
