"""`ecpds up --workers MIN..MAX`: as many worker processes as the task queues' backlog
asks for, one more per worker_scale_backlog waiting tasks, between MIN and MAX."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

from temporalio.client import Client
from temporalio.service import RPCError

from ecpds.cli.client import CliError
from ecpds.cli.resources import console
from ecpds.cli.supervisor import Child, Supervisor, child_command
from ecpds.core.backlog import role_backlogs
from ecpds.core.settings import Settings
from ecpds.core.temporal_setup import connect

CHECK_EVERY = 3.0  # seconds between two readings of the backlog
READ_TIMEOUT = 10.0  # the supervisor waits no longer for one reading
# The workers started for a backlog serve no metrics: the ports are the first worker's.
EXTRA_WORKER_ENV = {"ECPDS_WORKER_METRICS_PORT": "0", "ECPDS_WORKER_SDK_METRICS_PORT": "0"}


@dataclass(frozen=True)
class WorkerRange:
    low: int
    high: int

    @classmethod
    def parse(cls, text: str) -> WorkerRange:
        """`N` or `MIN..MAX`, 1 <= MIN <= MAX."""
        low, dots, high = text.strip().partition("..")
        if not dots:
            high = low
        if not (low.isdigit() and high.isdigit() and 1 <= int(low) <= int(high)):
            raise CliError(
                f"--workers {text!r} is not a count or MIN..MAX range (such as 1..4) of"
                " at least one worker"
            )
        return cls(int(low), int(high))

    @property
    def scales(self) -> bool:
        return self.high > self.low

    def __str__(self) -> str:
        return f"{self.low}..{self.high}" if self.scales else str(self.low)


def desired_workers(backlog: int, per_worker: int, bounds: WorkerRange) -> int:
    """One worker per `per_worker` waiting tasks, within the bounds."""
    return min(max(math.ceil(backlog / per_worker), bounds.low), bounds.high)


@dataclass
class WorkerPool:
    """The worker processes of `ecpds up`: `worker`, then `worker-2`, `worker-3`... Started
    when the backlog grows; the newest retired first once it has stayed small for
    worker_scale_in_after seconds. Retired workers finish or hand back their activities."""

    supervisor: Supervisor
    settings: Settings
    bounds: WorkerRange
    workers: list[Child] = field(default_factory=list)
    checked_at: float = 0.0
    small_since: float | None = None  # since when the backlog wants fewer workers
    backlog_error: str = ""  # the last failure to read it, said once
    runner: asyncio.Runner = field(default_factory=asyncio.Runner)
    client: Client | None = None

    def start(self) -> None:
        for _ in range(self.bounds.low):
            self._add()

    def _add(self) -> None:
        if not self.workers:
            child = self.supervisor.start("worker", child_command("worker"))
        else:
            taken = {child.name for child in self.workers} | set(self.supervisor.retired)
            name = next(
                f"worker-{n}" for n in range(2, 2 + len(taken) + 1) if f"worker-{n}" not in taken
            )
            child = self.supervisor.start(name, child_command("worker"), EXTRA_WORKER_ENV)
        self.workers.append(child)

    def _backlog(self) -> int | None:
        """The tasks waiting on every role's queue; None (said once) if Temporal does not
        answer, and the worker count stays as it is."""
        try:
            backlogs = self.runner.run(asyncio.wait_for(self._read(), READ_TIMEOUT))
        except (RPCError, RuntimeError, TimeoutError) as exc:  # RuntimeError: a failed connect
            message = " ".join(str(exc).split()) or f"no answer in {READ_TIMEOUT:.0f} s"
            if message != self.backlog_error:
                console.print(f"backlog not read from Temporal: {message}", markup=False)
            self.backlog_error = message
            return None
        self.backlog_error = ""
        return sum(backlogs.values())

    async def _read(self) -> dict[str, int]:
        """The backlogs of the queues the workers poll (all run the worker_roles setting's)."""
        if self.client is None:
            self.client = await connect(self.settings)
        settings = self.settings
        return await role_backlogs(
            self.client, settings.temporal_namespace, settings.task_queue, settings.worker_roles
        )

    def scale(self, now: float) -> None:
        """Every CHECK_EVERY seconds: start the workers the backlog asks for at once,
        retire the ones it no longer needs once it has stayed small long enough."""
        if not self.bounds.scales or now - self.checked_at < CHECK_EVERY:
            return
        self.checked_at = now
        backlog = self._backlog()
        if backlog is None:
            return
        wanted = desired_workers(backlog, self.settings.worker_scale_backlog, self.bounds)
        count = len(self.workers)
        if wanted >= count:
            self.small_since = None
            if wanted > count:
                for _ in range(wanted - count):
                    self._add()
                self._said(backlog)
            return
        if self.small_since is None:
            self.small_since = now
        if now - self.small_since < self.settings.worker_scale_in_after:
            return
        self.small_since = None
        for _ in range(count - wanted):
            self.supervisor.retire(self.workers.pop())
        self._said(backlog)

    def _said(self, backlog: int) -> None:
        count = len(self.workers)
        console.print(f"scaled to {count} worker{'s' if count > 1 else ''}: backlog {backlog:,}")

    def close(self) -> None:
        self.runner.close()
