"""The MQTT subscription of an acquisition host: a persistent session on the provider's
broker, held by one long-running, heartbeating activity; each message becomes a fetch.

A message is acknowledged only once its file is registered in the catalog, so a worker
that dies loses nothing: Temporal runs the activity again elsewhere, the same client id
finds its session on the broker, and the broker replays what was not acknowledged. The
broker password is read here, from the host's credentials, and goes nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import ssl
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlmodel import Session
from temporalio import activity
from temporalio.exceptions import ApplicationError

from ecpds.core import catalog
from ecpds.core.acquisition import AcquisitionSettings, MqttTrigger, acquisition_hosts
from ecpds.core.db import session_scope
from ecpds.core.dispatch import SWEEP_LATER, TemporalDispatcher, best_effort
from ecpds.core.engine import SubscriptionInput
from ecpds.core.models import Host
from ecpds.core.push import IngestError
from ecpds.core.retrieval import SourceSpec, register_new
from ecpds.core.secrets import CredentialBox
from ecpds.core.wis2 import NotificationError, check_fields, parse_message

log = logging.getLogger(__name__)

HEARTBEAT_EVERY = 1.0  # seconds between heartbeats (and checks for new messages)
HEARTBEAT_TIMEOUT = 20.0  # a worker silent this long is dead: the session moves on
SESSION = 3600.0  # seconds one activity holds the session before the workflow renews it
SETTINGS_EVERY = 15.0  # seconds between looks at the host's settings
CONNECT_WITHIN = 30.0  # seconds for the broker's answer to our connect
KEEPALIVE = 30
DOWN_FOR = 60.0  # seconds without the broker before the session fails (and is retried)
BATCH = 200  # messages registered between two looks at the session
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


def mqtt_trigger_of(host: Host) -> MqttTrigger | None:
    """The host's MQTT trigger if its acquisition is triggered by MQTT, else None."""
    if host.acquisition is None:
        return None
    settings = AcquisitionSettings.model_validate(host.acquisition)
    return settings.mqtt if settings.trigger == "mqtt" else None


def mqtt_subscriptions(session: Session) -> list[tuple[str, str]]:
    """(destination, host) of every active acquisition host triggered by MQTT."""
    found = []
    for host, destination in acquisition_hosts(session, trigger="mqtt"):
        try:
            trigger = mqtt_trigger_of(host)
        except ValidationError:
            log.warning("host %s: its MQTT trigger settings are not valid", host.name)
            continue
        if trigger is not None:
            found.append((destination.name, host.name))
    return found


@dataclass
class Broker:
    """Where and how to log in to the host's broker; `password` stays in this process."""

    scheme: str
    host: str
    port: int
    user: str | None
    password: str | None = field(repr=False)
    trigger: MqttTrigger
    client_id: str

    @property
    def where(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def broker_of(trigger: MqttTrigger, password: str | None, client_id: str) -> Broker:
    parts = urlsplit(trigger.url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"MQTT URL {trigger.url!r}: the scheme must be mqtt or mqtts")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise ValueError(f"MQTT URL {trigger.url!r}: the port is not a number") from None
    if not parts.hostname:
        raise ValueError(f"MQTT URL {trigger.url!r} names no broker")
    user = unquote(parts.username) if parts.username else None
    if password and not user:
        raise ValueError(f"MQTT URL {trigger.url!r}: a password needs a user (mqtt://user@host)")
    check_fields(trigger.fields)
    if not trigger.topics:
        raise ValueError("the MQTT trigger has no topic filters")
    if trigger.qos not in (0, 1, 2):
        raise ValueError(f"MQTT qos {trigger.qos} must be 0, 1 or 2")
    return Broker(scheme, parts.hostname, port, user, password, trigger, client_id)


@dataclass
class SubscriptionOutput:
    """What one session did; `stop` when the host no longer subscribes."""

    stop: bool = False
    reason: str = ""
    received: int = 0
    registered: int = 0
    duplicates: int = 0
    skipped: int = 0  # deletions: nothing to fetch
    refused: int = 0
    last_refused: str | None = None  # "<topic>: <one-line reason>"


@dataclass
class Message:
    topic: str
    payload: bytes
    mid: int
    qos: int


@dataclass
class Registration:
    """What one batch of messages became: the new files, and the counts."""

    new_ids: list[str] = field(default_factory=list)
    duplicates: int = 0
    skipped: int = 0
    refused: list[str] = field(default_factory=list)


class Retrievals:
    """Starts the retrievals of newly registered files in the background, so that the
    next messages are registered meanwhile; what cannot start now the wake sweep starts."""

    def __init__(self, dispatcher: TemporalDispatcher, destination: str, where: str) -> None:
        self.dispatcher = dispatcher
        self.destination = destination
        self.where = where
        self.ids: list[str] = []
        self.wake = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    def add(self, ids: list[str]) -> None:
        self.ids.extend(ids)
        self.wake.set()

    async def _start(self) -> None:
        ids, self.ids = self.ids, []
        if ids:
            await best_effort(
                self.dispatcher.retrieve(ids, self.destination),
                what=f"{self.where}: starting {len(ids)} retrievals",
                later=SWEEP_LATER,
            )

    async def _run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            await self._start()

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self._start()


class MqttSession:
    """A paho client on its own network thread; messages are handed to an asyncio queue."""

    def __init__(self, broker: Broker, loop: asyncio.AbstractEventLoop) -> None:
        self.broker = broker
        self.loop = loop
        self.messages: asyncio.Queue[Message] = asyncio.Queue()
        # Settled with None once the broker has granted the subscriptions, else the reason.
        self.connected: asyncio.Future[str | None] = loop.create_future()
        trigger = broker.trigger
        self.v5 = trigger.version == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=broker.client_id,
            protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
            clean_session=None if self.v5 else False,
            manual_ack=True,
        )
        if broker.user:
            client.username_pw_set(broker.user, broker.password)
        if broker.scheme == "mqtts":
            context = ssl.create_default_context(cafile=trigger.ca_file)
            if trigger.insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            client.tls_set_context(context)
        client.reconnect_delay_set(1, 30)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        self.client = client
        # Set while the network thread reconnects: a broker away too long fails the session.
        self.down_since: float | None = None
        self.down_reason = ""

    def _settle(self, result: str | None) -> None:
        if not self.connected.done():
            self.connected.set_result(result)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            message = f"{self.broker.where}: the broker refused the connection ({reason})"
            self.down_reason = message
            self.loop.call_soon_threadsafe(self._settle, message)
            log.warning("%s", message)
            return
        self.down_since = None
        qos = self.broker.trigger.qos
        client.subscribe([(topic, qos) for topic in self.broker.trigger.topics])

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        topics = self.broker.trigger.topics
        refused = [(t, r) for t, r in zip(topics, reasons, strict=False) if r.is_failure]
        message = None
        if refused:
            topic, reason = refused[0]
            message = (
                f"{self.broker.where}: the broker refused the subscription to {topic!r} ({reason})"
            )
            log.warning("%s", message)
        self.loop.call_soon_threadsafe(self._settle, message)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        item = Message(message.topic, bytes(message.payload), message.mid, message.qos)
        self.loop.call_soon_threadsafe(self.messages.put_nowait, item)

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            self.down_reason = f"{self.broker.where}: disconnected ({reason})"
            if self.down_since is None:
                self.down_since = time.monotonic()
            log.warning("%s; reconnecting", self.down_reason)

    def connect(self) -> None:
        """Open the session (blocking); raises OSError/ssl.SSLError if the broker is away."""
        trigger = self.broker.trigger
        if self.v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = trigger.session_expiry
            self.client.connect(
                self.broker.host,
                self.broker.port,
                keepalive=KEEPALIVE,
                clean_start=False,
                properties=properties,
            )
        else:
            self.client.connect(self.broker.host, self.broker.port, keepalive=KEEPALIVE)
        self.client.loop_start()

    def ack(self, message: Message) -> None:
        if message.qos > 0:
            self.client.ack(message.mid, message.qos)

    def close(self) -> None:
        """Leave the session on the broker (it keeps what we did not acknowledge)."""
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


class SubscriptionActivities:
    """Built once per worker with the catalog and the credential key."""

    def __init__(self, engine: Engine, box: CredentialBox, task_queue: str = "") -> None:
        self.engine = engine
        self.box = box
        self.task_queue = task_queue

    # --- the host's settings ----------------------------------------------------------------

    def _broker(self, request: SubscriptionInput) -> Broker | None:
        """The host's broker, or None if the host no longer subscribes for the destination."""
        with session_scope(self.engine) as session:
            if (request.destination, request.host) not in set(mqtt_subscriptions(session)):
                return None
            host = catalog.get_host(session, name=request.host)
            trigger = mqtt_trigger_of(host)
            assert trigger is not None
            password = catalog.host_credentials(session, box=self.box, name=host.name).get(
                "mqtt_password"
            )
        client_id = trigger.client_id or f"ecpds-{request.destination}-{request.host}"
        return broker_of(trigger, password, client_id)

    @staticmethod
    def _fingerprint(broker: Broker) -> str:
        settings = [broker.trigger.model_dump(), broker.user, broker.password, broker.client_id]
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()

    # --- messages -----------------------------------------------------------------------------

    def _register(
        self, request: SubscriptionInput, broker: Broker, batch: list[Message]
    ) -> Registration:
        """Register the file of each message (refusing bad ones); all are then acknowledged."""
        trigger = broker.trigger
        done = Registration()
        prefix = "wis2" if trigger.format == "wis2" else "mqtt"
        specs: list[SourceSpec] = []
        topics: list[str] = []
        for message in batch:
            try:
                notice = parse_message(
                    message.payload, format=trigger.format, fields=trigger.fields
                )
            except NotificationError as exc:
                done.refused.append(f"{message.topic}: {exc}")
                continue
            if notice.relation == "deletion":
                done.skipped += 1
                continue
            metadata = {"data_id": notice.data_id}
            if notice.pubtime is not None:
                metadata["pubtime"] = notice.pubtime.isoformat().replace("+00:00", "Z")
            if notice.integrity is not None:
                metadata["integrity"] = notice.integrity
            reqid = f"{prefix}:{request.destination}:{notice.key}"
            specs.append(SourceSpec(notice.url, name=notice.name, metadata=metadata, reqid=reqid))
            topics.append(message.topic)
        if not specs:
            return done
        try:
            # The whole burst in one transaction: a transaction per message costs more than
            # its file's fetch.
            files, known = register_new(
                self.engine, self.box, destination=request.destination, sources=specs
            )
        except IngestError:
            # One of them is refused: register them one by one, to name it and keep the rest.
            files, known = [], 0
            for spec, topic in zip(specs, topics, strict=True):
                try:
                    one, seen = register_new(
                        self.engine, self.box, destination=request.destination, sources=[spec]
                    )
                except IngestError as exc:
                    done.refused.append(f"{topic}: {_one_line(exc)}")
                    continue
                files += one
                known += seen
        done.new_ids.extend(f.id for f in files)
        done.duplicates += known
        return done

    @activity.defn
    async def subscribe(self, request: SubscriptionInput) -> SubscriptionOutput:
        """Hold the host's session for a while; each message's file registered and fetched."""
        where = f"subscription {request.destination}/{request.host}"
        try:
            broker = await asyncio.to_thread(self._broker, request)
        except (ValueError, ValidationError) as exc:
            raise ApplicationError(f"{where}: {_one_line(exc)}", non_retryable=True) from None
        if broker is None:
            return SubscriptionOutput(stop=True, reason="the host no longer subscribes")
        fingerprint = self._fingerprint(broker)
        session = MqttSession(broker, asyncio.get_running_loop())
        try:
            await asyncio.to_thread(session.connect)
        except (OSError, ssl.SSLError, ValueError) as exc:
            session.client.loop_stop()
            raise ApplicationError(
                f"{where}: cannot reach the MQTT broker {broker.where}: {_one_line(exc)}"
            ) from None
        output = SubscriptionOutput()
        dispatcher = TemporalDispatcher(activity.client(), self.task_queue, self.engine)
        retrievals = Retrievals(dispatcher, request.destination, where)
        try:
            try:
                async with asyncio.timeout(CONNECT_WITHIN):
                    refused = await asyncio.shield(session.connected)
            except TimeoutError:
                refused = f"{broker.where}: no answer to our subscription in {CONNECT_WITHIN:.0f} s"
            if refused:
                raise ApplicationError(f"{where}: {refused}")
            started = last_look = time.monotonic()
            while True:
                activity.heartbeat(output)
                try:
                    first = await asyncio.wait_for(session.messages.get(), HEARTBEAT_EVERY)
                except TimeoutError:
                    first = None
                if first is not None:
                    batch = [first]
                    while not session.messages.empty() and len(batch) < BATCH:
                        batch.append(session.messages.get_nowait())
                    await self._handle(request, broker, session, batch, output, retrievals)
                now = time.monotonic()
                if session.down_since is not None and now - session.down_since > DOWN_FOR:
                    raise ApplicationError(f"{where}: {session.down_reason}")
                if now - last_look >= SETTINGS_EVERY:
                    last_look = now
                    current = await asyncio.to_thread(self._broker, request)
                    if current is None:
                        output.stop, output.reason = True, "the host no longer subscribes"
                        return output
                    if self._fingerprint(current) != fingerprint:
                        output.reason = "the host's settings changed"
                        return output
                if now - started >= SESSION:
                    output.reason = "session renewed"
                    return output
                if activity.is_worker_shutdown():  # the next session on another worker
                    output.reason = "its worker stops"
                    return output
        finally:
            await asyncio.to_thread(session.close)
            await retrievals.close()

    async def _handle(
        self,
        request: SubscriptionInput,
        broker: Broker,
        session: MqttSession,
        batch: list[Message],
        output: SubscriptionOutput,
        retrievals: Retrievals,
    ) -> None:
        where = f"subscription {request.destination}/{request.host}"
        # A catalog that fails here fails the activity: nothing is acknowledged, and the
        # broker gives the messages again to the next attempt.
        work = asyncio.ensure_future(asyncio.to_thread(self._register, request, broker, batch))
        while not work.done():
            activity.heartbeat(output)
            await asyncio.wait({work}, timeout=HEARTBEAT_EVERY)
        done = work.result()
        for message in batch:
            session.ack(message)
        output.received += len(batch)
        output.registered += len(done.new_ids)
        output.duplicates += done.duplicates
        output.skipped += done.skipped
        output.refused += len(done.refused)
        for reason in done.refused:
            log.warning("%s: refused a message: %s", where, reason)
            output.last_refused = reason
        retrievals.add(done.new_ids)
