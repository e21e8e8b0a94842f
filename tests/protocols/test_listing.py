"""Listing and reading, the acquisition side of every protocol, each against a real server.

Each peer makes its files the fastest way its server allows: on the server's disk for
sshd, the FTP servers, WebDAV and nginx; in the server's own storage for the object
stores (moto and the GCS emulator run in this process, Azurite's index is written while
it is stopped). The tests list and read them through `Remote.list` and `Remote.read`.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from peers.azure import ACCOUNT, ACCOUNT_KEY, AzureServer, azurite_blob
from peers.conformance import Peer
from peers.ftp import FtpServer
from peers.httpd import HttpServer
from peers.nginx import NginxServer
from peers.process import stop
from peers.sshd import SshServer

from ecpds.core.devserver import free_port, wait_for_port
from ecpds.core.protocols import ProtocolError, open_remote, openssh
from ecpds.core.protocols.base import Remote

MANY = 10_000
# The modification time given to files made on disk: on a whole minute (FTP LIST and
# index pages say minutes) and within six months (older, LIST says only the day).
OLD = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)


@dataclass
class ListPeer:
    url: str
    options: dict
    credentials: dict
    put: Callable[[dict[str, bytes]], None]  # relative path -> bytes
    put_many: Callable[[str, int], None]  # folder, count: files f00000.dat ...
    sets_mtime: bool  # put() gives files the time OLD (else: the upload time)
    mtime_step: int  # seconds of precision of listed times (60: minutes)
    resumes: bool = True  # read(offset > 0) starts mid-file
    disk: Path | None = None  # where the files are, for peers that serve a folder

    def remote(self) -> Remote:
        return open_remote("listing", self.url, self.options, self.credentials)


def many_name(i: int) -> str:
    return f"f{i:05d}.dat"


def many_data(i: int) -> bytes:
    return b"x" * (i % 50)


def _disk(folder: Path, owner: str | None = None) -> tuple[Callable, Callable]:
    def put(files: dict[str, bytes]) -> None:
        for name, data in files.items():
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            os.utime(path, (OLD.timestamp(), OLD.timestamp()))
            for parent in [path.parent, *path.parent.parents]:
                if parent == folder:
                    break
                os.utime(parent, (OLD.timestamp(), OLD.timestamp()))

    def put_many(sub: str, count: int) -> None:
        where = folder / sub
        where.mkdir(parents=True)
        for i in range(count):
            fd = os.open(where / many_name(i), os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, many_data(i))
            os.close(fd)

    return put, put_many


@pytest.fixture
def file_lister(tmp_path: Path) -> ListPeer:
    folder = tmp_path / "remote"
    folder.mkdir()
    return ListPeer(
        f"file://{folder}", {}, {}, *_disk(folder), sets_mtime=True, mtime_step=1, disk=folder
    )


def _sftp(sshd: SshServer, engine: str) -> ListPeer:
    folder = sshd.folder(f"l-{uuid.uuid4().hex[:8]}")
    return ListPeer(
        sshd.url(folder),
        {"host_key": sshd.host_key, "engine": engine},
        {"private_key": sshd.private_key},
        *_disk(folder),
        sets_mtime=True,
        mtime_step=1,
        disk=folder,
    )


@pytest.fixture
def sftp_lister(sshd: SshServer) -> ListPeer:
    if openssh.client() is None:
        pytest.skip("no OpenSSH client 8.5 or newer on PATH (run tests/peers/install.sh)")
    return _sftp(sshd, "openssh")


@pytest.fixture
def sftp_asyncssh_lister(sshd: SshServer) -> ListPeer:
    return _sftp(sshd, "asyncssh")


def _ftp(server: FtpServer, step: int) -> ListPeer:
    name = f"l-{uuid.uuid4().hex[:8]}"
    folder = server.root / name
    folder.mkdir()
    folder.chmod(0o777)
    options = {"ca_file": server.ca_file} if server.ca_file else {}
    return ListPeer(
        server.url(name),
        options,
        {"password": server.password},
        *_disk(folder),
        sets_mtime=True,
        mtime_step=step,
        disk=folder,
    )


@pytest.fixture
def ftp_lister(ftp_server: FtpServer) -> ListPeer:
    return _ftp(ftp_server, 1)  # pyftpdlib speaks MLSD: times to the second


@pytest.fixture
def ftps_lister(ftps_server: FtpServer) -> ListPeer:
    return _ftp(ftps_server, 1)


@pytest.fixture
def ftps_vsftpd_lister(vsftpd_server: FtpServer) -> ListPeer:
    return _ftp(vsftpd_server, 60)  # vsftpd has no MLSD: LIST, to the minute


@pytest.fixture
def webdav_lister(webdav_server: HttpServer) -> ListPeer:
    name = f"l-{uuid.uuid4().hex[:8]}"
    folder = webdav_server.root / name
    folder.mkdir()
    return ListPeer(
        webdav_server.url(name),
        {"method": "webdav"},
        webdav_server.credentials,
        *_disk(folder),
        sets_mtime=True,
        mtime_step=1,
    )


def _nginx(server: NginxServer, tls: bool, json: bool = False) -> ListPeer:
    name = f"l-{uuid.uuid4().hex[:8]}"
    folder = server.root / name
    folder.mkdir()
    return ListPeer(
        server.url(name, tls=tls, json=json),
        {"ca_file": server.ca_file} if tls else {},
        {},
        *_disk(folder),
        sets_mtime=True,
        mtime_step=60,
    )


@pytest.fixture
def http_index_lister(nginx_server: NginxServer) -> ListPeer:
    return _nginx(nginx_server, tls=False)


@pytest.fixture
def https_index_lister(nginx_server: NginxServer) -> ListPeer:
    return _nginx(nginx_server, tls=True)


@pytest.fixture
def http_json_index_lister(nginx_server: NginxServer) -> ListPeer:
    return _nginx(nginx_server, tls=False, json=True)


@pytest.fixture(scope="module")
def s3_moto() -> Iterator[tuple[str, object]]:
    """moto's S3 server in this process, so that its backend can be filled directly (one
    signed PUT per object over HTTP takes a minute for 10,000)."""
    try:
        from moto.s3.models import s3_backends
        from moto.server import ThreadedMotoServer
    except ImportError:
        pytest.skip("moto[server] not installed (pip install 'moto[server]')")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        # without authentication moto files everything under its default account
        yield f"http://127.0.0.1:{port}", s3_backends["123456789012"]["global"]
    finally:
        server.stop()


@pytest.fixture
def s3_lister(s3_moto: tuple[str, object]) -> ListPeer:
    endpoint, backend = s3_moto
    bucket = f"ecpds-{uuid.uuid4().hex[:12]}"
    backend.create_bucket(bucket, "us-east-1")  # type: ignore[attr-defined]

    def upload(name: str, data: bytes) -> None:
        backend.put_object(bucket, f"drop/{name}", data)  # type: ignore[attr-defined]

    def put(files: dict[str, bytes]) -> None:
        for name, data in files.items():
            upload(name, data)

    def put_many(sub: str, count: int) -> None:
        for i in range(count):
            upload(f"{sub}/{many_name(i)}", many_data(i))

    return ListPeer(
        f"s3://{bucket}/drop",
        {"endpoint": endpoint, "region": "us-east-1", "path_style": True},
        {"access_key_id": "test-key", "secret_access_key": "test-secret"},
        put,
        put_many,
        sets_mtime=False,
        mtime_step=1,
    )


class Azurite:
    """An Azurite of these tests' own, whose blob index can be written while it is stopped:
    it takes one PUT at a time, and 10,000 of them took a minute or more."""

    def __init__(self, folder: Path) -> None:
        exe = azurite_blob()
        if exe is None:
            pytest.skip("Azurite not installed (run tests/peers/install.sh; it needs npm)")
        self.exe, self.folder, self.port = exe, folder, free_port()
        self.server = AzureServer(f"http://127.0.0.1:{self.port}/{ACCOUNT}", ACCOUNT, ACCOUNT_KEY)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        args = ["--blobHost", "127.0.0.1", "--blobPort", str(self.port)]
        args += ["--location", str(self.folder / "data"), "--skipApiVersionCheck"]
        args += ["--disableTelemetry", "--silent"]
        log = (self.folder / "azurite.log").open("ab")
        self.proc = subprocess.Popen([self.exe, *args], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for_port("127.0.0.1", self.port, timeout=60, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)  # Azurite writes its index out as it stops
            self.proc = None

    def copies(self, container: str, model: str, names: dict[str, int]) -> None:
        """Blobs `names` (name -> size <= the model's) sharing the stored bytes of `model`."""
        self.stop()
        path = self.folder / "data" / "__azurite_db_blob__.json"
        db = json.loads(path.read_text())
        blobs = next(c for c in db["collections"] if c["name"] == "$BLOBS_COLLECTION$")
        template = next(
            b for b in blobs["data"] if b["name"] == model and b["containerName"] == container
        )
        for number, (name, size) in enumerate(names.items(), blobs["maxId"] + 1):
            blob = json.loads(json.dumps(template))
            blob["name"], blob["$loki"] = name, number
            blob["properties"]["contentLength"] = size
            blob["properties"]["etag"] = f'"0x{number:015X}"'
            blob["properties"].pop("contentMD5", None)
            blob["persistency"]["count"] = size
            blobs["data"].append(blob)
            blobs["maxId"] = number
        for field, index in blobs["binaryIndices"].items():
            data = blobs["data"]
            index["values"] = sorted(range(len(data)), key=lambda i: str(data[i][field]))
            index["dirty"] = False
        path.write_text(json.dumps(db))
        self.start()


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    server = Azurite(tmp_path_factory.mktemp("azurite-listing"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def azure_lister(azurite: Azurite) -> ListPeer:
    container = azurite.server.container()
    service = azurite.server.service()

    def upload(name: str, data: bytes) -> None:
        service.get_blob_client(container, f"drop/{name}").upload_blob(data, overwrite=True)

    def put(files: dict[str, bytes]) -> None:
        for name, data in files.items():
            upload(name, data)

    def put_many(sub: str, count: int) -> None:
        largest = max(range(count), key=lambda i: len(many_data(i)))
        model = f"drop/{sub}/{many_name(largest)}"
        upload(f"{sub}/{many_name(largest)}", many_data(largest))
        others = {f"drop/{sub}/{many_name(i)}": len(many_data(i)) for i in range(count)}
        del others[model]
        azurite.copies(container, model, others)

    return ListPeer(
        f"azure://{container}/drop",
        azurite.server.options(),
        azurite.server.credentials,
        put,
        put_many,
        sets_mtime=False,
        mtime_step=1,
    )


@pytest.fixture(scope="module")
def gcs_emulator() -> Iterator[tuple[str, object]]:
    """The GCS emulator in this process, so that its storage can be filled directly: over
    HTTP it rewrites its whole index on every upload, which makes 10,000 take minutes."""
    try:
        from gcp_storage_emulator.server import create_server
    except ImportError:
        pytest.skip("gcp-storage-emulator not installed (pip install gcp-storage-emulator)")
    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", server._storage
    finally:
        server.stop()


@pytest.fixture
def gcs_lister(gcs_emulator: tuple[str, object]) -> ListPeer:
    from gcp_storage_emulator.handlers.objects import _checksums, _make_object_resource

    endpoint, storage = gcs_emulator
    bucket = f"ecpds-{uuid.uuid4().hex[:12]}"
    httpx.post(
        f"{endpoint}/storage/v1/b", params={"project": "test"}, json={"name": bucket}
    ).raise_for_status()

    def store(name: str, data: bytes) -> None:
        key = f"drop/{name}"
        resource = _make_object_resource(
            endpoint, bucket, key, "application/octet-stream", str(len(data))
        )
        storage._store.write_bytes(storage._object_path(bucket, key), data)  # type: ignore[attr-defined]
        storage.objects.setdefault(bucket, {})[key] = _checksums(data, resource)  # type: ignore[attr-defined]

    def put(files: dict[str, bytes]) -> None:
        for name, data in files.items():
            store(name, data)

    def put_many(sub: str, count: int) -> None:
        for i in range(count):
            store(f"{sub}/{many_name(i)}", many_data(i))

    return ListPeer(
        f"gcs://{bucket}/drop",
        {"endpoint": endpoint, "anonymous": True},
        {},
        put,
        put_many,
        sets_mtime=False,
        mtime_step=1,
    )


LISTERS = [
    "file_lister",
    "sftp_lister",
    "sftp_asyncssh_lister",
    "ftp_lister",
    "ftps_lister",
    "ftps_vsftpd_lister",
    "webdav_lister",
    "http_index_lister",
    "https_index_lister",
    "http_json_index_lister",
    "s3_lister",
    "azure_lister",
    "gcs_lister",
]


@pytest.fixture(params=LISTERS)
def lister(request: pytest.FixtureRequest) -> ListPeer:
    return request.getfixturevalue(request.param)


@pytest.fixture
def remote(lister: ListPeer) -> Iterator[Remote]:
    with lister.remote() as remote:
        yield remote


def _listed(remote: Remote, folder: str = "", *, recursive: bool = False) -> dict:
    found = {}
    for entry in remote.list(folder, recursive=recursive):
        assert entry.path not in found, f"{entry.path} listed twice"
        found[entry.path] = entry
    return found


TREE = {
    "a.txt": b"alpha\n",
    "b.bin": os.urandom(1234),
    "sub/c.txt": b"charlie" * 100,
    "sub/deeper/d.txt": b"",
    "with space é.txt": b"odd name",
}


def test_names_sizes_times_and_folders(lister: ListPeer, remote: Remote) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    lister.put(TREE)
    after = datetime.now(UTC) + timedelta(seconds=5)

    top = _listed(remote)
    assert set(top) == {"a.txt", "b.bin", "sub", "with space é.txt"}
    assert top["sub"].is_dir and top["sub"].name == "sub"
    for name in ("a.txt", "b.bin", "with space é.txt"):
        entry = top[name]
        assert not entry.is_dir
        assert entry.size == len(TREE[name])
        assert entry.mtime is not None and entry.mtime.tzinfo is not None
        if lister.sets_mtime:
            assert abs((entry.mtime - OLD).total_seconds()) < lister.mtime_step
        else:
            assert before - timedelta(seconds=lister.mtime_step) <= entry.mtime <= after

    sub = _listed(remote, "sub")
    assert set(sub) == {"sub/c.txt", "sub/deeper"}
    assert sub["sub/deeper"].is_dir and sub["sub/c.txt"].size == 700

    everything = _listed(remote, recursive=True)
    assert {p for p, e in everything.items() if not e.is_dir} == set(TREE)
    assert {p for p, e in everything.items() if e.is_dir} == {"sub", "sub/deeper"}
    assert everything["sub/deeper/d.txt"].size == 0
    assert set(_listed(remote, "sub/deeper")) == {"sub/deeper/d.txt"}


def test_missing_folder_is_one_line(remote: Remote) -> None:
    with pytest.raises(ProtocolError) as info:
        list(remote.list("no-such-folder"))
    message = str(info.value)
    assert "no-such-folder" in message and "does not exist" in message, message
    assert "\n" not in message and info.value.retryable is False


def test_ten_thousand_entries_in_one_pass(lister: ListPeer, remote: Remote) -> None:
    lister.put_many("many", MANY)
    lister.put({"many-next/other.txt": b"not in many"})
    listed = _listed(remote, "many")
    assert len(listed) == MANY
    for i in (0, 1, 4_999, 5_000, MANY - 1):
        entry = listed[f"many/{many_name(i)}"]
        assert entry.size == len(many_data(i)) and not entry.is_dir
    assert sorted(listed) == [f"many/{many_name(i)}" for i in range(MANY)]


def test_read_whole_and_from_an_offset(lister: ListPeer, remote: Remote) -> None:
    data = os.urandom(3 * (1 << 20) + 4321)
    lister.put({"big.bin": data, "sub/small.txt": b"hello"})
    assert b"".join(remote.read("big.bin")) == data
    assert b"".join(remote.read("sub/small.txt")) == b"hello"
    if lister.resumes:
        assert b"".join(remote.read("big.bin", offset=1_000_003)) == data[1_000_003:]
        assert b"".join(remote.read("big.bin", offset=len(data))) == b""
    else:
        with pytest.raises(ProtocolError) as refused:
            b"".join(remote.read("big.bin", offset=10))
        assert refused.value.retryable is False
    # the connection still works after a read given up half-way
    chunks = remote.read("big.bin")
    assert len(next(iter(chunks))) > 0
    chunks.close()
    assert b"".join(remote.read("sub/small.txt")) == b"hello"


def test_reading_a_missing_file_is_one_line(remote: Remote) -> None:
    with pytest.raises(ProtocolError) as info:
        b"".join(remote.read("no-such-file.bin"))
    message = str(info.value)
    assert "no-such-file.bin" in message and "no such file" in message, message
    assert "\n" not in message


CONFORMANCE_PEERS = [
    "file_peer",
    "sftp_peer",
    "sftp_asyncssh_peer",
    "ftp_peer",
    "ftps_vsftpd_peer",
    "webdav_peer",
    "https_put_peer",
    "s3_peer",
    "azure_peer",
    "gcs_peer",
]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("bad_credentials", "authentication failed"),
        ("unknown_host", "unknown host"),
        ("refused", "connection refused"),
        ("missing_container", "does not exist"),
    ],
)
@pytest.mark.parametrize("peer_name", CONFORMANCE_PEERS)
def test_listing_errors_a_user_sees(
    request: pytest.FixtureRequest, peer_name: str, case: str, expected: str
) -> None:
    """The send side's failure hosts, listed: the same one-line messages."""
    peer: Peer = request.getfixturevalue(peer_name)
    url = {
        "bad_credentials": peer.url,
        "unknown_host": peer.unknown_host_url,
        "refused": peer.refused_url,
        "missing_container": peer.missing_container_url,
    }[case]
    if url is None or (case == "bad_credentials" and peer.bad_credentials is None):
        pytest.skip(f"{case} does not apply to this peer or cannot be arranged here")
    credentials = peer.bad_credentials if case == "bad_credentials" else peer.credentials
    options = {**peer.options, "timeout": 10, **peer.error_options.get(case, {})}
    with (
        pytest.raises(ProtocolError) as info,
        open_remote("listing", url, options, credentials) as remote,
    ):
        list(remote.list(""))
    message = str(info.value)
    assert expected in message, message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "-rw-r--r--    1 1000     1000         1234 Mar 04 05:06 a file.txt",
            ("a file.txt", 1234, datetime(2026, 3, 4, 5, 6, tzinfo=UTC), "file"),
        ),
        (
            "drwxr-xr-x    2 ftp      ftp          4096 Dec 31  2024 old",
            ("old", 4096, datetime(2024, 12, 31, tzinfo=UTC), "dir"),
        ),
        (
            "lrwxrwxrwx 1 root root 7 Nov 30 23:59 latest -> 20261130",
            ("latest", 7, datetime(2026, 11, 30, 23, 59, tzinfo=UTC), "link"),
        ),
        # in the future by more than a day: last year's
        (
            "-rw-r--r-- 1 u g 5 Dec 25 10:00 x",
            ("x", 5, datetime(2025, 12, 25, 10, 0, tzinfo=UTC), "file"),
        ),
        ("total 48", None),
    ],
)
def test_ls_lines(line: str, expected: tuple | None) -> None:
    from ecpds.core.protocols.ftp import parse_ls_line

    assert parse_ls_line(line, datetime(2026, 12, 7, 1, 0, tzinfo=UTC)) == expected


def test_index_pages_of_nginx_and_apache() -> None:
    from ecpds.core.protocols.http import parse_index

    nginx = (
        '<html><body><h1>Index of /data/</h1><hr><pre><a href="../">../</a>\n'
        '<a href="sub/">sub/</a>                 07-Dec-2026 01:02                   -\n'
        '<a href="a%20b.grib">a b.grib</a>       06-Dec-2026 23:59                1234\n'
        "</pre><hr></body></html>"
    )
    assert parse_index(nginx, "/data") == [
        ("sub", True, None, datetime(2026, 12, 7, 1, 2, tzinfo=UTC)),
        ("a b.grib", False, 1234, datetime(2026, 12, 6, 23, 59, tzinfo=UTC)),
    ]
    apache = (
        '<table><tr><th><a href="?C=N;O=D">Name</a></th></tr>'
        '<tr><td><a href="/data/">Parent Directory</a></td></tr>\n'
        '<tr><td><a href="x.nc">x.nc</a></td><td align="right">2026-12-07 00:10  </td>'
        '<td align="right"> 12K</td></tr>\n'
        '<tr><td><a href="/data/abs.txt">abs.txt</a></td><td>2026-12-07 00:11</td>'
        "<td>17</td></tr>\n</table>"
    )
    assert parse_index(apache, "/data") == [
        ("x.nc", False, None, datetime(2026, 12, 7, 0, 10, tzinfo=UTC)),  # size by HEAD
        ("abs.txt", False, 17, datetime(2026, 12, 7, 0, 11, tzinfo=UTC)),
    ]


@pytest.mark.parametrize(
    "lister_name", ["file_lister", "sftp_lister", "ftp_lister", "ftps_vsftpd_lister"]
)
def test_links_are_listed_as_what_they_point_to(
    request: pytest.FixtureRequest, lister_name: str
) -> None:
    """A `latest -> 20261207` link is how many sites name their newest folder."""
    lister: ListPeer = request.getfixturevalue(lister_name)
    lister.put({"20261207/a.grib": b"a" * 10, "file.bin": b"b" * 20})
    root = lister.disk
    assert root is not None
    (root / "latest").symlink_to("20261207")
    (root / "current.bin").symlink_to("file.bin")
    (root / "dangling").symlink_to("nothing-there")
    with lister.remote() as remote:
        listed = _listed(remote)
        assert listed["latest"].is_dir and not listed["current.bin"].is_dir
        assert listed["current.bin"].size == 20
        assert "dangling" not in listed or not listed["dangling"].is_dir
        assert set(_listed(remote, "latest")) == {"latest/a.grib"}


def test_a_server_that_ignores_ranges_cannot_resume() -> None:
    """A plain server answering every GET whole: offset 0 reads, offset > 0 is refused."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    body = os.urandom(100_000)

    class Whole(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Whole)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/files"
        with open_remote("whole", url, {}, {}) as remote:
            assert b"".join(remote.read("x.bin")) == body
            with pytest.raises(ProtocolError) as info:
                b"".join(remote.read("x.bin", offset=10))
    finally:
        server.shutdown()
        server.server_close()
    message = str(info.value)
    assert "x.bin" in message and "from byte 10" in message and "whole files" in message, message
    assert info.value.retryable is False and "\n" not in message


@pytest.mark.parametrize("lister_name", ["ftp_lister", "ftps_vsftpd_lister"])
def test_home_relative_folder_listed_recursively(
    request: pytest.FixtureRequest, lister_name: str
) -> None:
    """`ftp://user@host/~/dir`: the folder and its sub-folders are relative to the login's."""
    lister: ListPeer = request.getfixturevalue(lister_name)
    lister.put({"a/b/c.txt": b"c", "a/d.txt": b"dd", "e.txt": b"eee"})
    scheme, rest = lister.url.split("://", 1)
    where, folder = rest.split("/", 1)
    peer = ListPeer(**{**lister.__dict__, "url": f"{scheme}://{where}/~/{folder}"})
    with peer.remote() as remote:
        listed = _listed(remote, recursive=True)
        assert {p: e.size for p, e in listed.items() if not e.is_dir} == {
            "a/b/c.txt": 1,
            "a/d.txt": 2,
            "e.txt": 3,
        }
        assert set(_listed(remote, "a/b")) == {"a/b/c.txt"}
