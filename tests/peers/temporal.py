"""Temporal's dev server run by a test, with its log in the test's folder."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

from ecpds.core.devserver import wait_for_temporal


@contextlib.contextmanager
def running_dev_server(folder: Path, command: list[str], port: int) -> Iterator[str]:
    """Temporal's dev server run with `command` (logging into folder/server.log) until the
    block ends; its host:port."""
    log = (folder / "server.log").open("wb")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_temporal(port, timeout=90, proc=proc)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
