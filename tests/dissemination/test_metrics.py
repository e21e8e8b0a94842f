"""A worker's /metrics after it delivered a transfer, and the Temporal SDK's own metrics."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ecpds.core.devserver import free_port
from ecpds.workers.worker import build_worker, connect, serving_metrics

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
    client = await connect(settings)  # with the runtime that serves the SDK's metrics
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
