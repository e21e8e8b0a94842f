"""check_host: bad host settings are refused in one line before any connection."""

from __future__ import annotations

import pytest

from ecpds.core.protocols import ProtocolError, check_host


@pytest.mark.parametrize(
    ("url", "options", "credentials"),
    [
        ("file:///srv/out", {}, {}),
        ("sftp://bob@example.org:2222/data", {"mode": "644"}, {"password": "pw"}),
        ("sftp://bob@example.org/data", {"host_key": "SHA256:abc"}, {"private_key": "KEY"}),
        ("ftp://bob@example.org/in", {"passive": False}, {"password": "pw"}),
        ("ftp://example.org/pub", {}, {}),
        ("ftps://bob@example.org/in", {"verify_tls": False}, {"password": "pw"}),
        ("https://bob@example.org/up", {"method": "webdav"}, {"password": "pw"}),
        ("https://example.org/up", {"method": "post"}, {"token": "t"}),
        ("sftp://bob@h/d", {"max_rate": 1000, "checksums": ["sha256"]}, {"password": "pw"}),
    ],
)
def test_valid_hosts_pass(url: str, options: dict, credentials: dict) -> None:
    check_host(url, options, credentials)


@pytest.mark.parametrize(
    ("url", "options", "credentials", "expected"),
    [
        ("gopher://h/x", {}, {}, "unknown protocol 'gopher'"),
        ("example.org/x", {}, {}, "has no scheme"),
        ("sftp://bob:secret@h/d", {}, {}, "holds a password"),
        ("sftp://bob@h/d", {"colour": "red"}, {"password": "pw"}, "unknown option 'colour'"),
        ("sftp://bob@h/d", {"mode": "rw"}, {"password": "pw"}, "option 'mode'"),
        ("ftp://bob@h/d", {"passive": "perhaps"}, {"password": "pw"}, "option 'passive'"),
        ("sftp://bob@h/d", {}, {}, "needs a password or a private_key"),
        ("sftp://h/d", {}, {"password": "pw"}, "needs a user name"),
        ("ftp://bob@h/d", {}, {}, "needs a password"),
        ("https://bob@h/d", {}, {}, "needs a password"),
        ("https://h/d", {}, {"secret": "x"}, "unknown credential 'secret'"),
        ("https://h/d", {"method": "get"}, {}, "option 'method'"),
        ("file://server/d", {}, {}, "file:///absolute/path"),
    ],
)
def test_bad_hosts_give_one_line(url: str, options: dict, credentials: dict, expected: str) -> None:
    with pytest.raises(ProtocolError) as info:
        check_host(url, options, credentials)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert info.value.retryable is False


def test_unknown_compression_is_refused() -> None:
    with pytest.raises(ProtocolError, match="unknown compression 'rar'"):
        check_host("file:///srv/out", {"compression": "rar"}, {})
    check_host("file:///srv/out", {"compression": "zstd", "compression_min_size": 1024}, {})
