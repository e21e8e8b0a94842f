"""What an MQTT notification asks us to fetch: a WIS2 notification message, or a JSON
payload whose field names a host's settings give.

Checked against the WIS2 notification message specification (1.x, core conformance
class) from its facts, without fetching a schema; every refusal is one line.
"""

from __future__ import annotations

import base64
import binascii
import json
import posixpath
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

MAX_WIS2_BYTES = 8192
CORE_CONFORMANCE = "http://wis.wmo.int/spec/wnm/1/conf/core"
INTEGRITY_METHODS = frozenset({"sha256", "sha384", "sha512", "sha3-256", "sha3-384", "sha3-512"})
LINK_SCHEMES = frozenset({"http", "https", "ftp", "ftps", "sftp"})
DATA_RELATIONS = ("canonical", "update", "deletion")
JSON_FIELDS = ("url", "id", "name", "pubtime", "integrity")


class NotificationError(ValueError):
    """A message that cannot become a fetch; its text is one line for logs and operators."""


@dataclass(frozen=True)
class Notification:
    """One product a message announces."""

    url: str
    data_id: str  # what makes two messages the same product (duplicates are fetched once)
    relation: str = "canonical"  # canonical (new), update (a replacement) or deletion
    name: str | None = None  # the file name in the store; default: the URL's last part
    pubtime: datetime | None = None
    integrity: str | None = None  # "<method>:<base64 digest>"

    @property
    def key(self) -> str:
        """The product's identity: an update is a new product each time it is published."""
        if self.relation == "update" and self.pubtime is not None:
            return f"{self.data_id}@{self.pubtime.isoformat()}"
        return self.data_id


def parse_message(payload: bytes, *, format: str, fields: dict[str, str]) -> Notification:
    """The notification in an MQTT payload, in the host's format ("wis2" or "json")."""
    if format == "wis2":
        return parse_wis2(payload)
    return parse_json(payload, fields)


def _document(payload: bytes) -> dict[str, Any]:
    try:
        document = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError:
        raise NotificationError("the payload is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise NotificationError(f"the payload is not JSON ({exc.msg} at {exc.pos})") from None
    if not isinstance(document, dict):
        raise NotificationError("the payload is not a JSON object")
    return document


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise NotificationError(f"{what} is missing or not a text")
    if "\n" in value or "\r" in value:
        raise NotificationError(f"{what} spans several lines")
    return value


def parse_time(value: Any, what: str) -> datetime:
    """An RFC 3339 time (a 'Z' or an offset; none is taken as UTC), as a UTC datetime."""
    text = _text(value, what)
    try:
        parsed = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise NotificationError(f"{what} {text!r} is not an RFC 3339 time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def check_url(value: Any, what: str) -> str:
    url = _text(value, what)
    parts = urlsplit(url)
    if parts.scheme.lower() not in LINK_SCHEMES or not parts.netloc:
        schemes = ", ".join(sorted(LINK_SCHEMES))
        raise NotificationError(f"{what} {url!r} is not a {schemes} URL")
    if not posixpath.basename(unquote(parts.path)):
        raise NotificationError(f"{what} {url!r} names no file")
    return url


def parse_integrity(value: Any, what: str = "integrity") -> str:
    """`{"method", "value"}` or "method:value" as "method:value", the digest checked."""
    method: Any
    digest: Any
    if isinstance(value, str) and ":" in value:
        method, digest = value.split(":", 1)
    elif isinstance(value, dict):
        method, digest = value.get("method"), value.get("value")
    else:
        raise NotificationError(f"{what} is neither {{method, value}} nor 'method:value'")
    if not isinstance(method, str) or method.lower() not in INTEGRITY_METHODS:
        raise NotificationError(
            f"{what} method {method!r} is not one of {', '.join(sorted(INTEGRITY_METHODS))}"
        )
    if not isinstance(digest, str) or not digest:
        raise NotificationError(f"{what} value is missing")
    try:
        base64.b64decode(digest, validate=True)
    except (binascii.Error, ValueError):
        raise NotificationError(f"{what} value {digest[:40]!r} is not base64") from None
    return f"{method.lower()}:{digest}"


def parse_wis2(payload: bytes) -> Notification:
    """The data link of a WIS2 notification message (canonical or update; or a deletion)."""
    if len(payload) > MAX_WIS2_BYTES:
        raise NotificationError(
            f"the message is {len(payload)} bytes: a WIS2 notification is at most {MAX_WIS2_BYTES}"
        )
    message = _document(payload)
    if message.get("version") == "v04" and "conformsTo" not in message:
        raise NotificationError("a deprecated v04 message: WIS2 notification 1.x is expected")
    conforms = message.get("conformsTo")
    if not isinstance(conforms, list) or CORE_CONFORMANCE not in conforms:
        raise NotificationError(f"conformsTo does not name {CORE_CONFORMANCE}")
    if message.get("type") != "Feature":
        raise NotificationError(f"type is {message.get('type')!r}, not 'Feature'")
    _text(message.get("id"), "id")
    geometry = message.get("geometry", "missing")
    if geometry is not None and (
        not isinstance(geometry, dict) or geometry.get("type") not in ("Point", "Polygon")
    ):
        raise NotificationError("geometry is neither null nor a GeoJSON Point or Polygon")
    properties = message.get("properties")
    if not isinstance(properties, dict):
        raise NotificationError("properties is missing or not an object")
    data_id = _text(properties.get("data_id"), "properties.data_id")
    pubtime = parse_time(properties.get("pubtime"), "properties.pubtime")
    if "datetime" in properties:
        if properties["datetime"] is not None:
            parse_time(properties["datetime"], "properties.datetime")
    elif "start_datetime" in properties and "end_datetime" in properties:
        parse_time(properties["start_datetime"], "properties.start_datetime")
        parse_time(properties["end_datetime"], "properties.end_datetime")
    else:
        raise NotificationError("properties has neither datetime nor start_ and end_datetime")
    integrity = None
    if properties.get("integrity") is not None:
        integrity = parse_integrity(properties["integrity"], "properties.integrity")
    links = message.get("links")
    if not isinstance(links, list) or not links:
        raise NotificationError("links is missing or empty")
    data_links = [
        link for link in links if isinstance(link, dict) and link.get("rel") in DATA_RELATIONS
    ]
    if len(data_links) != 1:
        raise NotificationError(
            f"{len(data_links)} links with rel canonical, update or deletion: one is expected"
        )
    [link] = data_links
    relation = link["rel"]
    url = check_url(link.get("href"), f"the {relation} link's href")
    return Notification(url, data_id, relation, pubtime=pubtime, integrity=integrity)


def _field(document: dict[str, Any], path: str) -> Any:
    """A field by its dotted path (`properties.href`), None if absent."""
    value: Any = document
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def check_fields(fields: dict[str, str]) -> None:
    unknown = sorted(set(fields) - set(JSON_FIELDS))
    if unknown:
        raise NotificationError(
            f"fields: unknown key {unknown[0]!r} (known: {', '.join(JSON_FIELDS)})"
        )


def parse_json(payload: bytes, fields: dict[str, str]) -> Notification:
    """A JSON object naming a file: `fields` maps url, id, name, pubtime, integrity to the
    payload's (dotted) field names, each by default its own name; only the URL is required."""
    check_fields(fields)
    names = {key: fields.get(key, key) for key in JSON_FIELDS}
    document = _document(payload)
    url = _field(document, names["url"])
    if url is None:
        raise NotificationError(f"field {names['url']!r} (the file's URL) is missing")
    url = check_url(url, f"field {names['url']!r}")
    data_id = _field(document, names["id"])
    if data_id is not None and not isinstance(data_id, str | int):
        raise NotificationError(f"field {names['id']!r} (the id) is not a text or a number")
    name = _field(document, names["name"])
    if name is not None:
        name = _text(name, f"field {names['name']!r}")
        if "/" in name or "\0" in name:
            raise NotificationError(f"field {names['name']!r}: {name!r} is not a plain file name")
    pubtime = _field(document, names["pubtime"])
    integrity = _field(document, names["integrity"])
    return Notification(
        url,
        _text(str(data_id), f"field {names['id']!r}") if data_id is not None else url,
        name=name,
        pubtime=None if pubtime is None else parse_time(pubtime, f"field {names['pubtime']!r}"),
        integrity=None
        if integrity is None
        else parse_integrity(integrity, f"field {names['integrity']!r}"),
    )
