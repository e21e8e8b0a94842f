"""Discovery activities: open a run record, list and register a host's new files, count
what the fetch made of them, and close the run (deleting verified originals).

The host's credentials are read here from the catalog and never leave the worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Engine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from ecpds.activities.heartbeat import heartbeating
from ecpds.core import acquisition
from ecpds.core.engine import DiscoveryInput
from ecpds.core.errors import EcpdsError
from ecpds.core.protocols import ProtocolError
from ecpds.core.secrets import CredentialBox

T = TypeVar("T")


@dataclass
class StartRunInput:
    discovery: DiscoveryInput
    workflow_id: str = ""


@dataclass
class DiscoverInput:
    run_id: int
    discovery: DiscoveryInput


@dataclass
class DiscoverOutput:
    found: int = 0
    new: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    data_file_ids: list[str] = field(default_factory=list)


@dataclass
class TallyOutput:
    fetched: int = 0
    failed: int = 0
    pending: int = 0


@dataclass
class FinishRunInput:
    run_id: int
    discovered: DiscoverOutput | None = None
    error: str | None = None


@dataclass
class FinishRunOutput:
    status: str
    found: int = 0
    new: int = 0
    fetched: int = 0
    failed: int = 0
    error: str | None = None


class DiscoveryActivities:
    """Built once per worker with the catalog and the credential key."""

    def __init__(self, engine: Engine, box: CredentialBox) -> None:
        self.engine = engine
        self.box = box
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="discovery")

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking `fn` in a thread, heartbeating while it runs."""
        return await heartbeating(self.pool, fn, *args, **kwargs)

    @activity.defn
    async def start_run(self, request: StartRunInput) -> int:
        """A new run record; its id."""
        return await asyncio.to_thread(
            acquisition.start_run,
            self.engine,
            host=request.discovery.host,
            destination=request.discovery.destination,
            workflow_id=request.workflow_id,
        )

    @activity.defn
    async def discover(self, request: DiscoverInput) -> DiscoverOutput:
        """List the host, apply its rules and register the new files."""
        try:
            found = await self._run(
                acquisition.discover,
                self.engine,
                self.box,
                run_id=request.run_id,
                host=request.discovery.host,
                destination=request.discovery.destination,
            )
        except ProtocolError as exc:
            raise ApplicationError(str(exc), non_retryable=not exc.retryable) from None
        except EcpdsError as exc:
            raise ApplicationError(str(exc), non_retryable=True) from None
        return DiscoverOutput(found.found, found.new, found.skipped, found.data_file_ids)

    @activity.defn
    async def count_fetches(self, run_id: int) -> TallyOutput:
        """How many of the run's files are in the store, failed, or still fetching."""
        counts = await asyncio.to_thread(acquisition.tally, self.engine, run_id=run_id)
        return TallyOutput(counts.fetched, counts.failed, counts.pending)

    @activity.defn
    async def finish_run(self, request: FinishRunInput) -> FinishRunOutput:
        """Record the run's outcome; delete verified originals; forget failed files."""
        discovered = request.discovered
        run = await self._run(
            acquisition.finish_run,
            self.engine,
            self.box,
            run_id=request.run_id,
            discovered=None
            if discovered is None
            else acquisition.Discovered(discovered.found, discovered.new, discovered.skipped),
            error=request.error,
        )
        return FinishRunOutput(run.status, run.found, run.new, run.fetched, run.failed, run.error)
