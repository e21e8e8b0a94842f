"""Task-queue names: every worker and client takes them from here."""

from __future__ import annotations

from ecpds.core.settings import Settings


def dissemination_queue(settings: Settings) -> str:
    """Transfers, destination schedulers and their activities share one queue."""
    return settings.task_queue
