"""Workflows that ran before a change replay with the new code: histories recorded with
the code before the status patches (a failed cycle that completed, a transfer failed over
then delivered, a running transfer re-prioritised, interrupted, requeued and stopped, and
their schedulers) replay without a non-determinism error.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from ecpds.workflows.destination import DestinationWorkflow
from ecpds.workflows.transfer import TransferWorkflow

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_history_from_before_replays(path: Path) -> None:
    text = path.read_text()
    started = json.loads(text)["events"][0]["workflowExecutionStartedEventAttributes"]
    history = WorkflowHistory.from_json(started["workflowType"]["name"], text)
    replayer = Replayer(workflows=[DestinationWorkflow, TransferWorkflow])
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"


def test_there_are_histories() -> None:
    assert len(HISTORIES) >= 5
