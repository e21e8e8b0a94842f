"""MQTT brokers for tests: the machine's Mosquitto (MQTT 5), private Mosquittos (with a
password file and TLS, or persistent to be stopped and started again), and the portal's
embedded broker; MqttBroker publishes to them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import Engine

from ecpds.core import catalog
from ecpds.core.db import session_scope
from ecpds.core.devserver import free_port, wait_for_port
from ecpds.core.models import DataUserCreate
from ecpds.core.secrets import CredentialBox
from ecpds.core.settings import Settings
from ecpds.portal.mqtt import run_broker
from peers.tls import self_signed

BROKER_USER = "provider"
BROKER_PASSWORD = "Mqtt-Secret-Pa55"
ADMIN = "mqttadmin"
ADMIN_PASSWORD = "Embedded-Secret-77"


# --- brokers --------------------------------------------------------------------------------


@dataclass
class MqttBroker:
    host: str
    port: int
    version: str = "5"
    user: str | None = None
    password: str | None = None
    tls_port: int | None = None
    ca_file: str | None = None

    def url(self, *, tls: bool = False) -> str:
        user = f"{self.user}@" if self.user else ""
        if tls:
            return f"mqtts://{user}{self.host}:{self.tls_port}"
        return f"mqtt://{user}{self.host}:{self.port}"

    def publish(self, topic: str, payloads: list[bytes], *, tls: bool = False) -> None:
        """Publish at QoS 1 and wait for each acknowledgement (blocking: call in a thread)."""
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"publisher-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5 if self.version == "5" else mqtt.MQTTv311,
        )
        if self.user:
            client.username_pw_set(self.user, self.password)
        if tls:
            client.tls_set_context(ssl.create_default_context(cafile=self.ca_file))
        client.connect(self.host, self.tls_port if tls else self.port)
        client.loop_start()
        try:
            for payload in payloads:
                client.publish(topic, payload, qos=1).wait_for_publish(timeout=30)
        finally:
            client.disconnect()
            client.loop_stop()


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start_mosquitto(folder: Path, config: str, port: int) -> subprocess.Popen:
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(mosquitto):
        pytest.skip("mosquitto is needed (apt-get install mosquitto)")
    conf = folder / "mosquitto.conf"
    conf.write_text(config)
    log = (folder / "mosquitto.log").open("wb")
    proc = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=log, stderr=log)
    wait_for_port("127.0.0.1", port, timeout=30, proc=proc)
    return proc


def stop_process(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MqttBroker]:
    """The machine's Mosquitto on 127.0.0.1:1883 (MQTT 5, anonymous); one of ours if absent."""
    if listening(1883):
        yield MqttBroker("127.0.0.1", 1883)
        return
    port = free_port()
    folder = tmp_path_factory.mktemp("mosquitto")
    proc = start_mosquitto(
        folder, f"listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n", port
    )
    try:
        yield MqttBroker("127.0.0.1", port)
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def secure_mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MqttBroker]:
    """A Mosquitto of our own: user/password on a plain and a TLS listener."""
    if not shutil.which("mosquitto_passwd"):
        pytest.skip("mosquitto_passwd is needed (apt-get install mosquitto)")
    folder = tmp_path_factory.mktemp("mosquitto-secure")
    passwords = folder / "passwords"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwords), BROKER_USER, BROKER_PASSWORD],
        check=True,
        capture_output=True,
    )
    passwords.chmod(0o600)
    cert, key = self_signed(folder)
    port, tls_port = free_port(), free_port()
    config = (
        "per_listener_settings false\nallow_anonymous false\nuser root\n"
        f"password_file {passwords}\n"
        f"listener {port} 127.0.0.1\n"
        f"listener {tls_port} 127.0.0.1\ncertfile {cert}\nkeyfile {key}\n"
    )
    proc = start_mosquitto(folder, config, port)
    wait_for_port("127.0.0.1", tls_port, timeout=30, proc=proc)
    try:
        yield MqttBroker("127.0.0.1", port, "5", BROKER_USER, BROKER_PASSWORD, tls_port, str(cert))
    finally:
        stop_process(proc)


@contextlib.asynccontextmanager
async def serving_embedded(
    engine: Engine, home: Path, box: CredentialBox | None = None
) -> AsyncIterator[int]:
    """The portal's embedded broker (amqtt, MQTT 3.1.1) on `engine`'s catalog; its port.

    `box` derives the workers' publisher password (default: a key under `home`)."""
    port = free_port()
    settings = Settings(
        home=home,
        bind="127.0.0.1",
        mqtt_port=port,
        mqtts_port=free_port(),
        mqtt_ws_port=free_port(),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run_broker(settings, engine, stop, box))
    deadline = asyncio.get_running_loop().time() + 30
    while not await asyncio.to_thread(listening, port):
        assert not task.done(), "the embedded broker did not start"
        assert asyncio.get_running_loop().time() < deadline, "the embedded broker never listened"
        await asyncio.sleep(0.1)
    try:
        yield port
    finally:
        stop.set()
        await task


@pytest.fixture
async def embedded_broker(engine: Engine, tmp_path: Path) -> AsyncIterator[MqttBroker]:
    """The portal's embedded broker on this test's catalog, with an admin login."""
    with session_scope(engine) as session:
        catalog.create_user(
            session, data=DataUserCreate(name=ADMIN, password=ADMIN_PASSWORD, admin=True)
        )
    async with serving_embedded(engine, tmp_path / "portal") as port:
        yield MqttBroker("127.0.0.1", port, "3.1.1", ADMIN, ADMIN_PASSWORD)


class PrivateMosquitto:
    """A Mosquitto of our own on a free port (MQTT 5, anonymous) that a test stops and
    starts again; persistent, so subscribers' sessions and their queued messages survive."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def broker(self) -> MqttBroker:
        return MqttBroker("127.0.0.1", self.port)

    def start(self) -> None:
        config = (
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\nuser root\n"
            f"persistence true\npersistence_location {self.folder}/\n"
        )
        self.proc = start_mosquitto(self.folder, config, self.port)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


@pytest.fixture
def private_mosquitto(tmp_path: Path) -> Iterator[PrivateMosquitto]:
    folder = tmp_path / "mosquitto"
    folder.mkdir()
    server = PrivateMosquitto(folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()
