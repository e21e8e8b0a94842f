"""The notification publisher: one long-running, heartbeating activity that publishes the
outbox's pending rows to their brokers with paho-mqtt, and marks them.

At least once, never lost: a row is marked published only after the broker acknowledged
it (PUBACK/PUBCOMP; for QoS 0, once written to the socket). A worker that dies between
the publish and the mark publishes the row again after the heartbeat timeout, with the
same message id (in the payload and, on MQTT 5, in the "id" user property): subscribers
drop the repeat. A broker that is away fails its rows, which are tried again with a
capped backoff; it delays notifications and loses none. Broker passwords are read here
(the embedded broker's from the credential key, another broker's from its destination)
and go nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import threading
import time
import uuid
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError
from sqlalchemy import Engine, delete, update
from sqlmodel import col, select
from temporalio import activity

from ecpds.activities.heartbeat import heartbeating
from ecpds.core.db import session_scope
from ecpds.core.models import Destination, Notification, utcnow
from ecpds.core.notifications import EMBEDDED, PUBLISHER_PURPOSE, PUBLISHER_USER, settings_of
from ecpds.core.secrets import CredentialBox, CredentialError
from ecpds.core.settings import Settings

log = logging.getLogger(__name__)

POLL = 0.1  # seconds between looks at the outbox unless it holds a full batch
BATCH = 500  # rows published between two marks
LANES = 16  # brokers published to at once, each in its thread
LANE_WAIT = 1.0  # seconds a look waits for its lanes before marking what they finished
HEARTBEAT_TIMEOUT = 30.0  # a worker silent this long is dead: another one publishes
RUN_FOR = 3600.0  # seconds one activity publishes before the workflow starts a fresh one
PRUNE_EVERY = 600.0  # seconds between deletions of the history older than the retention
CONNECT_WITHIN = 10.0  # seconds for a broker's CONNACK
ACK_WITHIN = 15.0  # seconds for the acknowledgements of one batch
MAX_BACKOFF = 30.0  # seconds: a broker back from a long absence is used within this
KEEPALIVE = 30
EXPIRED = "expired before it could be published"
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883, "ws": 80, "wss": 443}


def backoff(attempts: int) -> float:
    """Seconds before the next try of a row that failed `attempts` times: 0.5, 1, 2 … 30."""
    return min(MAX_BACKOFF, 0.5 * 2 ** min(attempts - 1, 16))


def _one_line(error: BaseException | str) -> str:
    text = error if isinstance(error, str) else str(error)
    return " ".join(text.split()) or type(error).__name__


def _utf8_text(content_type: str | None) -> bool:
    """Whether the payload is UTF-8 text (MQTT 5 PayloadFormatIndicator 1)."""
    if not content_type:
        return False
    kind = content_type.split(";")[0].strip().lower()
    return kind.startswith("text/") or kind.endswith("json") or kind.endswith("+json")


@dataclass(frozen=True)
class Login:
    """A broker and how to log in to it; `password` stays in this process."""

    url: str  # mqtt(s)/ws(s)://host:port[/path], no credentials
    protocol: str  # 3.1.1 or 5
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None  # TLS: the CA to check the broker with (default: the system's)
    insecure: bool = False  # TLS without checking the certificate


@dataclass
class NotificationOutput:
    """What one activity did (also its heartbeat)."""

    published: int = 0
    failed: int = 0
    expired: int = 0
    pruned: int = 0
    last_error: str | None = None


class Publisher:
    """A connected paho client on its own network thread, for one broker and login.

    It never reconnects by itself: a client that lost its broker is dropped, so no
    message left in its queue can be sent later behind the outbox's back.
    """

    def __init__(self, login: Login) -> None:
        parts = urlsplit(login.url)
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"broker {login.url!r}: use mqtt, mqtts, ws or wss://host:port")
        self.where = f"{scheme}://{parts.hostname}:{parts.port or DEFAULT_PORTS[scheme]}"
        self.v5 = login.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"ecpds-publisher-{uuid.uuid4().hex[:12]}",
            protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
            transport="websockets" if scheme.startswith("ws") else "tcp",
        )
        if scheme.startswith("ws"):
            client.ws_set_options(path=parts.path or "/mqtt")
        if scheme in ("mqtts", "wss"):
            try:
                context = ssl.create_default_context(cafile=login.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"{self.where}: CA file {login.ca_file}: {exc}") from None
            if login.insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            client.tls_set_context(context)
        if login.user:
            client.username_pw_set(login.user, login.password)
        client.max_inflight_messages_set(100)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self.client = client
        self.ready = threading.Event()
        self.refused: str | None = None
        self.lost = False
        self.failed_mids: dict[int, str] = {}  # MQTT 5 PUBACKs with a failure reason
        self.host, self.port = parts.hostname, parts.port or DEFAULT_PORTS[scheme]

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.refused = f"{self.where}: the broker refused the connection ({reason})"
        self.ready.set()

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self.lost = True
        self.ready.set()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        if getattr(reason, "is_failure", False):
            self.failed_mids[mid] = f"{self.where}: the broker refused the message ({reason})"

    def connect(self) -> None:
        """Connect and wait for the CONNACK; ConnectionError (one line) if that fails."""
        try:
            self.client.connect(self.host, self.port, keepalive=KEEPALIVE)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConnectionError(
                f"{self.where}: cannot reach the broker: {_one_line(exc)}"
            ) from None
        self.client.loop_start()
        if not self.ready.wait(CONNECT_WITHIN):
            self.close()
            raise ConnectionError(f"{self.where}: no answer to our connection")
        if self.refused or self.lost:
            self.close()
            raise ConnectionError(self.refused or f"{self.where}: the broker hung up")

    @property
    def usable(self) -> bool:
        return not self.lost and self.client.is_connected()

    def publish(self, row: Notification, now: datetime) -> mqtt.MQTTMessageInfo:
        properties = None
        if self.v5:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if row.expires is not None:
                left = (row.expires - now).total_seconds()
                properties.MessageExpiryInterval = max(1, math.ceil(left))
            if row.content_type:
                properties.ContentType = row.content_type
            if _utf8_text(row.content_type):
                properties.PayloadFormatIndicator = 1
            properties.UserProperty = [("id", row.message_id)]
        return self.client.publish(
            row.topic, row.payload, qos=row.qos, retain=row.retain, properties=properties
        )

    def close(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()


@dataclass
class Cycle:
    """What one look at the outbox did."""

    published: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)  # row id → one-line reason
    expired: list[int] = field(default_factory=list)

    @property
    def handled(self) -> int:
        return len(self.published) + len(self.failed) + len(self.expired)

    def merge(self, other: Cycle) -> None:
        self.published += other.published
        self.failed |= other.failed
        self.expired += other.expired


@dataclass
class Lane:
    """One broker's publishing, running in a thread: its future and its rows."""

    future: Future[Cycle]
    rows: list[int]


class NotificationActivities:
    """Built once per worker with the catalog, the credential key and the settings."""

    def __init__(self, engine: Engine, box: CredentialBox, settings: Settings) -> None:
        self.engine = engine
        self.box = box
        self.settings = settings
        # One lane per broker, publishing in its own thread: a broker that hangs holds up
        # its own rows only. A lane's rows are left out of the next looks until it ends.
        self._lanes: dict[str, Lane] = {}
        self._lane_pool = ThreadPoolExecutor(max_workers=LANES, thread_name_prefix="notify-lane")
        self._attempts: dict[int, int] = {}  # row id → attempts before, until marked

    # --- the outbox ------------------------------------------------------------------------

    def _due(self, now: datetime, busy: set[str]) -> list[Notification]:
        """The pending rows due now, oldest first (one query on the pending index), but
        those of the `busy` brokers, whose lanes still publish."""
        with session_scope(self.engine) as session:
            query = (
                select(Notification)
                # "= true", not "IS true": PostgreSQL uses ix_notification_pending for it.
                .where(col(Notification.pending) == True, Notification.next_attempt <= now)  # noqa: E712
            )
            if busy:
                query = query.where(col(Notification.broker).not_in(busy))
            rows = session.exec(query.order_by(col(Notification.id)).limit(BATCH)).all()
            for row in rows:
                session.expunge(row)
            return list(rows)

    def _mark(self, cycle: Cycle, now: datetime) -> None:
        """Record a cycle: the published rows in one UPDATE, the failures by reason."""
        if not cycle.handled:
            return
        attempts = {
            row_id: self._attempts.pop(row_id, 0)
            for row_id in (*cycle.published, *cycle.expired, *cycle.failed)
        }
        with session_scope(self.engine) as session:
            if cycle.published:
                session.execute(
                    update(Notification)
                    .where(col(Notification.id).in_(cycle.published))
                    .values(pending=False, published=now, last_error=None)
                )
            if cycle.expired:
                session.execute(
                    update(Notification)
                    .where(col(Notification.id).in_(cycle.expired))
                    .values(pending=False, last_error=EXPIRED)
                )
            groups: dict[tuple[str, int], list[int]] = defaultdict(list)
            for row_id, reason in cycle.failed.items():
                groups[(reason, attempts[row_id] + 1)].append(row_id)
            for (reason, tries), ids in groups.items():
                session.execute(
                    update(Notification)
                    .where(col(Notification.id).in_(ids))
                    .values(
                        attempts=tries,
                        next_attempt=now + timedelta(seconds=backoff(tries)),
                        last_error=reason[:1000],
                    )
                )

    def _prune(self) -> int:
        """Delete the history older than the retention; the rows deleted."""
        cutoff = utcnow() - timedelta(days=self.settings.notification_retention)
        with session_scope(self.engine) as session:
            result = session.execute(
                delete(Notification).where(
                    col(Notification.pending).is_(False), Notification.created < cutoff
                )
            )
            return int(getattr(result, "rowcount", 0) or 0)

    # --- brokers -----------------------------------------------------------------------------

    def _login(self, row: Notification) -> Login:
        """How to reach the row's broker; ValueError (one line) if its settings are bad."""
        if row.broker == EMBEDDED:
            return Login(
                self.settings.embedded_broker_url,
                row.protocol,
                PUBLISHER_USER,
                self.box.internal_password(PUBLISHER_PURPOSE),
            )
        user = password = ca_file = None
        insecure = False
        with session_scope(self.engine) as session:
            destination = session.exec(
                select(Destination).where(Destination.name == row.destination)
            ).first()
            if destination is not None:
                try:
                    settings = settings_of(destination.notification)
                    user, ca_file = settings.user or None, settings.ca_file
                    insecure = settings.insecure
                except ValidationError:
                    pass
                try:
                    sealed = self.box.open(destination.notification_password_encrypted)
                except CredentialError:
                    raise ValueError(
                        f"destination {row.destination}: its broker password cannot be "
                        "decrypted with this key"
                    ) from None
                password = sealed.get("password")
        return Login(row.broker, row.protocol, user, password, ca_file, insecure)

    # --- one cycle (blocking: runs in the activity's thread) --------------------------------

    def cycle(self, publishers: dict[Login, Publisher]) -> Cycle:
        """Publish what is due, each broker in its lane; mark what the lanes finished
        (within LANE_WAIT, or left from an earlier cycle). What it marked."""
        done = self._finished()
        now = utcnow()
        lanes: dict[str, dict[Login, list[Notification]]] = defaultdict(lambda: defaultdict(list))
        logins: dict[tuple[str, str, str], Login | str] = {}  # one look per destination
        for row in self._due(now, set(self._lanes)):
            assert row.id is not None
            self._attempts[row.id] = row.attempts
            if row.expires is not None and row.expires <= now:
                done.expired.append(row.id)
                continue
            key = (row.broker, row.protocol, row.destination)
            if key not in logins:
                try:
                    logins[key] = self._login(row)
                except ValueError as exc:
                    logins[key] = _one_line(exc)
            login = logins[key]
            if isinstance(login, str):
                done.failed[row.id] = login
            else:
                lanes[row.broker][login].append(row)
        for broker, batches in lanes.items():
            rows = [row.id for batch in batches.values() for row in batch if row.id is not None]
            future = self._lane_pool.submit(self._lane, publishers, batches, now)
            self._lanes[broker] = Lane(future, rows)
        if lanes:
            wait([lane.future for lane in self._lanes.values()], timeout=LANE_WAIT)
        done.merge(self._finished())
        self._mark(done, utcnow())
        return done

    def _lane(
        self,
        publishers: dict[Login, Publisher],
        batches: dict[Login, list[Notification]],
        now: datetime,
    ) -> Cycle:
        """One broker's rows, by login (runs in its lane's thread)."""
        done = Cycle()
        for login, batch in batches.items():
            self._publish(publishers, login, batch, now, done)
        return done

    def _finished(self) -> Cycle:
        """What the lanes that ended did; they are free for the next look."""
        done = Cycle()
        for broker, lane in list(self._lanes.items()):
            if not lane.future.done():
                continue
            del self._lanes[broker]
            error = lane.future.exception()
            if error is None:
                done.merge(lane.future.result())
            else:  # a fault of ours: the rows are tried again, and the reason kept
                log.error("notifications: publishing to %s failed", broker, exc_info=error)
                done.failed |= {row_id: f"publisher: {_one_line(error)}" for row_id in lane.rows}
        return done

    def drain(self, publishers: dict[Login, Publisher]) -> None:
        """At the end: wait for the lanes (bounded), mark what they did, close the clients."""
        wait([lane.future for lane in self._lanes.values()], timeout=CONNECT_WITHIN + ACK_WITHIN)
        self._mark(self._finished(), utcnow())
        for publisher in list(publishers.values()):
            publisher.close()

    def _publisher(self, publishers: dict[Login, Publisher], login: Login) -> Publisher:
        publisher = publishers.get(login)
        if publisher is not None and publisher.usable:
            return publisher
        if publisher is not None:
            publishers.pop(login)
            publisher.close()
        publisher = Publisher(login)
        publisher.connect()
        publishers[login] = publisher
        return publisher

    def _publish(
        self,
        publishers: dict[Login, Publisher],
        login: Login,
        batch: list[Notification],
        now: datetime,
        done: Cycle,
    ) -> None:
        try:
            publisher = self._publisher(publishers, login)
        except (ConnectionError, ValueError) as exc:
            for row in batch:
                assert row.id is not None
                done.failed[row.id] = _one_line(exc)
            return
        sent: list[tuple[Notification, mqtt.MQTTMessageInfo]] = []
        for row in batch:
            assert row.id is not None
            info = publisher.publish(row, now)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                done.failed[row.id] = f"{publisher.where}: {mqtt.error_string(info.rc)}"
                continue
            sent.append((row, info))
        deadline = time.monotonic() + ACK_WITHIN
        for row, info in sent:
            assert row.id is not None
            try:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                done.failed[row.id] = f"{publisher.where}: {_one_line(exc)}"
                continue
            if not info.is_published():
                done.failed[row.id] = f"{publisher.where}: no acknowledgement in {ACK_WITHIN:.0f} s"
            elif info.mid in publisher.failed_mids:
                done.failed[row.id] = publisher.failed_mids.pop(info.mid)
            else:
                done.published.append(row.id)
        if any(row.id in done.failed for row, _ in sent):
            # Its queue may still hold what we count as failed: drop it with the client.
            publishers.pop(login, None)
            publisher.close()

    # --- the activity ------------------------------------------------------------------------

    @activity.defn
    async def publish_notifications(self) -> NotificationOutput:
        """Publish the outbox for a while (RUN_FOR), looking every POLL when idle, or
        until its worker stops (the workflow's next run goes to another worker)."""
        output = NotificationOutput()
        publishers: dict[Login, Publisher] = {}
        # One thread: the paho clients and the catalog session are used from it alone.
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="notifications")
        started = time.monotonic()
        last_prune = 0.0
        try:
            while time.monotonic() - started < RUN_FOR and not activity.is_worker_shutdown():
                activity.heartbeat(output)
                if time.monotonic() - last_prune >= PRUNE_EVERY:
                    last_prune = time.monotonic()
                    output.pruned += await heartbeating(pool, self._prune)
                done = await heartbeating(pool, self.cycle, publishers)
                output.published += len(done.published)
                output.failed += len(done.failed)
                output.expired += len(done.expired)
                if done.failed:
                    reason = next(iter(done.failed.values()))
                    if reason != output.last_error:
                        log.warning("notifications: %d not published: %s", len(done.failed), reason)
                    output.last_error = reason
                if done.handled < BATCH:
                    # Not a full batch: let the rows of the next POLL gather, so a busy
                    # store pays one publisher transaction per POLL, not one per product.
                    await asyncio.sleep(POLL)
            return output
        finally:
            await asyncio.get_running_loop().run_in_executor(pool, self.drain, publishers)
            pool.shutdown(wait=False)
