"""Connections kept open between transfers to the same host, as rclone keeps them.

A `Remote` is checked out by one thread at a time and returned only after a clean
upload; one that failed is closed. The last connection returned for a host is closed
after `idle` seconds unused; the others, left over from parallel transfers, after
`spare_idle`: each holds a login at the remote site, and for SFTP an ssh process
(8 MiB resident, measured by bench/protocols.py's `all_protocols_children_rss_after_mib`).
Parallel transfers to a host take a returned connection within milliseconds while its
queue has work, so one unused for seconds is left over from a burst that has ended.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from ecpds.core.protocols import open_remote
from ecpds.core.protocols.base import Remote


def _key(
    host_name: str, url: str, options: Mapping[str, Any] | None, credentials: Mapping[str, str]
) -> str:
    """Connections are shared only between identical host settings; secrets stay hashed."""
    blob = json.dumps(
        [host_name, url, dict(options or {}), dict(credentials)], sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class RemotePool:
    def __init__(self, *, idle: float = 30.0, spare_idle: float = 2.0, per_host: int = 16) -> None:
        self.idle = idle
        self.spare_idle = min(spare_idle, idle)
        self.per_host = per_host
        self._lock = threading.Lock()
        self._free: dict[str, list[tuple[Remote, float]]] = {}
        self._janitor: threading.Thread | None = None

    @contextlib.contextmanager
    def remote(
        self,
        host_name: str,
        url: str,
        options: Mapping[str, Any] | None,
        credentials: Mapping[str, str],
    ) -> Iterator[Remote]:
        """A connected Remote for the host: a pooled one if it is still alive."""
        key = _key(host_name, url, options, credentials)
        remote = self._take(key)
        if remote is None:
            remote = open_remote(host_name, url, options, credentials)
        try:
            yield remote
        except BaseException:
            remote.close()
            raise
        self._give(key, remote)

    def _take(self, key: str) -> Remote | None:
        self._expire()
        while True:
            with self._lock:
                free = self._free.get(key)
                if not free:
                    return None
                remote, _ = free.pop()
            if remote.alive():
                return remote
            remote.close()

    def _give(self, key: str, remote: Remote) -> None:
        with self._lock:
            free = self._free.setdefault(key, [])
            kept = len(free) < self.per_host
            if kept:
                free.append((remote, time.monotonic()))
            if self._janitor is None:
                self._janitor = threading.Thread(
                    target=self._sweep, name="remote-pool-janitor", daemon=True
                )
                self._janitor.start()
        if not kept:
            remote.close()

    def _sweep(self) -> None:
        """Close idle connections in the background, so none lingers at a remote site."""
        while True:
            time.sleep(self.spare_idle / 2)
            self._expire()
            with self._lock:
                if not self._free:
                    self._janitor = None
                    return

    def _expire(self) -> None:
        now = time.monotonic()
        stale: list[Remote] = []
        with self._lock:
            for key, free in list(self._free.items()):
                # `free` is in the order of return; the last is the one taken next
                keep = []
                for n, (remote, t) in enumerate(free, 1):
                    if now - t < (self.idle if n == len(free) else self.spare_idle):
                        keep.append((remote, t))
                    else:
                        stale.append(remote)
                if keep:
                    self._free[key] = keep
                else:
                    del self._free[key]
        for remote in stale:
            remote.close()

    def close(self) -> None:
        with self._lock:
            remotes = [r for free in self._free.values() for r, _ in free]
            self._free.clear()
        for remote in remotes:
            remote.close()


REMOTES = RemotePool()
