"""The transmit activity: one transfer's file sent to one host, with its catalog writes.

Host credentials are read from the catalog and decrypted here, by host id, and never
leave this module: no input, output or error message of this activity carries them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

from sqlalchemy import Engine, update
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col
from temporalio import activity
from temporalio.exceptions import ApplicationError

from ecpds.core import host_slots
from ecpds.core.db import session_scope
from ecpds.core.engine import HOST_BUSY, WORKER_STOPPED
from ecpds.core.metrics import observe_delivery
from ecpds.core.models import DataFile, DataTransfer, Destination, Host, TransferStatus
from ecpds.core.naming import NamingError, target_path
from ecpds.core.notifications import Doors, announce_delivered, remote_location
from ecpds.core.protocols import ProtocolError
from ecpds.core.secrets import CredentialBox, CredentialError
from ecpds.core.settings import get_settings
from ecpds.core.store import Store, StoreError
from ecpds.core.transmit import SendRequest, SendResult, discard_partial, partial_offset, send

T = TypeVar("T")
log = logging.getLogger(__name__)
# The worker sends heartbeats at most this often too (its heartbeat throttle): an operator's
# interrupt reaches a running send with the next heartbeat's answer.
HEARTBEAT_EVERY = 0.5
PROGRESS_EVERY = 1.0  # seconds between writes of a running transfer's progress to the catalog


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
    resume: bool  # the destination resumes targets that exist, or an earlier start was cut
    # An earlier start's unfinished upload on another host: removed, as it is not resumed.
    elsewhere: tuple[SendRequest, dict[str, str]] | None = None
    slot: bool = False  # holds one of the host's slots (a host with max_connections)


class TransmitActivities:
    """Transmit, with the catalog, the store and the credential key it needs."""

    def __init__(
        self,
        engine: Engine,
        store: Store,
        box: CredentialBox,
        *,
        threads: int = 64,
        doors: Doors | None = None,
    ):
        self.engine = engine
        self.store = store
        self.box = box
        self.doors = doors or Doors.of(get_settings())
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="ecpds-io")
        # Progress writes have their own threads: sends may hold every one of the others.
        self.progress_executor = ThreadPoolExecutor(4, thread_name_prefix="ecpds-progress")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    @activity.defn
    async def transmit(self, request: TransmitInput) -> TransmitOutput:
        """Send one transfer's file to one host, heartbeating bytes sent; resumes on retry."""
        info = activity.info()
        try:
            plan = await self._run(self._prepare, request, info.workflow_id)
        except ApplicationError as exc:
            if exc.type != HOST_BUSY:  # it may have taken the slot before it failed
                await self._run(self._release, request)
            raise
        try:
            return await self._send(request, plan, info)
        finally:
            if plan.slot:
                await self._run(self._release, request)

    async def _send(
        self, request: TransmitInput, plan: _Plan, info: activity.Info
    ) -> TransmitOutput:
        # A retry, a requeue or an interrupted start resume the partial upload they left
        # (a send that cannot resume it writes it again from byte 0, under the same name).
        resume = info.attempt > 1 or bool(info.heartbeat_details) or plan.resume
        offset = 0
        if resume:
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
            sent = offset + count
            if cancelled.is_set():
                raise TransmitCancelled("interrupted by an operator")

        started = time.monotonic()
        target = plan.request.target
        written, written_at = offset, started
        renewed_at = started
        writing: asyncio.Future[None] | None = None
        if offset:
            writing = self._write_progress(request, target, offset, None)
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
                now = time.monotonic()
                busy = writing is not None and not writing.done()
                if sent != written and now - written_at >= PROGRESS_EVERY and not busy:
                    # Not awaited: a slow catalog must not hold up the heartbeats.
                    rate = (sent - offset) / (now - started)
                    written, written_at = sent, now
                    writing = self._write_progress(request, target, sent, rate)
                if plan.slot and now - renewed_at >= host_slots.RENEW_EVERY:
                    renewed_at = now
                    self.progress_executor.submit(self._renew, request)
            if writing is not None:
                await asyncio.wait({writing})  # before the outcome, which it must not undo
            result = future.result()
        except asyncio.CancelledError:
            cancelled.set()
            await asyncio.wait({future})
            future.exception()  # TransmitCancelled, or whatever ended the send meanwhile
            if writing is not None:
                await asyncio.wait({writing})
            await self._write_progress(request, target, sent, None)
            if activity.is_worker_shutdown():
                # Not a cancellation, which the workflow takes for an operator's interrupt.
                raise ApplicationError(
                    f"the worker stopped after {sent} bytes: handed back",
                    type=WORKER_STOPPED,
                    non_retryable=True,  # the workflow sends it again, not this attempt's retry
                ) from None
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
        protocol = urlsplit(plan.request.host_url).scheme.lower()
        observe_delivery(protocol, seconds, result.bytes_sent)
        if plan.elsewhere is not None:
            # Once delivered (the other host may be another name for this place, where the
            # staging name is gone by now), and in the background: that host may be the one
            # that failed, and slow to answer.
            self.executor.submit(_discard_quietly, *plan.elsewhere)
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
            slot = bool(host.max_connections)
            if slot and not host_slots.take(
                self.engine,
                host_id=request.host_id,
                transfer_id=request.transfer_id,
                limit=host.max_connections,
            ):
                raise ApplicationError(
                    f"host {host.name}: its {host.max_connections} connections are in use",
                    type=HOST_BUSY,
                    non_retryable=True,
                )
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
            earlier = _earlier_upload(session, self.box, transfer, host)
            cut_short = earlier is not None and earlier.elsewhere is None
            if earlier is not None and cut_short:
                # Resumed under the name it was begun with, whatever the template gives now.
                target = earlier.target
            transfer.status = TransferStatus.EXEC
            transfer.host_id = host.id
            transfer.started = now
            transfer.workflow_id = workflow_id or transfer.workflow_id
            transfer.start_count = request.start_count
            transfer.bytes_sent = 0
            transfer.rate = None
            transfer.progress_at = None
            transfer.last_error = None
            if not cut_short:
                transfer.partial_target = None
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
                compression_pattern=dest.compression_pattern,
                compression_min_size=dest.compression_min_size,
                checksums=tuple(dest.checksums or ()),
            )
            elsewhere = None
            if earlier is not None and earlier.elsewhere is not None:
                fields, other_credentials = earlier.elsewhere
                elsewhere = (dataclasses.replace(send_request, **fields), other_credentials)
            resume = cut_short or dest.if_target_exists == "resume"
            return _Plan(send_request, credentials, resume, elsewhere, slot)

    def _renew(self, request: TransmitInput) -> None:
        try:
            host_slots.renew(self.engine, host_id=request.host_id, transfer_id=request.transfer_id)
        except SQLAlchemyError as exc:  # the lease outlives a few missed renewals
            log.warning("transfer %s: host slot not renewed: %s", request.transfer_id, exc)

    def _release(self, request: TransmitInput) -> None:
        try:
            host_slots.release(
                self.engine, host_id=request.host_id, transfer_id=request.transfer_id
            )
        except SQLAlchemyError as exc:  # its lease runs out instead
            log.warning("transfer %s: host slot not released: %s", request.transfer_id, exc)

    def _write_progress(
        self, request: TransmitInput, target: str, sent: int, rate: float | None
    ) -> asyncio.Future[None]:
        return asyncio.get_running_loop().run_in_executor(
            self.progress_executor, self._progress, request, target, sent, rate
        )

    def _progress(self, request: TransmitInput, target: str, sent: int, rate: float | None) -> None:
        """One UPDATE: the bytes at the far end, the rate, and the upload to resume.

        Best effort: the transfer goes on if the catalog cannot take it now.
        """
        values: dict[str, Any] = {"bytes_sent": sent, "progress_at": datetime.now(UTC)}
        if sent:
            values["partial_target"] = target
        if rate is not None:
            values["rate"] = rate
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    update(DataTransfer)
                    .where(col(DataTransfer.id) == request.transfer_id)
                    .values(**values)
                )
        except SQLAlchemyError as exc:
            log.warning("transfer %s: progress not written: %s", request.transfer_id, exc)

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
                transfer.partial_target = None
                transfer.progress_at = transfer.finished
                transfer.sha256 = result.extra.get("sha256")
                transfer.sha512 = result.extra.get("sha512")
                session.add(transfer)
                self._announce(session, transfer, result.target)

    def _announce(self, session: Session, transfer: DataTransfer, target: str) -> None:
        """The delivery's notification, in the transaction that marks the transfer DONE."""
        destination = (
            session.get(Destination, transfer.destination_id)
            if transfer.destination_id is not None
            else None
        )
        if destination is None or not destination.notification:
            return
        data_file = session.get(DataFile, transfer.data_file_id)
        host = session.get(Host, transfer.host_id) if transfer.host_id is not None else None
        if data_file is None or host is None:
            return
        announce_delivered(
            session,
            doors=self.doors,
            transfer=transfer,
            data_file=data_file,
            destination=destination,
            location=remote_location(host.url, target),
        )


@dataclass
class _Earlier:
    """An unfinished upload an earlier start of a transfer left at the far end."""

    target: str
    # On another host than this start's: that host's fields of a SendRequest and its
    # credentials, to remove it there. None: on this start's host, to resume.
    elsewhere: tuple[dict[str, Any], dict[str, str]] | None = None


def _earlier_upload(
    session: Session, box: CredentialBox, transfer: DataTransfer, host: Host
) -> _Earlier | None:
    target = transfer.partial_target
    if not target:
        return None
    other = session.get(Host, transfer.host_id) if transfer.host_id is not None else None
    if transfer.host_id == host.id or (other is not None and other.url == host.url):
        return _Earlier(target)  # on this host, or on the same place under another name
    if other is None:
        return None
    try:
        credentials = box.open(other.credentials_encrypted)
    except CredentialError:
        return None
    fields = {
        "host_name": other.name,
        "host_url": other.url,
        "host_options": dict(other.options or {}),
        "target": target,
    }
    return _Earlier(target, (fields, credentials))


def _discard_quietly(request: SendRequest, credentials: dict[str, str]) -> None:
    with contextlib.suppress(Exception):
        discard_partial(request, credentials)


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
