"""`ecpds up --workers`: worker processes that follow their task queues' backlog, one more
per worker_scale_backlog waiting tasks, between MIN and MAX; one pool of workers running
every role, or one pool per role (`--workers dissemination=1..4,acquisition=1..2`)."""

from __future__ import annotations

import asyncio
import itertools
import math
from dataclasses import dataclass, field

from temporalio.client import Client
from temporalio.service import RPCError

from ecpds.cli.client import CliError
from ecpds.cli.resources import console
from ecpds.cli.supervisor import Child, Supervisor, child_command
from ecpds.core.backlog import role_backlogs
from ecpds.core.roles import Role, role_queue
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
    def parse(cls, text: str, source: str = "--workers") -> WorkerRange:
        """`N` or `MIN..MAX`, 1 <= MIN <= MAX."""
        low, dots, high = text.strip().partition("..")
        if not dots:
            high = low
        if not (low.isdigit() and high.isdigit() and 1 <= int(low) <= int(high)):
            raise CliError(
                f"{source} {text!r} is not a count or MIN..MAX range (such as 1..4) of"
                " at least one worker"
            )
        return cls(int(low), int(high))

    @property
    def scales(self) -> bool:
        return self.high > self.low

    def __str__(self) -> str:
        return f"{self.low}..{self.high}" if self.scales else str(self.low)


# A range of workers that each run every role, or a range for each role named.
WorkerPlan = WorkerRange | dict[Role, WorkerRange]


def parse_workers(text: str, source: str = "--workers") -> WorkerPlan:
    """`N` or `MIN..MAX` for one pool running every role; `ROLE=RANGE,...` for a pool
    per role. `source` names where the text came from in the one-line errors."""
    if "=" not in text:
        return WorkerRange.parse(text, source)
    ranges: dict[Role, WorkerRange] = {}
    for entry in text.split(","):
        name, equals, bounds = (part.strip() for part in entry.partition("="))
        if not equals:
            raise CliError(
                f"{source} {text!r}: {entry.strip()!r} is not ROLE=RANGE"
                " (such as dissemination=1..4)"
            )
        if name not in set(Role):
            roles = ", ".join(Role)
            raise CliError(f"{source} {text!r}: {name!r} is not a role (the roles: {roles})")
        role = Role(name)
        if role in ranges:
            raise CliError(f"{source} {text!r}: {role} is given twice")
        ranges[role] = WorkerRange.parse(bounds, f"{source} {text!r}:")
    return ranges


def desired_workers(backlog: int, per_worker: int, bounds: WorkerRange) -> int:
    """One worker per `per_worker` waiting tasks, within the bounds."""
    return min(max(math.ceil(backlog / per_worker), bounds.low), bounds.high)


@dataclass
class WorkerPool:
    """Worker processes running the same roles: NAME, then NAME-2, NAME-3... Started when
    their queues' backlog grows; the newest retired first once it has stayed small for
    worker_scale_in_after seconds. Retired workers finish or hand back their activities."""

    supervisor: Supervisor
    settings: Settings
    name: str  # `worker`, or `worker-ROLE` for a role's own pool
    roles: list[Role]
    bounds: WorkerRange
    command: list[str]
    per_role: bool
    serves_metrics: bool  # its first worker has the metrics ports
    workers: list[Child] = field(default_factory=list)
    small_since: float | None = None  # since when the backlog wants fewer workers

    def start(self) -> None:
        for _ in range(self.bounds.low):
            self._add()

    def _add(self) -> None:
        taken = {child.name for child in self.workers} | set(self.supervisor.retired)
        names = itertools.chain([self.name], (f"{self.name}-{n}" for n in itertools.count(2)))
        name = next(name for name in names if name not in taken)
        env = {} if self.serves_metrics and not self.workers else EXTRA_WORKER_ENV
        self.workers.append(self.supervisor.start(name, self.command, env))

    def resize(self, backlog: int, now: float) -> None:
        """Start the workers the backlog asks for at once, retire the ones it no longer
        needs once it has stayed small long enough."""
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
        kind = f"{self.roles[0]} " if self.per_role else ""
        plural = "s" if count > 1 else ""
        console.print(f"scaled to {count} {kind}worker{plural}: backlog {backlog:,}")

    def description(self) -> tuple[str, str]:
        """Its row in `ecpds up`'s service table: the service and the notes."""
        queues = ", ".join(role_queue(self.settings.task_queue, role) for role in self.roles)
        by_backlog = " by backlog" if self.bounds.scales else ""
        plural = "s" if self.bounds.high > 1 else ""
        count = f"{self.bounds} worker{plural}{by_backlog}, "
        pid = self.workers[0].pid
        if self.per_role:
            return f"Worker {self.roles[0]}", f"{count}task queue {queues}, pid {pid}"
        count = count if self.bounds.high > 1 else ""  # the plain `ecpds up`: one worker
        return "Worker", f"{count}task queues {queues}, pid {pid}"


@dataclass
class WorkerPools:
    """The worker pools of `ecpds up`, scaled on one reading of their queues' backlog
    every CHECK_EVERY seconds."""

    settings: Settings
    pools: list[WorkerPool]
    checked_at: float = 0.0
    backlog_error: str = ""  # the last failure to read it, said once
    runner: asyncio.Runner = field(default_factory=asyncio.Runner)
    client: Client | None = None

    @classmethod
    def planned(cls, supervisor: Supervisor, settings: Settings, plan: WorkerPlan) -> WorkerPools:
        """One pool of `ecpds worker` (the worker_roles setting's roles) for a range; for
        ranges by role, a pool of `ecpds worker --role R` per role named, and one worker
        for each role of worker_roles left out."""
        if isinstance(plan, WorkerRange):
            shared = WorkerPool(
                supervisor,
                settings,
                "worker",
                list(settings.worker_roles),
                plan,
                child_command("worker"),
                per_role=False,
                serves_metrics=True,
            )
            return cls(settings, [shared])
        chosen = [role for role in Role if role in plan or role in settings.worker_roles]
        pools = [
            WorkerPool(
                supervisor,
                settings,
                f"worker-{role}",
                [role],
                plan.get(role, WorkerRange(1, 1)),
                child_command("worker", "--role", role),
                per_role=True,
                serves_metrics=n == 0,
            )
            for n, role in enumerate(chosen)
        ]
        return cls(settings, pools)

    def start(self) -> None:
        for pool in self.pools:
            pool.start()

    def scale(self, now: float) -> None:
        scaling = [pool for pool in self.pools if pool.bounds.scales]
        if not scaling or now - self.checked_at < CHECK_EVERY:
            return
        self.checked_at = now
        backlogs = self._backlogs([role for pool in scaling for role in pool.roles])
        if backlogs is None:
            return
        for pool in scaling:
            pool.resize(sum(backlogs[role] for role in pool.roles), now)

    def _backlogs(self, roles: list[Role]) -> dict[Role, int] | None:
        """The tasks waiting on each role's queue; None (said once) if Temporal does not
        answer, and the worker counts stay as they are."""
        try:
            backlogs = self.runner.run(asyncio.wait_for(self._read(roles), READ_TIMEOUT))
        except (RPCError, RuntimeError, TimeoutError) as exc:  # RuntimeError: a failed connect
            message = " ".join(str(exc).split()) or f"no answer in {READ_TIMEOUT:.0f} s"
            if message != self.backlog_error:
                console.print(f"backlog not read from Temporal: {message}", markup=False)
            self.backlog_error = message
            return None
        self.backlog_error = ""
        return backlogs

    async def _read(self, roles: list[Role]) -> dict[Role, int]:
        if self.client is None:
            self.client = await connect(self.settings)
        settings = self.settings
        return await role_backlogs(
            self.client, settings.temporal_namespace, settings.task_queue, roles
        )

    def close(self) -> None:
        self.runner.close()
