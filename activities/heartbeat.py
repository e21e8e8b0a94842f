"""Blocking work in an activity, in a thread, with heartbeats while it runs."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from temporalio import activity

T = TypeVar("T")

HEARTBEAT_EVERY = 1.0  # seconds; Temporal answers a heartbeat with a cancel request


async def heartbeating(pool: Executor, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` on `pool`, heartbeating every HEARTBEAT_EVERY until it returns."""
    call = functools.partial(fn, *args, **kwargs)
    task = asyncio.ensure_future(asyncio.get_running_loop().run_in_executor(pool, call))
    while True:
        done, _ = await asyncio.wait({task}, timeout=HEARTBEAT_EVERY)
        if done:
            return task.result()
        activity.heartbeat()
