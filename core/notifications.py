"""Notifications: a destination's settings for announcing products over MQTT, and the
topics its data users may subscribe to.

The outbox rows themselves (`ecpds.core.models.Notification`) are written in the
catalog transaction that stores or delivers a product; a worker publishes them.
"""

from __future__ import annotations

import string
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, ValidationError, model_validator

from ecpds.core.errors import validation_message
from ecpds.core.models import BROKER_SCHEMES

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
