"""Portal fixtures: two users on two bucket destinations, and front-ends served from a thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from peers.loop import LoopThread
from sqlalchemy import Engine

from ecpds.core import catalog
from ecpds.core.access import create_access_key
from ecpds.core.db import session_scope
from ecpds.core.devserver import free_port, wait_for_port
from ecpds.core.models import DataUserCreate, DestinationCreate
from ecpds.core.secrets import CredentialBox, hash_password, load_or_create_key
from ecpds.core.settings import Settings
from ecpds.core.store import Store
from ecpds.portal.ftp import build_server, run_in_thread
from ecpds.portal.server import serve
from ecpds.portal.sftp import load_host_key, start_sftp
from ecpds.portal.vfs import PortalFS

ALICE_PASSWORD = "alice-password-1"
BOB_PASSWORD = "bob-password-22"


@contextlib.contextmanager
def served_portal(
    home: Path, temporal_address: str, **overrides: Any
) -> Iterator[tuple[Settings, tuple[str, str]]]:
    """The whole portal (every door) on free ports, serving until the block ends.

    Yields its settings (with `overrides`) and the first admin's API login, as `ecpds up`
    writes it.
    """
    settings = Settings(
        home=home,
        https_port=free_port(),
        s3_port=free_port(),
        ftp_port=free_port(),
        sftp_port=free_port(),
        mqtt_port=free_port(),
        mqtts_port=free_port(),
        mqtt_ws_port=free_port(),
        temporal_address=temporal_address,
        **overrides,
    )
    loop = LoopThread()
    stop = asyncio.Event()
    done = loop.submit(serve(settings, stop))
    try:
        ports = (settings.https_port, settings.s3_port, settings.ftp_port, settings.sftp_port)
        for port in (*ports, settings.mqtt_port, settings.mqtts_port, settings.mqtt_ws_port):
            wait_for_port("127.0.0.1", port, timeout=60)
        saved = tomllib.loads(settings.admin_file.read_text())
        yield settings, (saved["api_user"], saved["api_password"])
    finally:
        loop.loop.call_soon_threadsafe(stop.set)
        done.result(30)
        loop.close()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


def make_certificate(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def alice_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, asyncssh.SSHKey]:
    key = asyncssh.generate_private_key("ssh-ed25519")
    path = tmp_path_factory.mktemp("keys") / "alice"
    key.write_private_key(str(path))
    path.chmod(0o600)
    key.write_public_key(str(path) + ".pub")
    return path, key


@pytest.fixture(scope="session")
def password_hashes() -> dict[str, str]:
    """argon2 is slow on purpose: hash the test passwords once per session."""
    return {"alice": hash_password(ALICE_PASSWORD), "bob": hash_password(BOB_PASSWORD)}


@dataclass
class Portal:
    engine: Engine
    store: Store
    box: CredentialBox
    fs: PortalFS
    home: Path
    alice_key_id: str
    alice_secret: str
    bob_key_id: str
    bob_secret: str


@pytest.fixture
def portal(
    engine: Engine,
    store: Store,
    tmp_path: Path,
    alice_key: tuple[Path, asyncssh.SSHKey],
    password_hashes: dict[str, str],
) -> Portal:
    """alice may use `alpha`, bob `beta`; both are buckets (no dissemination hosts)."""
    box = CredentialBox(load_or_create_key(tmp_path / "secret.key"))
    public = alice_key[1].export_public_key("openssh").decode()
    with session_scope(engine) as session:
        for name in ("alpha", "beta"):
            catalog.create_destination(session, data=DestinationCreate(name=name))
        alice = catalog.create_user(
            session, data=DataUserCreate(name="alice", destinations=["alpha"], ssh_keys=[public])
        )
        bob = catalog.create_user(session, data=DataUserCreate(name="bob", destinations=["beta"]))
        alice.password_hash, bob.password_hash = password_hashes["alice"], password_hashes["bob"]
        alice_key_id, alice_secret = create_access_key(session, box, alice)
        bob_key_id, bob_secret = create_access_key(session, box, bob)
    return Portal(
        engine=engine,
        store=store,
        box=box,
        fs=PortalFS(engine, store),
        home=tmp_path / "var",
        alice_key_id=alice_key_id,
        alice_secret=alice_secret,
        bob_key_id=bob_key_id,
        bob_secret=bob_secret,
    )


@pytest.fixture
def sftp_port(portal: Portal, loop_thread: LoopThread) -> Iterator[int]:
    """The portal's SFTP server on a free port."""
    port = free_port()
    key = load_host_key(portal.home / "ssh_host_key")
    spool = portal.home / "sftp-spool"
    acceptor = loop_thread.run(start_sftp(portal.fs, "127.0.0.1", port, key, spool))
    yield port

    async def stop() -> None:
        acceptor.close()
        await acceptor.wait_closed()

    loop_thread.run(stop())


@pytest.fixture
def ftp_port(
    portal: Portal, loop_thread: LoopThread, certificate: tuple[Path, Path]
) -> Iterator[int]:
    """The portal's FTP server (AUTH TLS offered) on a free port."""
    port = free_port()
    server = build_server(portal.fs, loop_thread.loop, "127.0.0.1", port, certificate=certificate)
    stop = threading.Event()
    thread = run_in_thread(server, stop)
    wait_for_port("127.0.0.1", port, timeout=20)
    yield port
    stop.set()
    thread.join(15)
