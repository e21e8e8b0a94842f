"""What a protocol contributes to the conformance suite: a `Peer` built by its fixture."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Peer:
    """A fresh, empty place on a real server, plus ways to check it from the test side.

    Failure hosts must produce ProtocolErrors whose messages contain, respectively,
    "authentication failed", "unknown host", "connection refused", "does not exist"
    (missing bucket or container) and "disk full".
    """

    url: str
    options: dict[str, Any]
    credentials: dict[str, str]
    read: Callable[[str], bytes | None]  # bytes stored under a target, None when absent
    names: Callable[[], list[str]]  # every file under `url`, relative, "/"-separated
    resumable: bool  # an interrupted upload continues (else restarts cleanly)
    bad_credentials: dict[str, str] | None = None
    unknown_host_url: str | None = None
    refused_url: str | None = None
    missing_container_url: str | None = None
    full_disk_url: str | None = None  # a place with about 1 MiB free
    error_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per failure case
