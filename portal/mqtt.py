"""The embedded MQTT broker (amqtt, MQTT 3.1.1 only) that tells data users about new products.

Three doors: plain MQTT, MQTTS and MQTT over secure WebSocket, both with the portal's
certificate. Clients log in as catalog data users. A user may subscribe to the topic filters
in its `mqtt_topics` and to the topics of every destination it reaches (core.access, read at
login: a changed setting counts from the next connection); only admin users and the workers'
publisher login (PUBLISHER_USER) publish. Retained messages live in the catalog too, so a
portal restart keeps them. An MQTT 5 client is told "Unsupported Protocol Version".
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from amqtt.adapters import ReaderAdapter, WriterAdapter
from amqtt.broker import Broker, BrokerContext, RetainedApplicationMessage
from amqtt.contexts import Action, BaseContext
from amqtt.errors import BrokerError
from amqtt.plugins.base import BaseAuthPlugin, BasePlugin, BaseTopicPlugin
from amqtt.session import Session
from sqlalchemy import Engine, delete
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import col, select
from websockets.exceptions import ConnectionClosed

from ecpds.core import access
from ecpds.core.db import session_scope
from ecpds.core.errors import Unauthenticated
from ecpds.core.models import RetainedMessage, utcnow
from ecpds.core.notifications import PUBLISHER_PURPOSE, PUBLISHER_USER
from ecpds.core.secrets import CredentialBox, load_or_create_key
from ecpds.core.settings import Settings
from ecpds.portal.access import login_password
from ecpds.portal.base import Portal, PortalError, cannot_listen
from ecpds.portal.tls import ensure_certificate

log = logging.getLogger(__name__)

RETAINED_SWEEP = 600.0  # seconds between clearings of the retained messages past retention


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether `topic` (or, level by level, a narrower filter) falls under `topic_filter`."""
    wanted = topic.split("/")
    for index, level in enumerate(topic_filter.split("/")):
        if level == "#":
            return True
        if index >= len(wanted):
            return False
        if level == "+":
            if wanted[index] == "#":
                return False
            continue
        if level != wanted[index]:
            return False
    return len(wanted) == len(topic_filter.split("/"))


@dataclass(frozen=True)
class Grant:
    admin: bool
    topics: tuple[str, ...]

    def allows(self, topic: str, action: Action) -> bool:
        if self.admin:
            return True
        if action == Action.PUBLISH:
            return False
        return any(topic_matches(allowed, topic) for allowed in self.topics)


@dataclass
class Grants:
    """What each logged-in user may do, read from the catalog when it connects."""

    engine: Engine
    publisher_password: str  # the workers' login, PUBLISHER_USER: publishes anywhere
    by_user: dict[str, Grant] = field(default_factory=dict)

    def login(self, name: str, password: str) -> Grant | None:
        """Log in through the access layer; topics of every destination it reaches are granted."""
        if name == PUBLISHER_USER:  # reserved: never looked up among the data users
            if not hmac.compare_digest(password.encode(), self.publisher_password.encode()):
                return None
            grant = Grant(admin=True, topics=())
            self.by_user[name] = grant
            return grant
        try:
            principal = login_password(self.engine, name, password)
        except Unauthenticated:
            return None
        with session_scope(self.engine) as session:
            topics = access.topic_filters(session, principal)
        grant = Grant(admin=principal.admin, topics=topics)
        self.by_user[name] = grant
        return grant


class CatalogAuthPlugin(BaseAuthPlugin):
    """Accepts catalog data users with their portal password; refuses anonymous clients."""

    @dataclass
    class Config:
        grants: Any = None

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self.grants: Grants = self.config.grants

    async def authenticate(self, *, session: Session) -> bool | None:
        if not session.username or not session.password:
            return False
        grant = await asyncio.to_thread(self.grants.login, session.username, session.password)
        if grant is None:
            log.info("MQTT login refused for %r", session.username)
        return grant is not None


class CatalogTopicPlugin(BaseTopicPlugin):
    """Subscriptions and deliveries only within a user's topics; publishing for admins."""

    @dataclass
    class Config:
        grants: Any = None

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self.grants: Grants = self.config.grants

    async def topic_filtering(
        self,
        *,
        session: Session | None = None,
        topic: str | None = None,
        action: Action | None = None,
    ) -> bool | None:
        if session is None or topic is None or action is None:
            return False
        grant = self.grants.by_user.get(session.username or "")
        return grant is not None and grant.allows(topic, action)


MQTT_311 = 4  # the protocol level of MQTT 3.1.1 in CONNECT, the only one amqtt speaks
# CONNACK refusing the protocol version, each in the client's own version's words.
_REFUSALS = {5: bytes([0x20, 0x03, 0x00, 0x84, 0x00]), 3: bytes([0x20, 0x02, 0x00, 0x01])}


class _Replay(ReaderAdapter):
    """A reader that first hands back the bytes already read from it."""

    def __init__(self, head: bytes, reader: ReaderAdapter) -> None:
        self.head = head
        self.reader = reader

    async def read(self, n: int = -1) -> bytes:
        if not self.head:
            return await self.reader.read(n)
        if 0 <= n < len(self.head):
            given, self.head = self.head[:n], self.head[n:]
            return given
        given, self.head = self.head, b""
        return given + (await self.reader.read(n - len(given)) if n > len(given) else b"")

    def feed_eof(self) -> None:
        self.reader.feed_eof()


async def _connect_head(reader: ReaderAdapter) -> tuple[bytes, int | None]:
    """The first bytes of a CONNECT, up to its protocol level (None: not a CONNECT)."""
    head = await reader.read(1)
    if head != b"\x10":
        return head, None
    for _ in range(4):  # the remaining length, a variable byte integer
        head += await reader.read(1)
        if not head[-1] & 0x80:
            break
    size = await reader.read(2)
    head += size
    length = int.from_bytes(size, "big")
    if length > 6:  # "MQTT" or, in MQTT 3.1, "MQIsdp"
        return head, None
    head += await reader.read(length) + await reader.read(1)
    return head, head[-1]


class _Broker(Broker):
    """amqtt's broker, with a clear refusal of other MQTT versions and no retained leak."""

    async def _client_connected(
        self, listener_name: str, reader: ReaderAdapter, writer: WriterAdapter
    ) -> None:
        # amqtt cannot parse an MQTT 5 CONNECT and leaves the client waiting: answer first.
        try:
            head, level = await _connect_head(reader)
        except (asyncio.IncompleteReadError, OSError, ConnectionClosed):
            await writer.close()
            return
        if level is not None and level != MQTT_311:
            log.info("MQTT: protocol level %d refused, the embedded broker speaks 3.1.1", level)
            writer.write(_REFUSALS.get(level, _REFUSALS[3]))
            with contextlib.suppress(OSError, ConnectionClosed):
                await writer.drain()
            await writer.close()
            return
        await super()._client_connected(listener_name, _Replay(head, reader), writer)

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        # amqtt offers a connecting client the retained messages of every filter that any
        # client holds (without the topic check): only the session's own filters count.
        holders = self._subscriptions.get(subscription[0], [])
        if any(holder.client_id == session.client_id for holder, _ in holders):
            await super()._publish_retained_messages_for_subscription(subscription, session)


@dataclass(frozen=True)
class Listener:
    """One door of the broker: plain MQTT, MQTT over TLS, MQTT over secure WebSocket."""

    name: str  # as errors and `ecpds up` say it
    kind: str  # amqtt's listener type: tcp or ws
    port: int
    tls: bool

    @property
    def key(self) -> str:
        # amqtt needs a listener called "default" (the others take its unset options)
        return "default" if self.name == "MQTT" else self.name


def listeners(settings: Settings) -> tuple[Listener, ...]:
    return (
        Listener("MQTT", "tcp", settings.mqtt_port, tls=False),
        Listener("MQTTS", "tcp", settings.mqtts_port, tls=True),
        Listener("MQTT WebSocket", "ws", settings.mqtt_ws_port, tls=True),
    )


@dataclass
class RetainedStore:
    """The broker's retained messages in the catalog (`RetainedMessage`), so they outlive it.

    The broker tells of every change; the latest per topic waits in `pending` until one
    writer task puts it in the catalog, so a burst of retained publishes costs few writes.
    A retained message lives `keep` (the notification retention): each product has its
    topic, so without an end they would pile up for ever.
    """

    engine: Engine
    keep: timedelta
    pending: dict[str, tuple[bytes, int] | None] = field(default_factory=dict)  # None: cleared
    since: dict[str, datetime] = field(default_factory=dict)  # topic → when it was retained
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def load(self) -> list[RetainedMessage]:
        """The retained messages still within `keep`; the older ones are cleared."""
        with session_scope(self.engine) as session:
            rows = session.exec(select(RetainedMessage)).all()
            session.expunge_all()
        cutoff = utcnow() - self.keep
        kept = []
        for row in rows:
            if row.updated < cutoff:
                self.note(row.topic, None, None)
            else:
                self.since[row.topic] = row.updated
                kept.append(row)
        return kept

    def note(self, topic: str, data: bytes | bytearray | None, qos: int | None) -> None:
        self.pending[topic] = (bytes(data), qos or 0) if data else None
        if data:
            self.since[topic] = utcnow()
        else:
            self.since.pop(topic, None)
        self._wake.set()

    def expire(self, retained: dict[str, Any]) -> int:
        """Clear the broker's `retained` messages older than `keep`; how many."""
        cutoff = utcnow() - self.keep
        old = [topic for topic, when in self.since.items() if when < cutoff]
        for topic in old:
            retained.pop(topic, None)
            self.note(topic, None, None)
        return len(old)

    def _write(self, batch: dict[str, tuple[bytes, int] | None]) -> None:
        with session_scope(self.engine) as session:
            cleared = [topic for topic, kept in batch.items() if kept is None]
            if cleared:
                session.exec(delete(RetainedMessage).where(col(RetainedMessage.topic).in_(cleared)))
            for topic, kept in batch.items():
                if kept is not None:
                    payload, qos = kept
                    session.merge(
                        RetainedMessage(topic=topic, payload=payload, qos=qos, updated=utcnow())
                    )

    async def flush(self) -> None:
        """Write what is pending; on failure keep it (unless changed since) and say why."""
        batch, self.pending = self.pending, {}
        if not batch:
            return
        try:
            await asyncio.to_thread(self._write, batch)
        except SQLAlchemyError as exc:
            reason = (str(getattr(exc, "orig", None) or exc).splitlines() or [type(exc).__name__])[
                0
            ]
            log.warning("retained MQTT messages not saved yet: %s", reason)
            self.pending = {**batch, **self.pending}
            raise

    async def run(self) -> None:
        """Write changes as they come until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except SQLAlchemyError:
                await asyncio.sleep(1)  # the catalog is away: try again soon
                self._wake.set()


class RetainedPlugin(BasePlugin[BrokerContext]):
    """Loads the catalog's retained messages before the broker listens; records changes."""

    @dataclass
    class Config:
        store: Any = None

    def __init__(self, context: BrokerContext) -> None:
        super().__init__(context)
        self.store: RetainedStore = self.config.store

    async def on_broker_pre_start(self) -> None:
        kept = self.context.retained_messages
        for row in await asyncio.to_thread(self.store.load):
            kept[row.topic] = RetainedApplicationMessage(None, row.topic, row.payload, row.qos)
        if kept:
            log.info("MQTT: %d retained messages restored", len(kept))

    async def on_broker_retained_message(
        self, *, client_id: str | None, retained_message: RetainedApplicationMessage
    ) -> None:
        # With a client id, the message waits for that offline session: not a retained topic.
        if client_id is None and retained_message.topic is not None:
            self.store.note(retained_message.topic, retained_message.data, retained_message.qos)


def broker_config(
    settings: Settings,
    grants: Grants,
    retained: RetainedStore,
    certificate: tuple[Path, Path],
) -> dict[str, Any]:
    cert, key = certificate
    doors: dict[str, Any] = {}
    for door in listeners(settings):
        doors[door.key] = {"type": door.kind, "bind": f"{settings.bind}:{door.port}"}
        if door.tls:
            doors[door.key] |= {"ssl": True, "certfile": str(cert), "keyfile": str(key)}
    return {
        "listeners": doors,
        "plugins": {
            "ecpds.portal.mqtt.CatalogAuthPlugin": {"grants": grants},
            "ecpds.portal.mqtt.CatalogTopicPlugin": {"grants": grants},
            "ecpds.portal.mqtt.RetainedPlugin": {"store": retained},
        },
    }


def _listening_failed(broker: Broker, settings: Settings, exc: BaseException) -> PortalError:
    # amqtt opens its listeners in order and keeps those that opened: the first missing failed.
    reason = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
    for door in listeners(settings):
        if door.key not in broker._servers:
            return cannot_listen(door.name, settings.bind, door.port, reason)
    return cannot_listen("MQTT", settings.bind, settings.mqtt_port, reason)


async def _expire_retained(broker: _Broker, retained: RetainedStore) -> None:
    while True:
        await asyncio.sleep(RETAINED_SWEEP)
        if cleared := retained.expire(broker._retained_messages):
            log.info("MQTT: %d retained messages past the retention cleared", cleared)


async def run_broker(
    settings: Settings, engine: Engine, stop: asyncio.Event, box: CredentialBox | None = None
) -> None:
    """Run the broker (MQTT, MQTTS, MQTT over wss, all MQTT 3.1.1) until `stop` is set.

    `box` (default: the one of settings.key_file) derives the workers' publisher password.
    """
    box = box or CredentialBox(load_or_create_key(settings.key_file))
    grants = Grants(engine, publisher_password=box.internal_password(PUBLISHER_PURPOSE))
    retained = RetainedStore(engine, timedelta(days=settings.notification_retention))
    try:
        certificate = await asyncio.to_thread(ensure_certificate, settings)
    except (FileNotFoundError, ValueError) as exc:
        raise PortalError(f"MQTTS cannot start: {exc}") from None
    broker = _Broker(broker_config(settings, grants, retained, certificate))
    try:
        await broker.start()
    except (BrokerError, OSError) as exc:
        for server in broker._servers.values():  # a failed start leaves the others open
            await server.close_instance()
        raise _listening_failed(broker, settings, exc) from None
    writer = asyncio.create_task(retained.run())
    sweeper = asyncio.create_task(_expire_retained(broker, retained))
    try:
        await stop.wait()
    finally:
        await broker.shutdown()
        for task in (writer, sweeper):
            task.cancel()
        await asyncio.gather(writer, sweeper, return_exceptions=True)
        with contextlib.suppress(SQLAlchemyError):  # logged: nothing more to do on the way out
            await retained.flush()


async def serve_mqtt(portal: Portal, stop: asyncio.Event) -> None:
    """The portal's MQTT server (one of ecpds.portal.server.SERVERS)."""
    await run_broker(portal.settings, portal.engine, stop, portal.box)
