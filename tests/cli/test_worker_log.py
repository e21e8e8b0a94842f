"""The worker's log: routine failures in one line, bugs with their traceback (real Temporal)."""

from __future__ import annotations

import errno
import logging
import socket
import uuid
from datetime import timedelta

import pytest
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from ecpds.core.devserver import free_port
from ecpds.workers.logs import quiet_routine_failures


@activity.defn
async def deliver(kind: str) -> None:
    """Stand-in for `transmit`: fails as a delivery does, or as a bug does."""
    if kind == "refused":
        try:
            socket.create_connection(("127.0.0.1", free_port()), timeout=10).close()
        except ConnectionRefusedError:
            # What the protocol layer and `transmit` make of it.
            raise ApplicationError(
                "sftp 127.0.0.1: connection refused (is the server running on that port?)",
                type="ProtocolError",
            ) from None
    if kind == "reset":  # a network error that reached the SDK as it was
        raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
    raise KeyError(kind)  # a bug


@workflow.defn
class Attempt:
    @workflow.run
    async def run(self, kind: str) -> str:
        try:
            await workflow.execute_activity(
                deliver,
                kind,
                start_to_close_timeout=timedelta(seconds=60),
                retry_policy=RetryPolicy(maximum_attempts=1),
            )
        except ActivityError as exc:
            return str(exc.cause)
        return "delivered"


async def test_routine_failures_are_one_line_and_bugs_keep_their_traceback(
    temporal_server: str, task_queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    quiet_routine_failures()
    client = await Client.connect(temporal_server)
    caplog.set_level(logging.WARNING, logger="temporalio.activity")
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[Attempt],
        activities=[deliver],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        for kind in ("refused", "reset", "bug"):
            await client.execute_workflow(
                Attempt.run, kind, id=f"log-{kind}-{uuid.uuid4().hex[:8]}", task_queue=task_queue
            )
    logged = [
        logging.Formatter().format(record)
        for record in caplog.records
        if record.name == "temporalio.activity"
        and record.getMessage().startswith("Completing activity as failed")
    ]
    refused, reset, bug = (
        next(text for text in logged if word in text)
        for word in ("connection refused", "Connection reset", "KeyError")
    )
    assert "\n" not in refused and refused.endswith(
        "ProtocolError: sftp 127.0.0.1: connection refused (is the server running on that port?)"
    )
    assert "\n" not in reset and reset.endswith(
        "ConnectionResetError: [Errno 104] Connection reset by peer"
    )
    assert "Traceback (most recent call last)" in bug and "raise KeyError(kind)" in bug
