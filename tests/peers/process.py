"""Helpers for peers that run as child processes, shared by the fixtures and the benchmarks."""

from __future__ import annotations

import subprocess


class PeerMissing(Exception):
    """The server program is not installed; the message says how to get it."""


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
