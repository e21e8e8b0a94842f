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
from pathlib import Path

from ecpds.workers.worker import build_worker

from .conftest import Dissemination
from .test_failover import transmit_results, worker_environment

RATE = 1 << 20  # bytes/s the host takes


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


async def stop_mid_send(worker: subprocess.Popen[bytes], folder: Path) -> str:
    """SIGTERM `worker` once the upload in `folder` has begun; its stderr once it exits."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while not any(p.stat().st_size > 0 for p in folder.rglob("*") if p.is_file()):
        assert loop.time() < deadline, "the upload never started"
        assert worker.poll() is None, "the worker process died"
        await asyncio.sleep(0.1)
    worker.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.to_thread(worker.communicate, timeout=120)
    assert worker.returncode == 0, stderr.decode()
    return stderr.decode()


async def test_a_stopping_worker_finishes_its_send_within_the_grace(
    dissemination_without_worker: Dissemination,
) -> None:
    env = dissemination_without_worker
    dest = env.name("grace")
    out = env.tmp / "out"
    env.add_host(f"{dest}-h", f"file://{out}", retry_count=0, options={"max_rate": RATE})
    env.add_destination(dest, [f"{dest}-h"])
    data = os.urandom(3 * RATE)
    worker = start_worker(env, grace=60)
    try:
        [tid] = await env.put(dest, "graced.bin", data)
        await stop_mid_send(worker, out)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    # No other worker ran: the stopping one delivered it before it exited.
    [done] = await env.wait_for([tid], "DONE", timeout=30)
    assert (out / "graced.bin").read_bytes() == data
    assert done.size_sent == len(data)


async def test_a_send_past_the_grace_is_handed_back_and_resumed(
    dissemination_without_worker: Dissemination,
) -> None:
    env = dissemination_without_worker
    dest = env.name("handback")
    out = env.tmp / "out"
    # No retries: a send the stop counted as a failed attempt would end the cycle (RETR).
    env.add_host(f"{dest}-h", f"file://{out}", retry_count=0, options={"max_rate": RATE})
    env.add_destination(dest, [f"{dest}-h"])
    data = os.urandom(8 * RATE)
    worker = start_worker(env, grace=1)
    try:
        [tid] = await env.put(dest, "handed.bin", data)
        stderr = await stop_mid_send(worker, out)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert "panicked" not in stderr, stderr
    [stopped] = env.transfers([tid])
    assert stopped.status == "EXEC", stopped.last_error
    assert not (out / "handed.bin").exists()
    async with build_worker(env.client, env.settings):
        [done] = await env.wait_for([tid], "DONE", timeout=120)
    assert hashlib.md5((out / "handed.bin").read_bytes()).digest() == hashlib.md5(data).digest()
    [result] = await transmit_results(env, dest, tid)
    assert result["resumed_from"] > 0


async def test_a_small_send_is_finished_by_the_stopping_worker(
    dissemination_without_worker: Dissemination,
) -> None:
    """A file up to LOCAL_SEND_LIMIT goes in a local activity, inside a workflow task: the
    SDK lets the stopping worker finish it even past the grace (here 8 s against 1 s)."""
    env = dissemination_without_worker
    dest = env.name("local")
    out = env.tmp / "out"
    env.add_host(f"{dest}-h", f"file://{out}", retry_count=0, options={"max_rate": 128 << 10})
    env.add_destination(dest, [f"{dest}-h"])
    data = os.urandom(1 << 20)
    worker = start_worker(env, grace=1)
    try:
        [tid] = await env.put(dest, "small.bin", data)
        await stop_mid_send(worker, out)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    [done] = await env.wait_for([tid], "DONE", timeout=30)
    assert (out / "small.bin").read_bytes() == data
    assert done.last_error is None


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
