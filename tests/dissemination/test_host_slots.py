"""A host's max_connections across destinations: two destinations pushing at once to one
host never hold more than its limit open, and a dead worker's slot stops counting."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import Engine, update
from sqlmodel import Session, col

from ecpds.core import catalog, host_slots
from ecpds.core.models import Host, HostCreate, HostSlot
from ecpds.core.secrets import CredentialBox

from .conftest import Dissemination

HOLD = 0.3  # seconds each upload stays open at the far end


class CountingServer(ThreadingHTTPServer):
    """An HTTP upload server that counts the uploads it has open at once."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Uploads)
        self.lock = threading.Lock()
        self.open = 0
        self.peak = 0
        self.sizes: dict[str, int] = {}


class Uploads(BaseHTTPRequestHandler):
    server: CountingServer

    def log_message(self, *args: object) -> None:
        pass

    def do_PUT(self) -> None:
        with self.server.lock:
            self.server.open += 1
            self.server.peak = max(self.server.peak, self.server.open)
        try:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            time.sleep(HOLD)
            self.server.sizes[self.path] = len(body)
        finally:
            with self.server.lock:
                self.server.open -= 1
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self) -> None:
        size = self.server.sizes.get(self.path)
        self.send_response(404 if size is None else 200)
        self.send_header("Content-Length", str(size or 0))
        self.end_headers()

    def do_DELETE(self) -> None:
        self.server.sizes.pop(self.path, None)
        self.send_response(204)
        self.end_headers()


@pytest.fixture
def counting_server() -> Iterator[CountingServer]:
    server = CountingServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


async def test_two_destinations_keep_to_the_shared_hosts_limit(
    dissemination: Dissemination, counting_server: CountingServer
) -> None:
    env = dissemination
    host = env.name("shared")
    port = counting_server.server_address[1]
    env.add_host(host, f"http://127.0.0.1:{port}/in", max_connections=2, retry_count=0)
    first, second = env.name("first"), env.name("second")
    for destination in (first, second):
        env.add_destination(destination, [host], max_connections=4)
    ids = []
    for i in range(6):
        for destination in (first, second):
            ids += await env.put(destination, f"{destination}-{i}.bin", b"x" * (1000 + i))
    done = await env.wait_for(ids, "DONE", timeout=120)
    assert len(done) == 12 and len(counting_server.sizes) == 12
    # Each scheduler alone would open two (the host's limit among its own): four in all.
    assert counting_server.peak == 2
    with Session(env.engine) as session:
        host_id = session.query(Host.id).filter(col(Host.name) == host).scalar()
    assert host_slots.in_use(env.engine, host_id=host_id) == 0  # every slot given back


def _host(engine: Engine, name: str, limit: int) -> int:
    box = CredentialBox(Fernet.generate_key())
    with Session(engine) as session:
        made = catalog.create_host(
            session, box=box, data=HostCreate(name=name, url="file:///tmp", max_connections=limit)
        )
        session.commit()
        assert made.id is not None
        return made.id


def test_takers_racing_for_slots_never_exceed_the_limit(engine: Engine) -> None:
    host_id = _host(engine, "raced", 3)
    with ThreadPoolExecutor(8) as pool:
        taken = list(
            pool.map(
                lambda tid: host_slots.take(engine, host_id=host_id, transfer_id=tid, limit=3),
                range(40),
            )
        )
    assert sum(1 for t in taken if t is not None) == 3
    assert host_slots.in_use(engine, host_id=host_id) == 3
    # Taking it again for a transfer that holds one (a retried attempt) keeps the count.
    holder = next(tid for tid, t in enumerate(taken) if t is not None)
    assert host_slots.take(engine, host_id=host_id, transfer_id=holder, limit=3) == 3
    host_slots.release(engine, host_id=host_id, transfer_id=holder)
    assert host_slots.take(engine, host_id=host_id, transfer_id=99, limit=3) == 3


def test_a_dead_workers_slot_stops_counting_after_its_lease(engine: Engine) -> None:
    host_id = _host(engine, "lease", 1)
    assert host_slots.take(engine, host_id=host_id, transfer_id=1, limit=1) == 1
    assert host_slots.take(engine, host_id=host_id, transfer_id=2, limit=1) is None
    # What a worker killed mid-send leaves: a slot nobody renews. Once its lease has run
    # out, it no longer counts.
    lapsed = datetime.now(UTC) - timedelta(seconds=host_slots.LEASE + 1)
    with Session(engine) as session:
        session.execute(update(HostSlot).values(renewed=lapsed))
        session.commit()
    assert host_slots.take(engine, host_id=host_id, transfer_id=2, limit=1) == 1
