"""A Google Cloud Storage emulator (gcp-storage-emulator) on a free local port.

The emulator checks no credentials, so clients talk to it anonymously.
"""

from __future__ import annotations

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

    def read(self, bucket: str, name: str) -> bytes:
        response = httpx.get(
            f"{self.endpoint}/storage/v1/b/{bucket}/o/{name.replace('/', '%2F')}",
            params={"alt": "media"},
        )
        response.raise_for_status()
        return response.content


def emulator_command(port: int) -> list[str] | None:
    exe = Path(sys.executable).with_name("gcp-storage-emulator")
    found = str(exe) if exe.exists() else shutil.which("gcp-storage-emulator")
    if found is None:
        return None
    return [found, "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"]


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsServer]:
    """gcp-storage-emulator on 127.0.0.1:<free port>, in memory."""
    port = free_port()
    command = emulator_command(port)
    if command is None:
        pytest.skip("gcp-storage-emulator not installed (pip install gcp-storage-emulator)")
    log = (tmp_path_factory.mktemp("gcs") / "gcs.log").open("wb")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port("127.0.0.1", port, timeout=60, proc=proc)
        yield GcsServer(f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
