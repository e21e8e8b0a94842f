"""The transmit activity: one transfer's file sent to one host, with its catalog writes.

Host credentials are read from the catalog and decrypted here, by host id, and never
leave this module: no input, output or error message of this activity carries them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlmodel import Session
from temporalio import activity
from temporalio.exceptions import ApplicationError

from ecpds.core.db import session_scope
from ecpds.core.models import DataFile, DataTransfer, Destination, Host, TransferStatus
from ecpds.core.naming import NamingError, target_path
from ecpds.core.protocols import ProtocolError
from ecpds.core.secrets import CredentialBox, CredentialError
from ecpds.core.store import Store, StoreError
from ecpds.core.transmit import SendRequest, SendResult, partial_offset, send

T = TypeVar("T")
HEARTBEAT_EVERY = 1.0


@dataclass
class TransmitInput:
    transfer_id: int
    host_id: int
    start_count: int


@dataclass
class TransmitOutput:
    bytes_sent: int
    md5: str
    seconds: float
    target: str
    resumed_from: int = 0


class TransmitCancelled(Exception):
    pass


@dataclass
class _Plan:
    request: SendRequest
    credentials: dict[str, str]
    resume: bool  # the destination resumes targets that exist


class TransmitActivities:
    """Transmit, with the catalog, the store and the credential key it needs."""

    def __init__(self, engine: Engine, store: Store, box: CredentialBox, *, threads: int = 64):
        self.engine = engine
        self.store = store
        self.box = box
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="ecpds-io")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    @activity.defn
    async def transmit(self, request: TransmitInput) -> TransmitOutput:
        """Send one transfer's file to one host, heartbeating bytes sent; resumes on retry."""
        info = activity.info()
        plan = await self._run(self._prepare, request, info.workflow_id)
        resume = info.attempt > 1 or bool(info.heartbeat_details)
        offset = 0
        if resume or plan.resume:
            try:
                offset = await self._run(partial_offset, plan.request, plan.credentials)
            except ProtocolError:
                offset = 0
        if offset:
            plan.request = dataclasses.replace(plan.request, resume_offset=offset)
        sent = offset
        cancelled = threading.Event()

        def progress(count: int) -> None:
            nonlocal sent
            sent = count
            if cancelled.is_set():
                raise TransmitCancelled("interrupted by an operator")

        started = time.monotonic()
        future = asyncio.get_running_loop().run_in_executor(
            self.executor,
            lambda: send(self.store, plan.request, plan.credentials, progress=progress),
        )
        try:
            while True:
                done, _ = await asyncio.wait({future}, timeout=HEARTBEAT_EVERY)
                if done:
                    break
                if not info.is_local:
                    activity.heartbeat(sent)
            result = future.result()
        except asyncio.CancelledError:
            cancelled.set()
            await asyncio.wait({future})
            future.exception()  # TransmitCancelled, or whatever ended the send meanwhile
            raise
        except ProtocolError as exc:
            await self._run(self._failed, request, str(exc))
            raise ApplicationError(
                str(exc), type="ProtocolError", non_retryable=not exc.retryable
            ) from None
        except (StoreError, OSError, ValueError) as exc:
            message = " ".join(f"{type(exc).__name__}: {exc}".split())
            await self._run(self._failed, request, message)
            raise ApplicationError(message, type=type(exc).__name__) from None
        # send() has checked the size at the far end against the bytes delivered.
        seconds = time.monotonic() - started
        await self._run(self._done, request, result, offset, seconds)
        return TransmitOutput(
            bytes_sent=result.bytes_sent,
            md5=result.md5 or "",
            seconds=seconds,
            target=result.target,
            resumed_from=offset,
        )

    def _prepare(self, request: TransmitInput, workflow_id: str | None = None) -> _Plan:
        now = datetime.now(UTC)
        with session_scope(self.engine) as session:
            transfer, data_file, dest, host = _load(session, request)
            try:
                credentials = self.box.open(host.credentials_encrypted)
            except CredentialError as exc:
                raise ApplicationError(f"host {host.name}: {exc}", non_retryable=True) from None
            try:
                target = target_path(
                    dest.target_template,
                    destination=dest.name,
                    target=transfer.target,
                    data_file_id=data_file.id,
                    transfer_id=request.transfer_id,
                    when=now,
                )
            except NamingError as exc:
                raise ApplicationError(str(exc), non_retryable=True) from None
            transfer.status = TransferStatus.EXEC
            transfer.host_id = host.id
            transfer.started = now
            transfer.workflow_id = workflow_id or transfer.workflow_id
            transfer.start_count = request.start_count
            transfer.bytes_sent = 0
            transfer.last_error = None
            session.add(transfer)
            send_request = SendRequest(
                data_file_id=data_file.id,
                size=data_file.size,
                adler32=data_file.adler32,
                md5=data_file.md5,
                host_name=host.name,
                host_url=host.url,
                host_options=dict(host.options or {}),
                target=target,
                compression=dest.compression,
            )
            return _Plan(send_request, credentials, dest.if_target_exists == "resume")

    def _failed(self, request: TransmitInput, message: str) -> None:
        """An attempt failed: the error is shown, the status stays EXEC (the cycle goes on,
        with the host's next retry or the next host; the scheduler writes what follows)."""
        with session_scope(self.engine) as session:
            transfer = session.get(DataTransfer, request.transfer_id)
            if transfer is not None:
                transfer.last_error = message
                session.add(transfer)

    def _done(
        self, request: TransmitInput, result: SendResult, offset: int, seconds: float
    ) -> None:
        with session_scope(self.engine) as session:
            transfer = session.get(DataTransfer, request.transfer_id)
            if transfer is not None:
                transfer.status = TransferStatus.DONE
                transfer.finished = datetime.now(UTC)
                transfer.bytes_sent = offset + result.bytes_sent
                transfer.size_sent = result.remote_size
                transfer.rate = result.bytes_sent / seconds if seconds > 0 else None
                transfer.last_error = None
                session.add(transfer)


def _load(
    session: Session, request: TransmitInput
) -> tuple[DataTransfer, DataFile, Destination, Host]:
    transfer = session.get(DataTransfer, request.transfer_id)
    if transfer is None or transfer.deleted:
        raise ApplicationError(f"transfer {request.transfer_id} is gone", non_retryable=True)
    data_file = session.get(DataFile, transfer.data_file_id)
    dest = session.get(Destination, transfer.destination_id)
    host = session.get(Host, request.host_id)
    if data_file is None or data_file.deleted or dest is None or host is None:
        raise ApplicationError(
            f"transfer {request.transfer_id}: its data file, destination or host is gone",
            non_retryable=True,
        )
    return transfer, data_file, dest, host
