"""Acquisition settings of a host: how an MQTT-triggered host subscribes to its provider."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class MqttTrigger(BaseModel, extra="forbid"):
    url: str  # mqtt://user@host:1883 or mqtts://user@host:8883
    topics: list[str]  # topic filters
    format: Literal["wis2", "json"] = "wis2"
    fields: dict[str, str] = {}  # json format: {"url": "...", "id": "...", "name": ...}
    version: Literal["5", "3.1.1"] = "5"
    qos: int = 1
    session_expiry: int = 86400  # seconds the broker keeps our session
    client_id: str | None = None  # default: ecpds-<destination>-<host>
    ca_file: str | None = None
    insecure: bool = False
    # the broker password is the host credential "mqtt_password"
