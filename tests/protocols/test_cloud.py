"""S3, Azure Blob and GCS specifics beyond the conformance suite: host checks, S3 resume."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace

import pytest
from peers.s3 import S3Server

from ecpds.core.protocols import ProtocolError, check_host
from ecpds.core.store import Store
from ecpds.core.transmit import SendRequest, discard_partial, partial_offset, send

MiB = 1 << 20
S3_KEYS = {"access_key_id": "AKIA", "secret_access_key": "s"}


@pytest.mark.parametrize(
    ("url", "options", "credentials"),
    [
        ("s3://bucket/prefix", {"region": "eu-west-1"}, S3_KEYS),
        ("s3://bucket", {"endpoint": "http://127.0.0.1:9000", "path_style": True}, S3_KEYS),
        ("s3://b/p", {"part_size": 64 * MiB, "concurrency": 8}, S3_KEYS),
        ("azure://container/dir", {"account": "acct"}, {"account_key": "a2V5"}),
        (
            "azure://container",
            {"endpoint": "https://acct.blob.core.windows.net"},
            {"sas_token": "sv=1"},
        ),  # noqa: E501
        ("azure://container/x", {}, {"connection_string": "AccountName=a;AccountKey=k"}),
        ("gcs://bucket/dir", {}, {"token": '{"type": "service_account"}'}),
        ("gcs://bucket", {"endpoint": "http://127.0.0.1:9023", "anonymous": True}, {}),
    ],
)
def test_valid_cloud_hosts_pass(url: str, options: dict, credentials: dict) -> None:
    check_host(url, options, credentials)


@pytest.mark.parametrize(
    ("url", "options", "credentials", "expected"),
    [
        ("s3://bucket/p", {}, {"access_key_id": "AKIA"}, "secret_access_key"),
        ("s3://bucket:9000/p", {}, S3_KEYS, "option 'endpoint'"),
        ("s3://bucket/p", {"endpoint": "minio:9000"}, S3_KEYS, "http(s)://"),
        ("s3://bucket/p", {"part_size": 1024}, S3_KEYS, "option 'part_size'"),
        ("s3://bucket/p", {"multipart": True}, S3_KEYS, "unknown option 'multipart'"),
        ("azure://c/p", {"account": "a"}, {}, "exactly one of"),
        ("azure://c/p", {}, {"account_key": "k"}, "option 'account'"),
        ("azure://c/p", {}, {"password": "x"}, "unknown credential 'password'"),
        ("gcs://bucket/p", {}, {}, "token credential"),
        ("gcs://bucket/p", {"block_size": 1000000}, {"token": "t"}, "option 'block_size'"),
        ("gcs:///p", {"anonymous": True}, {}, "names no bucket"),
    ],
)
def test_bad_cloud_hosts_give_one_line(
    url: str, options: dict, credentials: dict, expected: str
) -> None:
    with pytest.raises(ProtocolError) as info:
        check_host(url, options, credentials)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)
    assert info.value.retryable is False


class Interrupted(Exception):
    pass


def test_s3_multipart_upload_resumes_from_its_parts(s3_server: S3Server, tmp_path) -> None:
    store = Store([str(tmp_path / "store")])
    data = os.urandom(12 * MiB + 7)
    stored = store.write("obj", [data])
    bucket = s3_server.bucket()
    request = SendRequest(
        data_file_id="obj",
        size=len(data),
        adler32=stored.adler32,
        host_name="cloud",
        host_url=f"s3://{bucket}/in",
        host_options={
            **s3_server.options(),
            "chunk_size": MiB,
            "part_size": 5 * MiB,
            "multipart_threshold": 5 * MiB,
        },
        target="big/file.bin",
    )

    def break_off(count: int) -> None:
        if count >= 11 * MiB:
            raise Interrupted("link broke")

    with pytest.raises(Interrupted):
        send(store, request, s3_server.credentials, progress=break_off)
    client = s3_server.client()
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    offset = partial_offset(request, s3_server.credentials)
    assert offset == 10 * MiB  # the two complete parts
    resumed = replace(request, resume_offset=offset)
    result = send(store, resumed, s3_server.credentials, progress=lambda n: None)
    assert result.bytes_sent == len(data) - offset
    assert result.md5 == hashlib.md5(data).hexdigest()
    body = client.get_object(Bucket=bucket, Key="in/big/file.bin")["Body"].read()
    assert body == data
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_s3_discarded_partial_upload_is_aborted(s3_server: S3Server, tmp_path) -> None:
    """A transfer restarted on another host aborts its multipart upload here."""
    store = Store([str(tmp_path / "store")])
    data = os.urandom(12 * MiB + 7)
    stored = store.write("obj", [data])
    bucket = s3_server.bucket()
    options = {**s3_server.options(), "chunk_size": MiB, "part_size": 5 * MiB}
    request = SendRequest(
        data_file_id="obj",
        size=len(data),
        adler32=stored.adler32,
        host_name="cloud",
        host_url=f"s3://{bucket}/in",
        host_options={**options, "multipart_threshold": 5 * MiB},
        target="file.bin",
    )

    def break_off(count: int) -> None:
        if count >= 11 * MiB:
            raise Interrupted("link broke")

    with pytest.raises(Interrupted):
        send(store, request, s3_server.credentials, progress=break_off)
    client = s3_server.client()
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) != []
    discard_partial(request, s3_server.credentials)
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert partial_offset(request, s3_server.credentials) == 0


def test_s3_errors_name_no_secret(s3_server: S3Server, tmp_path) -> None:
    store = Store([str(tmp_path / "store")])
    stored = store.write("obj", [b"payload"])
    secret = "wrong-secret-value-123"
    request = SendRequest(
        data_file_id="obj",
        size=7,
        adler32=stored.adler32,
        host_name="cloud",
        host_url=f"s3://{s3_server.bucket()}/in",
        host_options=s3_server.options(),
        target="x.bin",
    )
    creds = {**s3_server.credentials, "secret_access_key": secret}
    with pytest.raises(ProtocolError) as info:
        send(store, request, creds, progress=lambda n: None)
    assert "authentication failed" in str(info.value)
    assert secret not in str(info.value) and s3_server.access_key_id not in str(info.value)


def test_s3_plain_put_words_refusals_as_botocore(s3_server: S3Server) -> None:
    """A small file to a path-style endpoint skips botocore's pipeline (`PlainPut`); a
    refused put (wrong secret, missing bucket) still reads as botocore's answer reads."""
    from ecpds.core.protocols import open_remote

    bucket = s3_server.bucket()
    wrong = {**s3_server.credentials, "secret_access_key": "not-the-secret"}
    cases = [(f"s3://{bucket}/in", wrong), ("s3://ecpds-missing-bucket/in", s3_server.credentials)]
    for url, credentials in cases:
        messages = []
        for path_style in (True, False):  # False: botocore's put (moto's IP endpoint: path)
            options = {**s3_server.options(), "path_style": path_style}
            with open_remote("cloud", url, options, credentials) as remote:
                with pytest.raises(ProtocolError) as info:
                    remote.upload("x.bin", [b"payload"])
                assert (remote.plain is not None) is path_style
            messages.append(str(info.value))
        assert messages[0] == messages[1]
        assert "\n" not in messages[0] and "not-the-secret" not in messages[0]


def test_s3_plain_put_keeps_key_and_storage_class(s3_server: S3Server) -> None:
    """The hand-built URL quotes the key as botocore does; the storage class goes along."""
    from ecpds.core.protocols import open_remote

    bucket = s3_server.bucket()
    options = {**s3_server.options(), "storage_class": "REDUCED_REDUNDANCY"}
    body = os.urandom(64 * 1024)
    target = "a b/c+d~é%20.bin"
    with open_remote("cloud", f"s3://{bucket}/in", options, s3_server.credentials) as remote:
        assert remote.upload(target, [body]) == len(body)
        assert remote.plain is not None and remote.proven_size == len(body)
    stored = s3_server.client().get_object(Bucket=bucket, Key=f"in/{target}")
    assert stored["Body"].read() == body
    assert stored["StorageClass"] == "REDUCED_REDUNDANCY"


def test_s3_plain_put_checks_tls_as_botocore(s3_tls_server: S3Server, monkeypatch) -> None:
    """Over https the plain put trusts what botocore trusts: anything without
    `verify_tls`, a self-signed certificate only once AWS_CA_BUNDLE names it. Refused,
    it leaves the put to botocore, so the message is botocore's own."""
    from ecpds.core.protocols import open_remote

    server = s3_tls_server
    bucket = server.bucket()
    body = os.urandom(64 * 1024)
    options = {**server.options(), "verify_tls": False}
    with open_remote("cloud", f"s3://{bucket}/in", options, server.credentials) as remote:
        assert remote.upload("unchecked.bin", [body]) == len(body)
        assert remote.plain is not None and remote.proven_size == len(body)
    messages = []
    for path_style in (True, False):  # False: botocore's put (moto's IP endpoint: path)
        options = {**server.options(), "path_style": path_style}
        remote = open_remote("cloud", f"s3://{bucket}/in", options, server.credentials)
        with remote, pytest.raises(ProtocolError) as info:
            remote.upload("checked.bin", [body])
        messages.append(str(info.value))
    assert messages[0] == messages[1] and "\n" not in messages[0]
    monkeypatch.setenv("AWS_CA_BUNDLE", str(server.ca_file))
    options = {**server.options(), "timeout": 30.0}  # a client of its own, not a cached one
    with open_remote("cloud", f"s3://{bucket}/in", options, server.credentials) as remote:
        assert remote.upload("trusted.bin", [body]) == len(body)
        assert remote.plain is not None and remote.proven_size == len(body)
    stored = server.client().get_object(Bucket=bucket, Key="in/trusted.bin")
    assert stored["Body"].read() == body


def test_s3_plain_put_leaves_a_busy_store_to_botocore(s3_server: S3Server) -> None:
    """A 503 to the plain put is not an error yet: botocore sends the file again (and
    retries, as it did before). A front on moto answers the first PUT so."""
    import http.client
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import urlsplit

    from ecpds.core.protocols import open_remote

    moto = urlsplit(s3_server.endpoint)
    puts: list[str] = []

    class Front(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # for botocore's Expect: 100-continue

        def do_PUT(self) -> None:
            self.close_connection = True
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            puts.append(self.headers.get("User-Agent", ""))
            if len(puts) == 1:
                answer = b"<Error><Code>ServiceUnavailable</Code><Message>busy</Message></Error>"
                self.send_response(503)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
                return
            upstream = http.client.HTTPConnection(moto.hostname, moto.port, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "expect"}
            upstream.request("PUT", self.path, body=body, headers=headers)
            reply = upstream.getresponse()
            data = reply.read()
            self.send_response(reply.status)
            for name, value in reply.getheaders():
                if name.lower() not in ("content-length", "connection", "date", "server"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            upstream.close()

        def log_message(self, *args: object) -> None:
            pass

    front = ThreadingHTTPServer(("127.0.0.1", 0), Front)
    threading.Thread(target=front.serve_forever, daemon=True).start()
    try:
        bucket = s3_server.bucket()
        options = {**s3_server.options(), "endpoint": f"http://127.0.0.1:{front.server_port}"}
        body = os.urandom(64 * 1024)
        with open_remote("cloud", f"s3://{bucket}/in", options, s3_server.credentials) as remote:
            assert remote.upload("busy.bin", [body]) == len(body)
    finally:
        front.shutdown()
        front.server_close()
    assert len(puts) == 2 and "Botocore" not in puts[0] and "Botocore" in puts[1]
    stored = s3_server.client().get_object(Bucket=bucket, Key="in/busy.bin")
    assert stored["Body"].read() == body


def test_gcs_token_forms(tmp_path) -> None:
    """A service-account JSON or an access token is accepted; a broken one is one line."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from ecpds.core.protocols import open_remote

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    account = {
        "type": "service_account",
        "private_key": key.decode(),
        "client_email": "ecpds@example.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    for token in (json.dumps(account), "ya29.access-token"):
        open_remote("g", "gcs://bucket/p", {}, {"token": token}).close()
    for broken in ('{"type": "service_account"}', "{not json"):
        with pytest.raises(ProtocolError) as info:
            open_remote("g", "gcs://bucket/p", {}, {"token": broken})
        assert "token credential" in str(info.value) and "\n" not in str(info.value)
        assert info.value.retryable is False


def test_s3_crc32_is_the_one_botocore_would_send() -> None:
    """S3 checks the x-amz-checksum-crc32 we compute (moto does not: compare with botocore)."""
    from botocore.httpchecksum import Crc32Checksum

    from ecpds.core.protocols.s3 import crc32

    for data in (b"", b"forecast", os.urandom(3 * MiB + 1)):
        reference = Crc32Checksum()
        reference.update(data)
        assert crc32(data) == reference.b64digest()


def test_s3_put_answer_proves_only_the_same_bytes() -> None:
    """The size request after a put is skipped only when the answer names the body's own
    CRC32 (AWS) or MD5 ETag (without SSE-KMS); any other answer leaves it to be asked."""
    from ecpds.core.protocols.s3 import _proves, crc32

    body = os.urandom(1000)
    md5 = hashlib.md5(body).hexdigest()
    assert _proves({"ChecksumCRC32": crc32(body), "ETag": '"kms-etag"'}, body, crc32(body))
    assert not _proves({"ChecksumCRC32": crc32(b"other"), "ETag": f'"{md5}"'}, body, crc32(body))
    assert _proves({"ETag": f'"{md5}"'}, body, crc32(body))
    assert not _proves({"ETag": f'"{hashlib.md5(b"other").hexdigest()}"'}, body, crc32(body))
    assert not _proves({"ETag": '"0123456789abcdef0123456789abcdef-1"'}, body, crc32(body))
    assert not _proves({}, body, crc32(body))


@pytest.mark.parametrize("peer", ["s3_server", "azure_server"])
def test_small_cloud_put_is_proven_by_its_answer(peer: str, request: pytest.FixtureRequest) -> None:
    """A single put's answer proves what the store holds; a block upload is asked after."""
    from ecpds.core.protocols import open_remote

    server = request.getfixturevalue(peer)
    scheme, folder = (
        ("s3", server.bucket()) if peer == "s3_server" else ("azure", server.container())
    )
    small_limit = "multipart_threshold" if scheme == "s3" else "single_put_limit"
    options = {**server.options(), small_limit: 5 * MiB}
    if scheme == "s3":
        options["part_size"] = 5 * MiB
    else:
        options["block_size"] = MiB
    with open_remote("cloud", f"{scheme}://{folder}/in", options, server.credentials) as remote:
        small = os.urandom(64 * 1024)
        assert remote.upload("small.bin", [small]) == len(small)
        assert remote.proven_size == len(small) == remote.remote_size("small.bin")
        big = os.urandom(5 * MiB + 1)
        assert remote.upload("big.bin", [big]) == len(big)
        assert remote.proven_size is None
        assert remote.remote_size("big.bin") == len(big)
