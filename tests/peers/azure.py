"""A real Azure Blob server (Azurite) on a free local port, checking shared-key signatures.

tests/peers/install.sh installs Azurite with npm into /opt/ecpds-peers.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ecpds.core.devserver import free_port, wait_for_port
from peers.conformance import Peer
from peers.process import PeerMissing, stop

ACCOUNT = "devstoreaccount1"
# Azurite's published development key: https://learn.microsoft.com/azure/storage/common/storage-use-azurite
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
PEERS_PREFIX = Path("/opt/ecpds-peers")
BLOCK = 256 * 1024  # small blocks, so the conformance suite's broken upload has some staged


@dataclass
class AzureServer:
    endpoint: str  # http://127.0.0.1:PORT/devstoreaccount1
    account: str
    account_key: str

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account};"
            f"AccountKey={self.account_key};BlobEndpoint={self.endpoint};"
        )

    @property
    def credentials(self) -> dict[str, str]:
        return {"account_key": self.account_key}

    def options(self) -> dict[str, object]:
        return {"account": self.account, "endpoint": self.endpoint}

    def service(self):  # azure.storage.blob.BlobServiceClient, for checks from the test side
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string)

    def container(self) -> str:
        """A fresh, empty container."""
        name = f"ecpds-{uuid.uuid4().hex[:12]}"
        with self.service() as service:
            service.create_container(name)
        return name


def azurite_blob() -> str | None:
    local = PEERS_PREFIX / "node_modules" / ".bin" / "azurite-blob"
    if local.exists():
        return str(local)
    return shutil.which("azurite-blob")


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[AzureServer]:
    """azurite-blob on 127.0.0.1:<free port>, its data under `folder`."""
    exe = azurite_blob()
    if exe is None:
        raise PeerMissing("Azurite not installed (run tests/peers/install.sh; it needs npm)")
    port = free_port()
    log = (folder / "azurite.log").open("wb")
    args = ["--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(folder / "data")]
    args += ["--skipApiVersionCheck", "--disableTelemetry", "--silent"]
    proc = subprocess.Popen([exe, *args], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port("127.0.0.1", port, timeout=60, proc=proc)
        yield AzureServer(f"http://127.0.0.1:{port}/{ACCOUNT}", ACCOUNT, ACCOUNT_KEY)
    finally:
        stop(proc)
        log.close()


@pytest.fixture(scope="session")
def azure_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzureServer]:
    try:
        with serve(tmp_path_factory.mktemp("azurite")) as server:
            yield server
    except PeerMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture
def azure_peer(azure_server: AzureServer) -> Peer:
    """A fresh container for the conformance suite; small blocks so a broken upload resumes."""
    from azure.core.exceptions import ResourceNotFoundError

    container, prefix = azure_server.container(), "drop/"
    service = azure_server.service()

    def read(target: str) -> bytes | None:
        try:
            return service.get_blob_client(container, prefix + target).download_blob().readall()
        except ResourceNotFoundError:
            return None

    def names() -> list[str]:
        blobs = service.get_container_client(container).list_blobs(name_starts_with=prefix)
        return sorted(b.name[len(prefix) :] for b in blobs)

    url = f"azure://{container}/drop"
    return Peer(
        url=url,
        options={
            **azure_server.options(),
            "block_size": 256 * 1024,
            "single_put_limit": 256 * 1024,
        },
        credentials=azure_server.credentials,
        read=read,
        names=names,
        resumable=True,
        bad_credentials={"account_key": ACCOUNT_KEY.replace("Eby8", "Xby8")},
        unknown_host_url=url,
        refused_url=url,
        missing_container_url=f"azure://ecpds-missing-{uuid.uuid4().hex[:8]}/drop",
        error_options={
            "unknown_host": {"endpoint": f"http://no-such-host.invalid:10000/{ACCOUNT}"},
            "refused": {"endpoint": f"http://127.0.0.1:{free_port()}/{ACCOUNT}"},
        },
    )
