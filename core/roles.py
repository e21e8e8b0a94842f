"""The worker roles and their task queues (standard library only: settings import it)."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    """What a worker does, as OpenECPDS splits DISS, ACQ and AUX."""

    DISSEMINATION = "dissemination"  # the destination schedulers and their transfers
    ACQUISITION = "acquisition"  # discovery runs, fetches of files by source, subscriptions
    AUXILIARY = "auxiliary"  # replication, garbage collection, the wake sweep, notifications


def role_queue(task_queue: str, role: Role) -> str:
    """A role's task queue. Dissemination keeps the bare name, where the long-running
    destination schedulers of earlier versions already run."""
    return task_queue if role is Role.DISSEMINATION else f"{task_queue}-{role}"


def role_queues(task_queue: str) -> list[str]:
    """Every role's task queue, as a visibility query lists them."""
    return [role_queue(task_queue, role) for role in Role]
