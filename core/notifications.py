"""Notifications: a destination's settings for announcing products over MQTT, and the
topics its data users may subscribe to.

The outbox rows themselves (`ecpds.core.models.Notification`) are written in the
catalog transaction that stores or delivers a product; a worker publishes them.
"""

from __future__ import annotations

import base64
import json
import logging
import mimetypes
import string
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from importlib import resources
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from pydantic import BaseModel, Field, ValidationError, model_validator
from sqlalchemy import insert
from sqlmodel import Session, col, select

from ecpds.core.errors import validation_message
from ecpds.core.models import (
    BROKER_SCHEMES,
    DataFile,
    DataTransfer,
    Destination,
    Notification,
    utcnow,
)
from ecpds.core.naming import DateToken
from ecpds.core.settings import Settings

EMBEDDED = "embedded"
PUBLISHER_USER = "ecpds-publisher"  # the workers' login to the embedded broker
PUBLISHER_PURPOSE = "embedded-mqtt-publisher"  # its password: box.internal_password(...)
DEFAULT_TOPIC = "{destination}/{target}"
NotifyWhen = Literal["none", "store", "delivery", "both"]
PayloadFormat = Literal["json", "wis2", "template"]
MqttVersion = Literal["3.1.1", "5"]
CONTENT_TYPES = {"json": "application/json", "wis2": "application/geo+json"}


class Wis2Settings(BaseModel, extra="forbid"):
    """What a WIS2 notification message says beyond the product itself."""

    data_id: str = DEFAULT_TOPIC  # template, like the topic's
    metadata_id: str | None = None  # the dataset's discovery-metadata id, e.g. urn:wmo:md:…


class NotificationSettings(BaseModel, extra="forbid"):
    """When and how a destination announces its products."""

    notify: NotifyWhen = "none"
    broker: str = EMBEDDED  # or mqtt://, mqtts://, ws://, wss:// host:port of another one
    user: str = ""  # on another broker; its password is kept encrypted beside
    ca_file: str | None = None  # another broker over TLS: the CA file the workers check with
    insecure: bool = False  # another broker over TLS: do not check its certificate
    protocol: MqttVersion | None = None  # None: 3.1.1 on the embedded broker, else 5
    topic: str = DEFAULT_TOPIC
    qos: int = Field(default=1, ge=0, le=2)
    retain: bool = False
    # MQTT 5 message expiry in seconds; None: the product's remaining lifetime; 0: never.
    expiry: int | None = Field(default=None, ge=0, le=100 * 365 * 86400)
    content_type: str | None = None  # None: by format (JSON, GeoJSON; none for templates)
    format: PayloadFormat = "json"
    template: str | None = None  # the payload when format is "template"
    wis2: Wis2Settings = Wis2Settings()

    @model_validator(mode="after")
    def _consistent(self) -> NotificationSettings:
        if self.broker != EMBEDDED:
            parts = urlsplit(self.broker)
            if parts.scheme.lower() not in BROKER_SCHEMES or not parts.hostname:
                raise ValueError(
                    f"broker {self.broker!r}: use 'embedded' or a URL such as "
                    "mqtts://broker:8883 (mqtt, mqtts, ws, wss)"
                )
            if (self.ca_file or self.insecure) and parts.scheme.lower() not in ("mqtts", "wss"):
                raise ValueError("ca_file, insecure: only for an mqtts:// or wss:// broker")
        elif self.ca_file or self.insecure:
            raise ValueError("ca_file, insecure: only for another broker over TLS")
        elif self.protocol == "5":
            raise ValueError("protocol: the embedded broker speaks MQTT 3.1.1")
        elif self.user:
            raise ValueError("user: the embedded broker needs no login from ecpds")
        if self.format == "template" and not self.template:
            raise ValueError("format 'template' needs a template")
        if "#" in self.topic or "+" in self.topic:
            raise ValueError(f"topic {self.topic!r}: no wildcards (+, #) in a topic to publish to")
        return self

    @property
    def mqtt_version(self) -> MqttVersion:
        return self.protocol or ("3.1.1" if self.broker == EMBEDDED else "5")

    @property
    def media_type(self) -> str | None:
        return self.content_type or CONTENT_TYPES.get(self.format)

    def announces(self, event: Literal["store", "delivery"]) -> bool:
        return self.notify in (event, "both")


def check_settings(value: Any) -> dict[str, Any]:
    """The settings as the catalog keeps them (all fields); ValueError in one line."""
    try:
        settings = NotificationSettings.model_validate(value)
    except ValidationError as exc:
        raise ValueError(validation_message(exc)) from None
    return settings.model_dump()


def settings_of(value: dict[str, Any] | None) -> NotificationSettings:
    """A destination's settings from its `notification` column (None: announces nothing)."""
    return NotificationSettings.model_validate(value or {})


def topic_filter(settings: NotificationSettings, destination: str) -> str | None:
    """The MQTT filter that covers every topic the destination publishes to.

    Levels are kept up to the first one with a placeholder other than {destination}; the
    rest becomes `#`. None when the destination announces nothing.
    """
    if settings.notify == "none":
        return None
    kept: list[str] = []
    for level in settings.topic.split("/"):
        names = {name for _, name, _, _ in string.Formatter().parse(level) if name is not None}
        if names - {"destination"}:
            return "/".join([*kept, "#"])
        kept.append(level.replace("{destination}", destination))
    return "/".join(kept)


# --- the outbox writer ----------------------------------------------------------------------

WIS2_CONFORMS_TO = "http://wis.wmo.int/spec/wnm/1/conf/core"
WIS2_MAX_BYTES = 8192
WIS2_SCHEMA = "wis2-notification-message.json"
_LINK_SCHEMES = ("http://", "https://", "ftp://", "sftp://")
_UNKNOWN = "unknown"  # a topic level whose metadata key is missing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Doors:
    """The portal's doors as subscribers reach them: where an announced product is served."""

    https: str
    s3: str
    ftp: str
    sftp: str

    @classmethod
    def of(cls, settings: Settings) -> Doors:
        host = settings.public_host
        return cls(
            https=f"https://{host}:{settings.https_port}",
            s3=f"https://{host}:{settings.s3_port}",
            ftp=f"ftp://{host}:{settings.ftp_port}",
            sftp=f"sftp://{host}:{settings.sftp_port}",
        )

    def urls(self, destination: str, target: str) -> dict[str, str]:
        """The product through each door (S3 path-style: the destination is the bucket)."""
        path = f"{quote(destination)}/{quote(target.lstrip('/'))}"
        return {
            "https": f"{self.https}/data/{path}",
            "s3": f"{self.s3}/{path}",
            "ftp": f"{self.ftp}/{path}",
            "sftp": f"{self.sftp}/{path}",
        }


class _Metadata(dict[str, str]):
    """`{metadata[key]}` in a topic: a missing key gives the level `unknown`."""

    def __missing__(self, key: str) -> str:
        return _UNKNOWN


def _rfc3339(when: datetime | None) -> str | None:
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _tokens(
    *, event: str, destination: str, target: str, data_file: DataFile, created: datetime
) -> dict[str, Any]:
    dirname, _, basename = target.rpartition("/")
    return {
        "destination": destination,
        "target": target,
        "name": data_file.name,
        "dirname": dirname,
        "basename": basename,
        "event": event,
        "data_file_id": data_file.id,
        "date": DateToken(created),
        "metadata": _Metadata(data_file.meta or {}),
    }


def render_topic(template: str, tokens: dict[str, Any]) -> str:
    """The topic from its template: no wildcard, no empty level (KeyError etc. if bad)."""
    text = template.format_map(tokens)
    levels = [level.replace("+", "_").replace("#", "_") for level in text.split("/")]
    return "/".join(level for level in levels if level) or _UNKNOWN


def _expires(
    settings: NotificationSettings, created: datetime, lifetime: datetime | None
) -> datetime | None:
    if settings.expiry is None:
        return lifetime
    if settings.expiry == 0:
        return None
    return created + timedelta(seconds=settings.expiry)


def _broker(url: str) -> str:
    """The URL without any credentials in it (a broker's, a host's)."""
    if url == EMBEDDED:
        return url
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def remote_location(host_url: str, target: str) -> str:
    """Where a delivered file is: the host's URL, without credentials, and its target."""
    base = _broker(host_url).rstrip("/")
    return f"{base}/{quote(target.lstrip('/'))}"


def media_type_of(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _wis2(
    settings: NotificationSettings,
    fields: dict[str, Any],
    tokens: dict[str, Any],
    data_file: DataFile,
    href: str,
) -> dict[str, Any]:
    meta = data_file.meta or {}
    properties: dict[str, Any] = {
        "data_id": settings.wis2.data_id.format_map(tokens),
        "pubtime": fields["time"],
    }
    if settings.wis2.metadata_id:
        properties["metadata_id"] = settings.wis2.metadata_id.format_map(tokens)
    if meta.get("start_datetime") and meta.get("end_datetime"):
        properties["start_datetime"] = meta["start_datetime"]
        properties["end_datetime"] = meta["end_datetime"]
    else:
        properties["datetime"] = meta.get("datetime") or fields["time"]
    if data_file.sha512:
        value = base64.b64encode(bytes.fromhex(data_file.sha512)).decode()
        properties["integrity"] = {"method": "sha512", "value": value}
    geometry = json.loads(meta["geometry"]) if meta.get("geometry") else None
    return {
        "id": fields["id"],
        "conformsTo": [WIS2_CONFORMS_TO],
        "type": "Feature",
        "geometry": geometry,
        "properties": properties,
        "links": [
            {
                "href": href,
                "rel": "canonical",
                "type": media_type_of(fields["target"]),
                "length": fields["size"],
            }
        ],
    }


def _payload(
    settings: NotificationSettings,
    fields: dict[str, Any],
    tokens: dict[str, Any],
    data_file: DataFile,
    href: str,
) -> bytes:
    if settings.format == "json":
        return json.dumps(fields, separators=(",", ":")).encode()
    if settings.format == "wis2":
        message = _wis2(settings, fields, tokens, data_file, href)
        check_wis2(message)
        return json.dumps(message, separators=(",", ":")).encode()
    assert settings.template is not None
    return settings.template.format_map(
        fields | {"metadata": _Metadata(data_file.meta or {})}
    ).encode()


def _row(
    *,
    event: Literal["store", "delivery"],
    settings: NotificationSettings,
    destination: str,
    target: str,
    data_file: DataFile,
    transfer_id: int | None,
    lifetime: datetime | None,
    doors: Doors,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    created = utcnow()
    message_id = str(uuid.uuid4())
    expires = _expires(settings, created, lifetime)
    urls = doors.urls(destination, target)
    fields: dict[str, Any] = {
        "id": message_id,
        "event": event,
        "destination": destination,
        "name": data_file.name,
        "target": target,
        "size": data_file.size,
        "md5": data_file.md5,
        "etag": f'"{data_file.md5}"' if data_file.md5 else None,
        "metadata": dict(data_file.meta or {}),
        "time": _rfc3339(created),
        "expires": _rfc3339(expires),
        "data_file_id": data_file.id,
        "transfer_id": transfer_id,
        "urls": urls,
        **(extra or {}),
    }
    tokens = _tokens(
        event=event, destination=destination, target=target, data_file=data_file, created=created
    )
    # WIS2 links are HTTP(S), FTP or SFTP: a delivery elsewhere (a local folder, S3,
    # Azure...) points subscribers at the portal instead.
    location = (extra or {}).get("location", "")
    href = location if location.startswith(_LINK_SCHEMES) else urls["https"]
    try:
        topic = render_topic(settings.topic, tokens)
        payload = _payload(settings, fields, tokens, data_file, href)
    except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
        # A product is never refused for its announcement: the operator sees this instead.
        log.warning(
            "destination %s: no %s notification for %s: %s", destination, event, data_file.id, exc
        )
        return None
    if not payload:
        return None
    # Every column but id: written with one Core INSERT, far cheaper than an ORM object
    # on the store's hot path.
    return {
        "message_id": message_id,
        "event": event,
        "destination": destination,
        "data_file_id": data_file.id,
        "transfer_id": transfer_id,
        "broker": _broker(settings.broker),
        "protocol": settings.mqtt_version,
        "topic": topic,
        "payload": payload,
        "qos": settings.qos,
        "retain": settings.retain,
        "content_type": settings.media_type,
        "expires": expires,
        "created": created,
        "pending": True,
        "published": None,
        "attempts": 0,
        "next_attempt": created,
        "last_error": None,
    }


def _settings(destination: Destination) -> NotificationSettings | None:
    return _parsed(destination.name, destination.notification)


def _parsed(name: str, notification: dict[str, Any] | None) -> NotificationSettings | None:
    """The settings of a `notification` column, parsed once per distinct value (the
    store's hot path reads them for every product)."""
    if not notification:
        return None
    try:
        return _parse(json.dumps(notification, sort_keys=True))
    except ValidationError as exc:  # checked when written; an old row may predate a rule
        log.warning("destination %s: notification settings unusable: %s", name, exc)
        return None


# Keyed by the column's whole value, so it holds only immutable facts: a destination
# changed on another replica reads a new value, hence a new key, never a stale entry.
@lru_cache(maxsize=4096)
def _parse(text: str) -> NotificationSettings:
    return settings_of(json.loads(text))


def _announcing(
    session: Session, destination_ids: Iterable[int | None]
) -> dict[int, tuple[str, NotificationSettings]]:
    """Name and settings of those destinations that announce anything (one query)."""
    wanted = {i for i in destination_ids if i is not None}
    if not wanted:
        return {}
    rows = session.execute(
        select(Destination.id, Destination.name, Destination.notification).where(
            col(Destination.id).in_(wanted), col(Destination.notification).is_not(None)
        )
    ).all()
    found = {}
    for destination_id, name, notification in rows:
        settings = _parsed(name, notification)
        if settings is not None and settings.notify != "none":
            found[destination_id] = (name, settings)
    return found


def wants_sha512(session: Session, destination_ids: Iterable[int | None]) -> bool:
    """Whether one of these destinations announces in WIS2 (whose messages carry sha512)."""
    announcing = _announcing(session, destination_ids).values()
    return any(settings.format == "wis2" for _, settings in announcing)


def announce_stored(
    session: Session, *, doors: Doors, data_file: DataFile, transfers: Sequence[DataTransfer]
) -> int:
    """Outbox rows for a product now in the store, one per destination that announces it.

    Runs in the caller's transaction; returns the rows added.
    """
    firsts: dict[int, DataTransfer] = {}
    for transfer in transfers:
        if transfer.destination_id is not None:
            firsts.setdefault(transfer.destination_id, transfer)
    rows: list[dict[str, Any]] = []
    for destination_id, (name, settings) in _announcing(session, firsts).items():
        if not settings.announces("store"):
            continue
        transfer = firsts[destination_id]
        row = _row(
            event="store",
            settings=settings,
            destination=name,
            target=transfer.target,
            data_file=data_file,
            transfer_id=transfer.id,
            lifetime=data_file.expires,
            doors=doors,
        )
        if row is not None:
            rows.append(row)
    if rows:
        session.execute(insert(Notification), rows)
    return len(rows)


def announce_delivered(
    session: Session,
    *,
    doors: Doors,
    transfer: DataTransfer,
    data_file: DataFile,
    destination: Destination,
    location: str,
) -> bool:
    """An outbox row for a transfer DONE at `location` (a URL without credentials)."""
    if not destination.notification:
        return False
    settings = _settings(destination)
    if settings is None or not settings.announces("delivery"):
        return False
    row = _row(
        event="delivery",
        settings=settings,
        destination=destination.name,
        target=transfer.target,
        data_file=data_file,
        transfer_id=transfer.id,
        lifetime=transfer.expires,
        doors=doors,
        extra={"location": location, "host": urlsplit(location).hostname or ""},
    )
    if row is None:
        return False
    session.execute(insert(Notification), [row])
    return True


# --- WIS2 ---------------------------------------------------------------------------------


@cache  # the schema ships with the package: immutable
def _wis2_validator() -> Draft202012Validator:
    text = resources.files("ecpds.core.schemas").joinpath(WIS2_SCHEMA).read_text("utf-8")
    schema = json.loads(text)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def check_wis2(message: dict[str, Any]) -> None:
    """ValueError (one line) unless `message` is a valid WIS2 Notification Message."""
    size = len(json.dumps(message, separators=(",", ":")).encode())
    if size > WIS2_MAX_BYTES:
        raise ValueError(f"WIS2 message is {size} bytes, over the limit of {WIS2_MAX_BYTES}")
    error = best_match(_wis2_validator().iter_errors(message))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "message"
        first = error.message.splitlines()[0]
        raise ValueError(f"not a WIS2 notification message: {where}: {first}")
