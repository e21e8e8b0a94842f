"""Listening to notifications: live from the broker after a replay of the history, with
no gap and no repeat, filtered, kept in a position file, and products saved verified.

`ecpds listen` (cli/listen.py) is the terminal around it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import queue
import re
import ssl
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

OVERLAP = timedelta(minutes=5)  # rows committed a little out of order are still replayed
SEEN_MAX = 200_000
_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def since_of(text: str, now: datetime) -> datetime:
    """`--from`: an RFC 3339 time, or a span back from `now` such as 30m, 2h, 1d."""
    match = _RELATIVE.match(text.strip())
    if match:
        return now - timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--from {text!r}: use an RFC 3339 time (2026-01-31T12:00:00Z) or a span (30m, 2h, 1d)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Heard:
    """One notification, from the history or from the broker."""

    message_id: str | None  # None: a template payload without an id (cannot be deduplicated)
    topic: str
    destination: str
    payload: Any  # the JSON object, or the text of a template payload
    created: datetime | None

    @property
    def message(self) -> dict[str, Any]:
        return self.payload if isinstance(self.payload, dict) else {}

    @property
    def wis2(self) -> bool:
        return isinstance(self.message.get("properties"), dict)

    @property
    def canonical(self) -> dict[str, Any]:
        for link in self.message.get("links") or ():
            if isinstance(link, dict) and link.get("rel") == "canonical":
                return link
        return {}

    @property
    def url(self) -> str:
        """Where the product is: the portal's HTTPS door, else the remote location."""
        urls = self.message.get("urls")
        if isinstance(urls, dict) and urls.get("https"):
            return str(urls["https"])
        return str(self.message.get("location") or self.canonical.get("href") or "")

    @property
    def target(self) -> str:
        target = self.message.get("target")
        if target:
            return str(target)
        path = unquote(urlsplit(self.url).path)
        prefix = f"/data/{self.destination}/"
        return path[len(prefix) :] if path.startswith(prefix) else path.rsplit("/", 1)[-1]

    @property
    def name(self) -> str:
        return str(self.message.get("name") or PurePosixPath(self.target).name)

    @property
    def size(self) -> int | None:
        size = self.message.get("size", self.canonical.get("length"))
        return int(size) if isinstance(size, int | str) and str(size).isdigit() else None

    @property
    def metadata(self) -> dict[str, Any]:
        values = self.message.get("metadata")
        if isinstance(values, dict):
            return values
        properties = self.message.get("properties")
        return properties if isinstance(properties, dict) else {}

    @property
    def sha512(self) -> str | None:
        """The WIS2 integrity value (base64) when it is a SHA-512."""
        integrity = self.metadata.get("integrity") if self.wis2 else None
        if isinstance(integrity, dict) and integrity.get("method") == "sha512":
            return str(integrity.get("value"))
        return None

    def fields(self) -> dict[str, str]:
        """The placeholders of `--exec` (path is added by the caller once downloaded)."""
        return {
            "id": self.message_id or "",
            "event": str(self.message.get("event") or ""),  # a WIS2 message has none
            "name": self.name,
            "target": self.target,
            "destination": self.destination,
            "size": "" if self.size is None else str(self.size),
            "md5": str(self.message.get("md5") or ""),
            "url": self.url,
            "topic": self.topic,
        }

    def record(self) -> dict[str, Any]:
        """The JSON line of `--format json`."""
        return {
            "id": self.message_id,
            "topic": self.topic,
            "destination": self.destination,
            "created": self.created.isoformat() if self.created else None,
            "payload": self.payload,
        }


def _decoded(payload: bytes) -> Any:
    text = payload.decode(errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def _created(payload: Any) -> datetime | None:
    if not isinstance(payload, dict):
        return None
    properties = payload.get("properties")
    if isinstance(properties, dict):
        return _time(properties.get("pubtime"))
    return _time(payload.get("time"))


def heard_in_history(item: dict[str, Any]) -> Heard:
    """A notification as `GET /api/v1/notifications` gives it."""
    return Heard(
        message_id=item["message_id"],
        topic=item["topic"],
        destination=item["destination"],
        payload=item["payload"],
        created=_time(item.get("created")),
    )


@dataclass(frozen=True)
class Subscription:
    """One destination's topic filter on the broker (from `GET /notifications/topics`)."""

    destination: str
    topic_filter: str

    def covers(self, topic: str) -> bool:
        return bool(mqtt.topic_matches_sub(self.topic_filter, topic))


def heard_live(topic: str, payload: bytes, subscriptions: Iterable[Subscription]) -> Heard | None:
    """A message from the broker; None when no subscription of ours covers its topic."""
    decoded = _decoded(payload)
    for subscription in subscriptions:
        if subscription.covers(topic):
            has_id = isinstance(decoded, dict) and decoded.get("id")
            return Heard(
                message_id=str(decoded["id"]) if has_id else None,
                topic=topic,
                destination=subscription.destination,
                payload=decoded,
                created=_created(decoded),
            )
    return None


@dataclass(frozen=True)
class Selection:
    """`--name REGEX` and `--meta k=v`: which notifications the listener acts on."""

    name: re.Pattern[str] | None = None
    meta: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, name: str | None, meta: Iterable[str]) -> Selection:
        pairs = []
        for item in meta:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ValueError(f"--meta {item!r}: use key=value")
            pairs.append((key, value))
        try:
            pattern = re.compile(name) if name else None
        except re.error as exc:
            raise ValueError(f"--name {name!r} is not a regular expression: {exc}") from None
        return cls(name=pattern, meta=tuple(pairs))

    def accepts(self, heard: Heard) -> bool:
        if self.name is not None and not self.name.search(heard.name):
            return False
        metadata = heard.metadata
        return all(str(metadata.get(key)) == value for key, value in self.meta)


@dataclass
class Position:
    """Where a listener is: the latest creation time heard and the ids of its last minutes.

    A restarted listener replays from `since` (OVERLAP before the latest, not before
    `floor`: when it first started, or its --from) and drops the ids already seen, so it
    misses nothing and repeats nothing.
    """

    floor: datetime | None = None
    latest: datetime | None = None
    seen: OrderedDict[str, datetime | None] = field(default_factory=OrderedDict)

    @classmethod
    def load(cls, path: Path) -> Position:
        if not path.exists():
            return cls()
        try:
            saved = json.loads(path.read_text())
            seen = OrderedDict((key, _time(value)) for key, value in saved["seen"].items())
            return cls(floor=_time(saved["floor"]), latest=_time(saved["latest"]), seen=seen)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"state file {path} is unreadable ({exc}): remove it") from None

    @property
    def since(self) -> datetime | None:
        if self.latest is None:
            return self.floor
        return max(self.latest - OVERLAP, self.floor) if self.floor else self.latest - OVERLAP

    def has(self, message_id: str | None) -> bool:
        return message_id is not None and message_id in self.seen

    def add(self, heard: Heard) -> None:
        if heard.created is not None and (self.latest is None or heard.created > self.latest):
            self.latest = heard.created
        if heard.message_id is not None:
            self.seen[heard.message_id] = heard.created
            self.seen.move_to_end(heard.message_id)
            while len(self.seen) > SEEN_MAX:
                self.seen.popitem(last=False)

    def save(self, path: Path) -> None:
        """Write it atomically; only the ids within OVERLAP of the latest are kept."""
        horizon = self.latest - OVERLAP if self.latest else None
        seen = {
            key: when.isoformat() if when else None
            for key, when in self.seen.items()
            if horizon is None or when is None or when >= horizon
        }
        floor, latest = (when.isoformat() if when else None for when in (self.floor, self.latest))
        text = json.dumps({"floor": floor, "latest": latest, "seen": seen})
        part = path.with_name(path.name + ".part")
        part.write_text(text)
        part.replace(path)


DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883, "ws": 80, "wss": 443}


class LiveFeed:
    """A paho-mqtt subscriber whose messages wait in a queue until the listener reads them."""

    def __init__(
        self,
        url: str,
        *,
        user: str,
        password: str,
        subscriptions: list[Subscription],
        ca_file: Path | None = None,
        insecure: bool = False,
        timeout: float = 30.0,
    ) -> None:
        self.subscriptions = subscriptions
        self.messages: queue.Queue[Heard] = queue.Queue()
        parts = urlsplit(url)
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise ValueError(
                f"broker {url!r}: use mqtt://, mqtts://, ws:// or wss:// and host:port"
            )
        tls = parts.scheme in ("mqtts", "wss")
        web = parts.scheme in ("ws", "wss")
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            protocol=mqtt.MQTTv311,
            clean_session=True,
            transport="websockets" if web else "tcp",
        )
        if web:
            self._client.ws_set_options(path=parts.path or "/mqtt")
        self._client.username_pw_set(user, password)
        if tls:
            context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
            if insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._client.tls_set_context(context)
        self._subscribed = queue.Queue[list[Any] | str]()
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.on_disconnect = self._on_disconnect
        self._ready = False
        self.resubscribed = threading.Event()
        self.lost_at: datetime | None = None
        port = parts.port or DEFAULT_PORTS[parts.scheme]
        where = f"{parts.hostname}:{port}"
        try:
            self._client.connect(parts.hostname, port)
        except (OSError, ssl.SSLError) as exc:
            raise ConnectionError(f"cannot reach the broker at {where}: {exc}") from None
        self._client.loop_start()
        try:
            answer = self._subscribed.get(timeout=timeout)
        except queue.Empty:
            self.close()
            raise ConnectionError(f"no answer from the broker at {where}") from None
        if isinstance(answer, str):
            self.close()
            raise ConnectionError(f"the broker at {where} {answer}")
        refused = [s.topic_filter for s, code in zip(subscriptions, answer, strict=False) if code]
        if refused:
            self.close()
            raise ConnectionError(f"the broker at {where} refused the topics {', '.join(refused)}")

    def _on_connect(self, client: mqtt.Client, _: Any, __: Any, reason: Any, ___: Any) -> None:
        if reason.is_failure:
            self._subscribed.put(f"refused the login: {reason}")
            return
        # On a reconnection too: a clean session forgets subscriptions.
        client.subscribe([(s.topic_filter, 1) for s in self.subscriptions])

    def _on_subscribe(self, _: Any, __: Any, ___: Any, codes: list[Any], ____: Any) -> None:
        if self._ready:
            self.resubscribed.set()  # after a lost connection: what went by is in the history
            return
        self._ready = True
        self._subscribed.put([1 if code.is_failure else 0 for code in codes])

    def _on_disconnect(self, _: Any, __: Any, ___: Any, ____: Any, _____: Any) -> None:
        if self.lost_at is None:
            self.lost_at = datetime.now(UTC)

    def _on_message(self, _: Any, __: Any, message: mqtt.MQTTMessage) -> None:
        heard = heard_live(message.topic, bytes(message.payload), self.subscriptions)
        if heard is not None:
            self.messages.put(heard)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _replay(
    history: Callable[[datetime, int], list[dict[str, Any]]], since: datetime, position: Position
) -> Iterator[Heard]:
    after = 0
    while page := history(since, after):
        for item in page:
            heard = heard_in_history(item)
            if not position.has(heard.message_id):
                yield heard
        after = page[-1]["id"]


def listen(
    feed: LiveFeed,
    history: Callable[[datetime, int], list[dict[str, Any]]] | None,
    since: datetime | None,
    position: Position,
    poll: float = 0.5,
) -> Iterator[Heard]:
    """Every notification once: the history since `since` (paged by `history(since, after)`,
    read while the feed already buffers live ones), then the buffer, then live ones; after
    a lost broker connection, the history again from the position.
    Ids in `position` are dropped: the caller adds each one it is given to `position`.
    """
    if since is not None and history is not None:
        yield from _replay(history, since, position)
    while True:
        if feed.resubscribed.is_set() and history is not None:
            feed.resubscribed.clear()
            lost, feed.lost_at = feed.lost_at or datetime.now(UTC), None
            yield from _replay(history, position.since or lost - OVERLAP, position)
        try:
            heard = feed.messages.get(timeout=poll)
        except queue.Empty:
            continue
        if not position.has(heard.message_id):
            yield heard


def save_verified(chunks: Iterable[bytes], path: Path, *, heard: Heard) -> Path:
    """Write a downloaded product to `path` (`.part`, then renamed) once its MD5 (JSON
    payloads) or SHA-512 (WIS2 integrity) matches; a mismatch removes it (ValueError)."""
    md5 = str(heard.message.get("md5") or "")
    expected_sha512 = heard.sha512
    if not md5 and not expected_sha512:
        raise ValueError(f"{heard.name}: the notification gives no checksum to verify it by")
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    digest = hashlib.md5() if md5 else hashlib.sha512()
    try:
        with part.open("wb") as out:
            for chunk in chunks:
                digest.update(chunk)
                out.write(chunk)
        if md5:
            ok, got, wanted = digest.hexdigest() == md5, digest.hexdigest(), md5
        else:
            got = base64.b64encode(digest.digest()).decode()
            ok, wanted = got == expected_sha512, str(expected_sha512)
        if not ok:
            raise ValueError(
                f"{heard.name}: checksum mismatch (got {got}, the notification says {wanted}); "
                "not saved"
            )
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)
    return path


def local_path(folder: Path, heard: Heard) -> Path:
    """Where `--download` puts a product: its target under `folder`, never outside it."""
    parts = [p for p in PurePosixPath(heard.target).parts if p not in ("", "/", ".", "..")]
    if not parts:
        raise ValueError(f"notification {heard.message_id}: no file name to save under")
    return folder.joinpath(*parts)
