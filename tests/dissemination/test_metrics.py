"""A worker's /metrics after it delivered a transfer, its /health, and the Temporal SDK's
own metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ecpds.core.devserver import free_port
from ecpds.core.settings import WORKER_METRICS_PORT, Settings, with_worker_metrics
from ecpds.core.temporal_setup import connect
from ecpds.workers.worker import build_worker, run_worker, sdk_runtime, serving_metrics

from .conftest import Dissemination

Samples = dict[str, list[tuple[dict[str, str], float]]]


async def scrape(port: int) -> Samples:
    """The samples of a metrics endpoint by name, as (labels, value) pairs."""
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.get(f"http://127.0.0.1:{port}/metrics")
    assert answer.status_code == 200, answer.text
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for found, v in samples.get(name, []) if labels.items() <= found.items())


async def test_a_worker_shows_its_deliveries_and_the_sdk_metrics(
    dissemination_without_worker: Dissemination,
) -> None:
    env = dissemination_without_worker
    settings = env.settings.model_copy(
        update={"worker_metrics_port": free_port(), "worker_sdk_metrics_port": free_port()}
    )
    name = env.name("metrics")
    env.add_host(f"{name}-h", f"file://{env.tmp / name}")
    env.add_destination(name, [f"{name}-h"])
    client = await connect(settings, sdk_runtime(settings))  # serving the SDK's metrics
    with serving_metrics(settings):
        before = await scrape(settings.worker_metrics_port)
        delivered = value(before, "ecpds_transfer_duration_seconds_count", protocol="file")
        async with build_worker(client, settings):
            ids = await env.put(name, "a.bin", b"x" * 5000)
            await env.wait_for(ids, "DONE")
            after = await scrape(settings.worker_metrics_port)
            # The SDK reports what its pollers did: wait until it has polled once.
            for _ in range(50):
                sdk = await scrape(settings.worker_sdk_metrics_port)
                if any(name.startswith("temporal_") for name in sdk):
                    break
                await asyncio.sleep(0.2)
    assert value(after, "ecpds_transfer_duration_seconds_count", protocol="file") >= delivered + 1
    assert value(after, "ecpds_transfer_rate_bytes_per_second_count", protocol="file") >= 1
    assert value(after, "ecpds_transfer_duration_seconds_sum", protocol="file") > 0
    temporal = sorted(name for name in sdk if name.startswith("temporal_"))
    assert temporal, f"no temporal_ metrics on the SDK port: {sorted(sdk)[:20]}"
    # The worker's port is closed with the block: a next worker can take it.
    with pytest.raises(httpx.ConnectError):
        await scrape(settings.worker_metrics_port)


def test_a_taken_metrics_port_is_a_warning_not_a_dead_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings(worker_metrics_port=port, worker_sdk_metrics_port=port)
        with caplog.at_level(logging.WARNING), serving_metrics(settings):
            assert sdk_runtime(settings) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"worker metrics not served on 127.0.0.1:{port}" in w for w in warnings), warnings
    assert any(f"Temporal SDK metrics not served on 127.0.0.1:{port}" in w for w in warnings)


def test_the_worker_command_turns_metrics_on_unless_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ECPDS_WORKER_METRICS_PORT", raising=False)
    monkeypatch.setenv("ECPDS_WORKER_SDK_METRICS_PORT", "0")
    assert Settings().worker_metrics_port == 0  # a worker started in code serves none
    settings = with_worker_metrics(Settings())
    assert settings.worker_metrics_port == WORKER_METRICS_PORT
    assert settings.worker_sdk_metrics_port == 0  # set to off in the environment: kept


async def health(port: int) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(f"http://127.0.0.1:{port}/health")


async def test_a_worker_is_healthy_while_it_polls(
    dissemination_without_worker: Dissemination,
) -> None:
    """The probes of infra/k8s ask /health: 503 until the worker polls, 200 while it
    does, and nothing once it stopped."""
    settings = dissemination_without_worker.settings.model_copy(
        update={"worker_metrics_port": free_port()}
    )
    port = settings.worker_metrics_port
    with serving_metrics(settings) as running:
        answer = await health(port)
        assert (answer.status_code, answer.text) == (503, "not polling\n")
        running.set()
        assert (await health(port)).status_code == 200
        await scrape(port)  # /metrics served beside it
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, stop))
    try:
        statuses = []
        while not worker.done() and 200 not in statuses:
            with contextlib.suppress(httpx.ConnectError):
                statuses.append((await health(port)).status_code)
            await asyncio.sleep(0.1)
        if worker.done():
            worker.result()  # a worker that died says why
        assert statuses[-1] == 200, statuses
        assert set(statuses) <= {200, 503}, statuses
    finally:
        stop.set()
        await asyncio.wait_for(worker, 60)
    with pytest.raises(httpx.ConnectError):
        await health(port)
