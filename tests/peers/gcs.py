"""A Google Cloud Storage emulator (gcp-storage-emulator) on a free local port.

The emulator checks no credentials, so clients talk to it anonymously.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ecpds.core.devserver import free_port, wait_for_port
from peers.conformance import Peer
from peers.process import PeerMissing, stop


@dataclass
class GcsServer:
    endpoint: str  # http://127.0.0.1:PORT

    def options(self) -> dict[str, object]:
        return {"endpoint": self.endpoint, "anonymous": True}

    def bucket(self) -> str:
        """A fresh, empty bucket, made through the JSON API."""
        name = f"ecpds-{uuid.uuid4().hex[:12]}"
        httpx.post(
            f"{self.endpoint}/storage/v1/b", params={"project": "test"}, json={"name": name}
        ).raise_for_status()
        return name

    def read(self, bucket: str, name: str) -> bytes | None:
        response = httpx.get(
            f"{self.endpoint}/storage/v1/b/{bucket}/o/{name.replace('/', '%2F')}",
            params={"alt": "media"},
        )
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.content

    def names(self, bucket: str, prefix: str) -> list[str]:
        response = httpx.get(f"{self.endpoint}/storage/v1/b/{bucket}/o", params={"prefix": prefix})
        response.raise_for_status()
        return sorted(item["name"] for item in response.json().get("items", []))


def emulator_command(port: int) -> list[str] | None:
    exe = Path(sys.executable).with_name("gcp-storage-emulator")
    found = str(exe) if exe.exists() else shutil.which("gcp-storage-emulator")
    if found is None:
        return None
    return [found, "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"]


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[GcsServer]:
    """gcp-storage-emulator on 127.0.0.1:<free port>, in memory."""
    port = free_port()
    command = emulator_command(port)
    if command is None:
        raise PeerMissing("gcp-storage-emulator not installed (pip install gcp-storage-emulator)")
    log = (folder / "gcs.log").open("wb")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port("127.0.0.1", port, timeout=60, proc=proc)
        yield GcsServer(f"http://127.0.0.1:{port}")
    finally:
        stop(proc)
        log.close()


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsServer]:
    try:
        with serve(tmp_path_factory.mktemp("gcs")) as server:
            yield server
    except PeerMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture
def gcs_peer(gcs_server: GcsServer) -> Peer:
    """A fresh bucket for the conformance suite; files go under `drop/`."""
    bucket, prefix = gcs_server.bucket(), "drop/"
    url = f"gcs://{bucket}/drop"
    return Peer(
        url=url,
        options=gcs_server.options(),
        credentials={},
        read=lambda target: gcs_server.read(bucket, prefix + target),
        names=lambda: [n[len(prefix) :] for n in gcs_server.names(bucket, prefix)],
        resumable=False,
        bad_credentials=None,  # the emulator accepts any caller
        unknown_host_url=url,
        refused_url=url,
        missing_container_url=f"gcs://ecpds-missing-{uuid.uuid4().hex[:8]}/drop",
        error_options={
            "unknown_host": {"endpoint": "http://no-such-host.invalid:9023"},
            "refused": {"endpoint": f"http://127.0.0.1:{free_port()}"},
        },
    )
