"""The one fetch path: RetrievalBatchWorkflow fetching registered sources into the store, as
an acquisition run awaits it (real Temporal, worker, catalog, store and OpenSSH server)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import socket
import threading
import uuid

from sqlmodel import Session, select
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle

from ecpds.core.devserver import free_port
from ecpds.core.engine import RETRIEVAL_BATCH_WORKFLOW, RetrievalBatchInput, workflow_queue
from ecpds.core.models import DataTransfer, HostKind, TransferStatus
from ecpds.core.push import PushOptions
from ecpds.core.retrieval import SourceSpec, register_sources
from ecpds.workflows.retrieval import RetrievalBatchOutput, RetrievalBatchWorkflow

from .conftest import System


def _register(system: System, destination: str, urls: list[str], **meta: str) -> list[str]:
    registered, new = register_sources(
        system.engine,
        system.box,
        destination=destination,
        sources=[SourceSpec(u) for u in urls],
        options=PushOptions(metadata=meta),
    )
    assert new
    return [r.id for r in registered]


def _fetch(system: System, ids: list[str], destination: str) -> RetrievalBatchOutput:
    """Run the batch to its end, as a discovery run awaits it as a child."""
    return system.loop.run(
        system.client.execute_workflow(
            RetrievalBatchWorkflow.run,
            RetrievalBatchInput(ids, destination),
            id=f"test-retrievals-{uuid.uuid4().hex}",
            task_queue=workflow_queue(system.settings.task_queue, RETRIEVAL_BATCH_WORKFLOW),
        )
    )


def _statuses(system: System, data_file_id: str) -> list[tuple[TransferStatus, str | None]]:
    with Session(system.engine) as session:
        return [
            (t.status, t.last_error)
            for t in session.exec(
                select(DataTransfer).where(DataTransfer.data_file_id == data_file_id)
            ).all()
        ]


def test_a_batch_returns_once_its_files_are_in_or_failed(system: System, sshd) -> None:
    system.destination("acq")
    folder = sshd.folder(f"batch-{system.settings.task_queue}")
    contents = [os.urandom(64 * 1024 + i) for i in range(29)]
    contents.append(os.urandom(5 * 2**20 + 123))  # many reads in flight, a short last one
    for i, data in enumerate(contents):
        (folder / f"f{i:02d}.bin").write_bytes(data)
    system.host(
        "provider",
        sshd.url(folder),
        kind=HostKind.ACQUISITION,
        max_connections=3,
        credentials={"private_key": sshd.private_key},
    )
    urls = [sshd.url(folder / f"f{i:02d}.bin") for i in range(30)]
    ids = _register(system, "acq", [*urls, sshd.url(folder / "missing.bin")])
    # What an attempt that died between the store and the catalog leaves: replaced.
    system.store.write(ids[0], [b"left by an earlier attempt"])

    result = _fetch(system, ids, "acq")

    assert (result.fetched, result.failed) == (30, 1)
    assert result.bytes == sum(map(len, contents))
    [error] = result.errors
    assert error.data_file_id == ids[-1] and "no such file" in error.error
    assert "\n" not in error.error
    for data_file_id, data in zip(ids, contents, strict=False):
        data_file = system.data_file(data_file_id)
        assert data_file.arrived is not None and data_file.md5 == hashlib.md5(data).hexdigest()
        assert b"".join(system.store.iter_bytes(data_file_id, adler32=data_file.adler32)) == data
    [(status, last_error)] = _statuses(system, ids[-1])
    assert status == TransferStatus.FAIL and last_error == error.error

    # Run again (a retried parent): nothing is fetched twice, the counts are the same.
    again = _fetch(system, ids, "acq")
    assert (again.fetched, again.failed) == (30, 1)


def test_a_wrong_wis2_integrity_value_is_refused_and_nothing_stored(system: System, sshd) -> None:
    system.destination("wis2")
    folder = sshd.folder(f"wis2-{system.settings.task_queue}")
    data = os.urandom(100_000)
    (folder / "obs.bufr").write_bytes(data)
    system.host(
        "gts",
        sshd.url(folder),
        kind=HostKind.ACQUISITION,
        credentials={"private_key": sshd.private_key},
    )
    url = sshd.url(folder / "obs.bufr")
    right = base64.b64encode(hashlib.sha512(data).digest()).decode()
    wrong = base64.b64encode(hashlib.sha512(b"other bytes").digest()).decode()
    [good] = _register(system, "wis2", [url], integrity=f"sha512:{right}")
    [bad] = _register(system, "wis2", [url], integrity=f"sha512:{wrong}")
    [odd] = _register(system, "wis2", [url], integrity=f"crc32:{right}")

    result = _fetch(system, [good, bad, odd], "wis2")

    assert (result.fetched, result.failed) == (1, 2)
    assert system.data_file(good).arrived is not None
    errors = {e.data_file_id: e.error for e in result.errors}
    assert errors[bad] == (
        f"integrity check failed: sha512 of the fetched bytes is {right}, "
        f"the notification said {wrong}"
    )
    assert errors[odd].startswith("integrity method 'crc32' is not supported")
    for refused in (bad, odd):
        assert system.data_file(refused).arrived is None
        assert not system.store.exists(refused)
        assert [s for s, _ in _statuses(system, refused)] == [TransferStatus.FAIL]
    assert not system.store.partials()


def _forward(
    port: int, to: int, *, cut_first_after: int = 0
) -> tuple[socket.socket, list[socket.socket]]:
    """A TCP forwarder from `port` to `to` on loopback (close the socket to stop it) and
    the connections it took; with `cut_first_after`, the first is cut once that many
    bytes came back."""
    server = socket.create_server(("127.0.0.1", port))
    taken: list[socket.socket] = []

    def pump(a: socket.socket, b: socket.socket, cut: int) -> None:
        passed = 0
        try:
            while data := a.recv(1 << 16):
                b.sendall(data)
                passed += len(data)
                if cut and passed > cut:
                    break
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def accept() -> None:
        first = True
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            taken.append(client)
            upstream = socket.create_connection(("127.0.0.1", to))
            cut, first = (cut_first_after if first else 0), False
            threading.Thread(target=pump, args=(client, upstream, 0), daemon=True).start()
            threading.Thread(target=pump, args=(upstream, client, cut), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return server, taken


async def _backed_off(handle: WorkflowHandle) -> bool:
    """Whether the batch has waited before trying a file again."""
    history = await handle.fetch_history()
    return any(e.event_type == EventType.EVENT_TYPE_TIMER_STARTED for e in history.events)


def test_a_host_down_at_first_is_retried_after_a_backoff(system: System, sshd) -> None:
    system.destination("later")
    folder = sshd.folder(f"later-{system.settings.task_queue}")
    data = os.urandom(70_000)
    (folder / "late.bin").write_bytes(data)
    port = free_port()  # nothing listens there yet: connection refused, a retryable error
    base = f"sftp://{sshd.key_user}@127.0.0.1:{port}{folder}"
    system.host(
        "flaky",
        base,
        kind=HostKind.ACQUISITION,
        credentials={"private_key": sshd.private_key},
    )
    [data_file_id] = _register(system, "later", [f"{base}/late.bin"])

    handle = system.loop.run(
        system.client.start_workflow(
            RetrievalBatchWorkflow.run,
            RetrievalBatchInput([data_file_id], "later"),
            id=f"test-retrievals-{uuid.uuid4().hex}",
            task_queue=workflow_queue(system.settings.task_queue, RETRIEVAL_BATCH_WORKFLOW),
        )
    )
    system.until(lambda: system.loop.run(_backed_off(handle)), "the first attempt's backoff")
    forwarder, _ = _forward(port, sshd.port)  # the host is back
    try:
        result = system.loop.run(handle.result())
    finally:
        forwarder.close()
    assert (result.fetched, result.failed) == (1, 0)
    data_file = system.data_file(data_file_id)
    assert data_file.md5 == hashlib.md5(data).hexdigest()


def test_a_read_cut_off_goes_on_where_it_stopped(system: System, sshd) -> None:
    """Resumed at its offset on a new connection, within the same attempt (no backoff)."""
    system.destination("cut")
    folder = sshd.folder(f"cut-{system.settings.task_queue}")
    data = os.urandom(8 * 2**20 + 5)
    (folder / "big.grib").write_bytes(data)
    port = free_port()
    forwarder, taken = _forward(port, sshd.port, cut_first_after=3 * 2**20)
    base = f"sftp://{sshd.key_user}@127.0.0.1:{port}{folder}"
    system.host(
        "cutting", base, kind=HostKind.ACQUISITION, credentials={"private_key": sshd.private_key}
    )
    [data_file_id] = _register(system, "cut", [f"{base}/big.grib"])
    try:
        handle = system.loop.run(
            system.client.start_workflow(
                RetrievalBatchWorkflow.run,
                RetrievalBatchInput([data_file_id], "cut"),
                id=f"test-retrievals-{uuid.uuid4().hex}",
                task_queue=workflow_queue(system.settings.task_queue, RETRIEVAL_BATCH_WORKFLOW),
            )
        )
        result = system.loop.run(handle.result())
    finally:
        forwarder.close()
    assert (result.fetched, result.failed) == (1, 0)
    assert system.data_file(data_file_id).md5 == hashlib.md5(data).hexdigest()
    assert not system.loop.run(_backed_off(handle))
    assert len(taken) == 2  # the one cut, and the one that read the rest
