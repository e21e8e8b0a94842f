"""Notification benchmark: the cost of announcing products, how fast a delivery reaches a
subscriber on the embedded broker and on Mosquitto, and `ecpds listen --from` over 10,000.

Starts the whole system with `ecpds up` in a temporary home (free ports), then
(a) stores small products over REST into a destination that announces nothing and one
    that announces every product (alternately, best of each): store_rate_with_notify_ratio;
(b) delivers products to a local folder from a destination that announces deliveries on
    the embedded broker, and from one that announces them on Mosquitto (MQTT 5); each
    subscriber's arrival time minus the notification's `time` (the DONE moment):
    done_to_subscriber_p50_ms / _p99_ms, per broker;
(c) adds 10,000 published notifications to the outbox history and times
    `ecpds listen --from` replaying them all: replay_10k_s.
Prints a table, or with --json one object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
import tomllib
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from mqtt_acquisition import mosquitto
from paho.mqtt.enums import CallbackAPIVersion
from submit import (
    ecpds,
    figures_parser,
    log,
    percentile,
    process,
    report,
    system_environment,
    timed,
    wait_until_up,
)

from ecpds.core.db import open_catalog, session_scope
from ecpds.core.models import Notification
from ecpds.core.settings import Settings

PRODUCT = 4096  # bytes: small products, where a notification costs the most


def store_rate(api: httpx.Client, destination: str, files: int, threads: int) -> float:
    body = os.urandom(PRODUCT)

    def put(i: int) -> None:
        api.post(
            f"/destinations/{destination}/files",
            params={"name": f"p-{uuid.uuid4().hex[:12]}-{i}.bin"},
            content=body,
            headers={"Content-Type": "application/octet-stream"},
        ).raise_for_status()

    began = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, range(files)))
    return files / (time.perf_counter() - began)


class Subscriber:
    """A paho subscriber that notes when each notification arrived."""

    def __init__(self, port: int, topic: str, *, v5: bool, login: tuple[str, str] | None) -> None:
        protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
        if login:
            self.client.username_pw_set(*login)
        self.delays: list[float] = []
        self.subscribed = threading.Event()
        self.client.on_message = self._message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        if not self.subscribed.wait(20):
            raise SystemExit(f"could not subscribe to {topic} on port {port}")

    def _message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        arrived = time.time()
        sent = datetime.fromisoformat(json.loads(message.payload)["time"]).timestamp()
        self.delays.append((arrived - sent) * 1000)

    def wait(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.delays) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        if len(self.delays) < count:
            raise SystemExit(f"only {len(self.delays)} of {count} notifications arrived")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def deliveries(api: httpx.Client, destination: str, files: int, per_s: float) -> None:
    body = os.urandom(PRODUCT)
    for i in range(files):
        api.post(
            f"/destinations/{destination}/files",
            params={"name": f"d-{i:05d}.bin"},
            content=body,
            headers={"Content-Type": "application/octet-stream"},
        ).raise_for_status()
        time.sleep(1 / per_s)


def add_history(settings: Settings, destination: str, count: int) -> datetime:
    """`count` published notifications, as the publisher leaves them; their first time."""
    engine = open_catalog(settings.catalog_url)
    first = datetime.now(UTC) - timedelta(minutes=30)
    with session_scope(engine) as session:
        for i in range(count):
            when = first + timedelta(milliseconds=i)
            message_id = str(uuid.uuid4())
            payload = {
                "id": message_id,
                "event": "store",
                "destination": destination,
                "name": f"h-{i:05d}.bin",
                "target": f"h-{i:05d}.bin",
                "size": PRODUCT,
                "md5": "0" * 32,
                "metadata": {},
                "time": when.isoformat().replace("+00:00", "Z"),
            }
            session.add(
                Notification(
                    message_id=message_id,
                    event="store",
                    destination=destination,
                    topic=f"{destination}/h-{i:05d}.bin",
                    payload=json.dumps(payload).encode(),
                    content_type="application/json",
                    created=when,
                    pending=False,
                    published=when,
                )
            )
    engine.dispose()
    return first


def run(args: argparse.Namespace) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="ecpds-bench-notify-"))
    home = tmp / "var"
    env = system_environment(home)
    base = f"https://127.0.0.1:{env['ECPDS_HTTPS_PORT']}/api/v1"
    results: dict[str, float] = {}
    try:
        with process(ecpds("up"), tmp / "up.log", env) as up, mosquitto(tmp) as mosquitto_port:
            log("starting ecpds up …")
            wait_until_up(env, home, up, tmp / "up.log")
            admin = tomllib.loads((home / "admin.toml").read_text())
            user, password = admin["api_user"], admin["api_password"]
            env |= {"ECPDS_API_USER": user, "ECPDS_API_PASSWORD": password}
            api = httpx.Client(base_url=base, auth=(user, password), verify=False, timeout=60)
            announce = {"notify": "store"}
            for name, notification in (("quiet", None), ("loud", announce)):
                api.post(
                    "/destinations", json={"name": name, "notification": notification}
                ).raise_for_status()

            quiet = loud = 0.0
            for attempt in range(1, args.rounds + 1):
                log(f"round {attempt}: {args.files} products stored without, then with …")
                quiet = max(quiet, store_rate(api, "quiet", args.files, args.threads))
                loud = max(loud, store_rate(api, "loud", args.files, args.threads))
            results["store_per_s_without"] = quiet
            results["store_per_s_with_notify"] = loud
            results["store_rate_with_notify_ratio"] = loud / quiet

            outbox = tmp / "delivered"
            outbox.mkdir()
            api.post("/hosts", json={"name": "local", "url": f"file://{outbox}"}).raise_for_status()
            brokers = {
                "embedded": ({"notify": "delivery"}, int(env["ECPDS_MQTT_PORT"]), False),
                "mosquitto": (
                    {
                        "notify": "delivery",
                        "broker": f"mqtt://127.0.0.1:{mosquitto_port}",
                        "protocol": "5",
                        "topic": f"bench-{uuid.uuid4().hex[:8]}/{{target}}",
                    },
                    mosquitto_port,
                    True,
                ),
            }
            for broker, (notification, port, v5) in brokers.items():
                name = f"to-{broker}"
                api.post(
                    "/destinations",
                    json={"name": name, "hosts": ["local"], "notification": notification},
                ).raise_for_status()
                topic = notification.get("topic", name + "/{target}").split("/")[0] + "/#"
                subscriber = Subscriber(port, topic, v5=v5, login=None if v5 else (user, password))
                try:
                    log(f"{args.deliveries} deliveries announced on {broker} …")
                    deliveries(api, name, args.deliveries, args.rate)
                    subscriber.wait(args.deliveries, timeout=300)
                finally:
                    subscriber.close()
                results[f"{broker}_done_to_subscriber_p50_ms"] = statistics.median(
                    subscriber.delays
                )
                results[f"{broker}_done_to_subscriber_p99_ms"] = percentile(subscriber.delays, 99)

            settings = Settings(home=home)
            log(f"adding {args.history} notifications to the history, then replaying …")
            first = add_history(settings, "loud", args.history)
            since = first.isoformat().replace("+00:00", "Z")
            listen = ecpds(
                "listen", "-d", "loud", "--from", since, "--count", str(args.history),
                "--format", "json",
            )  # fmt: skip
            seconds, out = timed(listen, env)
            got = len(out.splitlines())
            if got != args.history:
                raise SystemExit(f"ecpds listen printed {got} of {args.history} notifications")
            results["replay_10k_s"] = seconds * 10_000 / args.history
            api.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def main() -> None:
    parser = figures_parser(__doc__)
    parser.add_argument("--files", type=int, default=300, help="products per store round")
    parser.add_argument("--threads", type=int, default=8, help="concurrent REST uploads")
    parser.add_argument("--rounds", type=int, default=3, help="store rounds, best kept")
    parser.add_argument("--deliveries", type=int, default=200, help="per broker")
    parser.add_argument("--rate", type=float, default=20, help="deliveries pushed per second")
    parser.add_argument("--history", type=int, default=10_000, help="notifications replayed")
    args = parser.parse_args()
    report(run(args), as_json=args.json)


if __name__ == "__main__":
    main()
