"""A worker stopped by SIGTERM (scale-in, `ecpds down`) lets a running send finish within
its grace, or hands it back to be sent again by another worker: the transfer ends DONE,
never failed. And a worker sized by the resource-based tuner sends transfers."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ecpds.workers.worker import build_worker

from .conftest import Dissemination
from .test_failover import transmit_results, worker_environment

RATE = 1 << 20  # bytes/s the host takes


@dataclass
class StoppedSend:
    destination: str
    transfer_id: int
    data: bytes
    delivered: Path  # where the host puts the file


def start_worker(env: Dissemination, grace: float) -> subprocess.Popen[bytes]:
    """`ecpds worker`, as `ecpds up` starts it, with `grace` seconds to stop."""
    return subprocess.Popen(
        [sys.executable, "-m", "ecpds.cli.main", "worker", "--role", "dissemination"],
        env=worker_environment(env)
        | {
            "ECPDS_WORKER_GRACE_SECONDS": str(grace),
            "ECPDS_WORKER_METRICS_PORT": "0",
            "ECPDS_WORKER_SDK_METRICS_PORT": "0",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def stop_mid_send(
    env: Dissemination, label: str, size: int, rate: int, grace: float
) -> StoppedSend:
    """A file of `size` bytes sent at `rate` to a host that retries nothing (a send the
    stop counted as a failed attempt would end the cycle), by a worker process that gets
    SIGTERM once the upload has begun; returned once the worker has exited (code 0)."""
    dest = env.name(label)
    out = env.tmp / "out"
    env.add_host(f"{dest}-h", f"file://{out}", retry_count=0, options={"max_rate": rate})
    env.add_destination(dest, [f"{dest}-h"])
    data = os.urandom(size)
    worker = start_worker(env, grace)
    try:
        [tid] = await env.put(dest, f"{label}.bin", data)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while not any(p.stat().st_size > 0 for p in out.rglob("*") if p.is_file()):
            assert loop.time() < deadline, "the upload never started"
            assert worker.poll() is None, "the worker process died"
            await asyncio.sleep(0.1)
        worker.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.to_thread(worker.communicate, timeout=120)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0, stderr.decode()
    assert "panicked" not in stderr.decode(), stderr.decode()
    return StoppedSend(dest, tid, data, out / f"{label}.bin")


# (size, rate, grace): a send that ends within the grace; a small one, which goes in a
# local activity inside a workflow task, and which the SDK lets the stopping worker
# finish even past the grace (here 8 s against 1 s).
FINISHED_SENDS = {"within-grace": (3 * RATE, RATE, 60.0), "local": (1 << 20, 128 << 10, 1.0)}


@pytest.mark.parametrize("case", FINISHED_SENDS)
async def test_the_stopping_worker_finishes_the_send(
    dissemination_without_worker: Dissemination, case: str
) -> None:
    env = dissemination_without_worker
    size, rate, grace = FINISHED_SENDS[case]
    sent = await stop_mid_send(env, case, size, rate, grace)
    # No other worker ran: the stopping one delivered it before it exited.
    [done] = await env.wait_for([sent.transfer_id], "DONE", timeout=30)
    assert sent.delivered.read_bytes() == sent.data
    assert done.last_error is None


async def test_a_send_past_the_grace_is_handed_back_and_resumed(
    dissemination_without_worker: Dissemination,
) -> None:
    env = dissemination_without_worker
    sent = await stop_mid_send(env, "handback", 8 * RATE, RATE, grace=1)
    [stopped] = env.transfers([sent.transfer_id])
    assert stopped.status == "EXEC", stopped.last_error
    assert not sent.delivered.exists()
    async with build_worker(env.client, env.settings):
        [done] = await env.wait_for([sent.transfer_id], "DONE", timeout=120)
    assert hashlib.md5(sent.delivered.read_bytes()).digest() == hashlib.md5(sent.data).digest()
    assert done.last_error is None
    [result] = await transmit_results(env, sent.destination, sent.transfer_id)
    assert result["resumed_from"] > 0


async def test_a_worker_with_the_resource_based_tuner_sends(
    dissemination_without_worker: Dissemination,
) -> None:
    env = dissemination_without_worker
    dest = env.name("tuner")
    out = env.tmp / "out"
    env.add_host(f"{dest}-h", f"file://{out}")
    env.add_destination(dest, [f"{dest}-h"])
    settings = env.settings.model_copy(update={"worker_tuner": "resource"})
    async with build_worker(env.client, settings):
        ids = await env.put(dest, "small.bin", b"s" * 1000)
        ids += await env.put(dest, "large.bin", b"l" * (2 << 20))  # a (not local) activity
        await env.wait_for(ids, "DONE")
    assert (out / "small.bin").read_bytes() == b"s" * 1000
    assert (out / "large.bin").stat().st_size == 2 << 20
