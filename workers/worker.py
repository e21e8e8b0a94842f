"""The ecpds worker: the only place that lists workflows and activities."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import PollerBehaviorAutoscaling, Worker, WorkerTuner

from ecpds.activities.discovery import DiscoveryActivities
from ecpds.activities.notification import NotificationActivities
from ecpds.activities.scheduling import SchedulingActivities
from ecpds.activities.storage import StorageActivities
from ecpds.activities.subscription import SubscriptionActivities
from ecpds.activities.transmit import HEARTBEAT_EVERY, TransmitActivities
from ecpds.core.db import open_catalog
from ecpds.core.metrics import worker_registry
from ecpds.core.notifications import Doors
from ecpds.core.roles import Role, role_queue
from ecpds.core.secrets import CredentialBox, load_or_create_key
from ecpds.core.settings import Settings
from ecpds.core.store import open_store
from ecpds.core.temporal_setup import (
    SearchAttributesError,
    connect,
    create_command,
    missing_search_attributes,
)
from ecpds.workers.logs import quiet_routine_failures
from ecpds.workers.notifier import ensure_notifications
from ecpds.workers.schedules import ensure_schedules, sweep_now, sync_acquisition_schedules
from ecpds.workers.subscriptions import ensure_subscriptions
from ecpds.workflows.destination import DestinationWorkflow
from ecpds.workflows.discovery import DiscoveryWorkflow
from ecpds.workflows.gc import GarbageCollectionWorkflow
from ecpds.workflows.notification import NotificationWorkflow
from ecpds.workflows.replication import ReplicationWorkflow
from ecpds.workflows.retrieval import RetrievalBatchWorkflow
from ecpds.workflows.subscription import SubscriptionWorkflow
from ecpds.workflows.sweep import WakeSweepWorkflow
from ecpds.workflows.transfer import TransferWorkflow

log = logging.getLogger(__name__)


ALL_ROLES = tuple(Role)


class Workers:
    """One Temporal worker per role, each on its role's task queue, run and stopped together
    (the methods of `temporalio.worker.Worker` that ecpds uses)."""

    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers

    @property
    def task_queues(self) -> list[str]:
        return [worker.task_queue for worker in self.workers]

    async def run(self) -> None:
        await asyncio.gather(*(worker.run() for worker in self.workers))

    async def shutdown(self) -> None:
        await asyncio.gather(*(worker.shutdown() for worker in self.workers))

    async def __aenter__(self) -> Workers:
        async with contextlib.AsyncExitStack() as stack:
            for worker in self.workers:
                await stack.enter_async_context(worker)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()


def build_worker(
    client: Client,
    settings: Settings,
    *,
    roles: Iterable[Role] = ALL_ROLES,
    max_concurrent_activities: int | None = None,
) -> Workers:
    """The workers of `roles`, with the catalog, store and credential key; each registers
    only its role's workflows and activities. Their slots are the worker_tuner setting's
    (`max_concurrent_activities` narrows the fixed tuner's activity slots)."""
    engine = open_catalog(settings.catalog_url)
    store = open_store(settings)
    box = CredentialBox(load_or_create_key(settings.key_file))
    doors = Doors.of(settings)  # where the notifications say products are served
    storage = StorageActivities(engine, store, box, settings.task_queue, doors=doors)
    slots = worker_slots(settings, max_concurrent_activities)
    built = []
    for role in dict.fromkeys(roles):  # each once, in the order given
        workflows: list[type]
        activities: list[Callable[..., Any]]
        if role is Role.DISSEMINATION:
            scheduling = SchedulingActivities(engine)
            transmit = TransmitActivities(engine, store, box, doors=doors)
            workflows = [DestinationWorkflow, TransferWorkflow]
            activities = [
                scheduling.load_destination,
                scheduling.record,
                scheduling.apply_operation,
                scheduling.next_transfers,
                scheduling.clean_expired,
                transmit.transmit,
            ]
        elif role is Role.ACQUISITION:
            discovery = DiscoveryActivities(engine, box)
            subscription = SubscriptionActivities(engine, box, settings.task_queue)
            workflows = [DiscoveryWorkflow, RetrievalBatchWorkflow, SubscriptionWorkflow]
            activities = [
                discovery.start_run,
                discovery.discover,
                discovery.count_fetches,
                discovery.finish_run,
                storage.fetch_files,
                storage.queue_transfers,
                storage.fail_retrievals,
                # A fetched file is copied to the replicas and archives from its batch.
                storage.replicate,
                storage.backup,
                subscription.subscribe,
            ]
        else:
            notification = NotificationActivities(engine, box, settings)
            workflows = [
                ReplicationWorkflow,
                GarbageCollectionWorkflow,
                WakeSweepWorkflow,
                NotificationWorkflow,
            ]
            activities = [
                storage.wake_sweep,
                storage.replicate,
                storage.files_to_check,
                storage.backup,
                storage.collect_garbage,
                notification.publish_notifications,
            ]
        built.append(
            Worker(
                client,
                task_queue=role_queue(settings.task_queue, role),
                workflows=workflows,
                activities=activities,
                # Temporal answers a heartbeat with "cancel requested": an operator's
                # interrupt is noticed within this (by default 80% of the heartbeat
                # timeout, i.e. 12 s).
                max_heartbeat_throttle_interval=timedelta(seconds=HEARTBEAT_EVERY),
                # Transfer workflows are short; a small cache keeps the worker's memory flat.
                max_cached_workflows=100,
                # As many pollers as the queue's backlog asks for, not a fixed count.
                workflow_task_poller_behavior=PollerBehaviorAutoscaling(),
                activity_task_poller_behavior=PollerBehaviorAutoscaling(),
                # After SIGTERM: no new tasks, running ones may finish, then the rest are
                # cancelled and handed back (see TransmitActivities.transmit).
                graceful_shutdown_timeout=timedelta(seconds=settings.worker_grace_seconds),
                **slots,
            )
        )
    return Workers(built)


# The resource-based tuner's targets: room left for the store's buffers and the portal.
TARGET_MEMORY_USAGE = 0.8
TARGET_CPU_USAGE = 0.9


def worker_slots(settings: Settings, max_concurrent_activities: int | None) -> dict[str, Any]:
    """The Worker arguments that size its slots: a fixed count of each kind, or one
    resource-based tuner shared by the process's workers (the SDK takes one or the other)."""
    if settings.worker_tuner == "resource":
        tuner = WorkerTuner.create_resource_based(
            target_memory_usage=TARGET_MEMORY_USAGE, target_cpu_usage=TARGET_CPU_USAGE
        )
        return {"tuner": tuner}
    return {
        "max_concurrent_activities": max_concurrent_activities or settings.worker_slots,
        "max_concurrent_workflow_tasks": settings.worker_slots,
        "max_concurrent_local_activities": settings.worker_slots,
    }


def tune_memory() -> None:
    """Return large transfer buffers to the system at once, and share few malloc arenas.

    glibc otherwise keeps freed multi-MiB chunks per thread arena, and the worker's
    memory grows with every large transfer it has sent.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc: nothing to tune
    libc.mallopt(-8, 2)  # M_ARENA_MAX
    libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: 1 MiB and more is mmapped, unmapped on free


def sdk_runtime(settings: Settings) -> Runtime | None:
    """A Temporal runtime serving the SDK's own metrics (polls, task latencies, slots) on
    worker_sdk_metrics_port; None (the default runtime, no metrics) when that is 0."""
    if not settings.worker_sdk_metrics_port:
        return None
    address = f"{settings.bind}:{settings.worker_sdk_metrics_port}"
    try:
        return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=address)))
    except ValueError as exc:  # how the SDK's core reports a port in use
        # Metrics are not worth a worker that does not run: say so and carry on without.
        log.warning("Temporal SDK metrics not served on %s: %s", address, exc)
        return None


class _MetricsServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scrape never holds the worker's exit


class _MetricsServerV6(_MetricsServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes and scrapes every few seconds would drown the worker's log."""


def metrics_app(registry: CollectorRegistry, running: threading.Event) -> Any:
    """/health (200 while the worker polls its task queues, 503 before and while it
    stops: Kubernetes probes and compose health checks ask it) and /metrics."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") != "/health":
            return metrics(environ, start_response)
        status, body = (
            ("200 OK", b"ok\n")
            if running.is_set()
            else ("503 Service Unavailable", b"not polling\n")
        )
        start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    return app


@contextlib.contextmanager
def serving_metrics(settings: Settings) -> Iterator[threading.Event]:
    """The worker's own /metrics and /health on worker_metrics_port (0: none) while the
    block runs; the caller sets the event it yields while its workers poll."""
    running = threading.Event()
    if not settings.worker_metrics_port:
        yield running
        return
    app = metrics_app(worker_registry(), running)
    try:
        server = make_server(
            settings.bind,
            settings.worker_metrics_port,
            app,
            server_class=_MetricsServerV6 if ":" in settings.bind else _MetricsServer,
            handler_class=_QuietHandler,
        )
    except OSError as exc:
        log.warning(
            "worker metrics not served on %s:%s: %s",
            settings.bind,
            settings.worker_metrics_port,
            exc,
        )
        yield running
        return
    thread = threading.Thread(target=server.serve_forever, name="worker-metrics", daemon=True)
    thread.start()
    try:
        yield running
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def warn_of_missing_search_attributes(client: Client, namespace: str) -> None:
    """Workflows that set a search attribute the namespace lacks fail: say so at start."""
    try:
        missing = await missing_search_attributes(client, namespace)
    except SearchAttributesError as exc:
        log.warning("%s", exc)
        return
    if missing:
        log.warning(
            "namespace %s lacks the search attributes %s, and transfers fail until it has"
            " them: run `ecpds temporal setup` (or `%s`)",
            namespace,
            ", ".join(key.name for key in missing),
            create_command(missing, namespace),
        )


async def run_worker(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run a worker of `settings.worker_roles` until `stop` is set (or forever); running
    activities then have worker_grace_seconds to finish, and the rest are handed back to
    Temporal, resumed from their partial files by another worker."""
    tune_memory()
    quiet_routine_failures()
    with serving_metrics(settings) as running:
        await _serve(settings, stop, running)


async def _serve(settings: Settings, stop: asyncio.Event | None, running: threading.Event) -> None:
    client = await connect(settings, sdk_runtime(settings))
    await warn_of_missing_search_attributes(client, settings.temporal_namespace)
    await ensure_schedules(client, settings)
    catalog = open_catalog(settings.catalog_url)
    try:
        await sync_acquisition_schedules(client, catalog, settings.task_queue)
    finally:
        catalog.dispose()
    roles = settings.worker_roles
    worker = build_worker(client, settings, roles=roles)
    async with worker:
        log.info("worker polling %s", ", ".join(worker.task_queues))
        if Role.ACQUISITION in roles:
            engine = open_catalog(settings.catalog_url)
            try:
                await ensure_subscriptions(client, engine, settings.task_queue)
            finally:
                engine.dispose()
        if Role.AUXILIARY in roles:
            await ensure_notifications(client, settings.task_queue)
        # A push while the engine was down could not wake its destination: do it now.
        await sweep_now(client, settings.task_queue)
        running.set()
        try:
            await (stop or asyncio.Event()).wait()
        finally:
            running.clear()
