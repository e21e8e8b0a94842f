"""WIS2 notification messages and JSON payloads: what is fetched, and one-line refusals."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from ecpds.core.wis2 import NotificationError, parse_json, parse_wis2

SHA = "sha512:" + "A" * 86 + "=="


def message(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "31e9d66a-cd83-4174-9429-b932f1abe1be",
        "conformsTo": ["http://wis.wmo.int/spec/wnm/1/conf/core"],
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [6.1, 46.2]},
        "properties": {
            "data_id": "ca-eccc-msc/data/core/weather/synop/A_SMCA01.bufr",
            "pubtime": "2026-12-07T00:00:00Z",
            "datetime": "2026-12-06T23:00:00Z",
            "integrity": {"method": "sha512", "value": "A" * 86 + "=="},
        },
        "links": [
            {"href": "https://example.int/data/A_SMCA01.bufr", "rel": "canonical"},
            {"href": "https://example.int/meta", "rel": "via"},
        ],
    }
    body.update(changes)
    return body


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def test_wis2_canonical_link_data_id_pubtime_integrity() -> None:
    notice = parse_wis2(encode(message()))
    assert notice.url == "https://example.int/data/A_SMCA01.bufr"
    assert notice.data_id == "ca-eccc-msc/data/core/weather/synop/A_SMCA01.bufr"
    assert notice.pubtime == datetime(2026, 12, 7, tzinfo=UTC)
    assert notice.integrity == SHA
    assert notice.relation == "canonical" and notice.key == notice.data_id


def test_wis2_update_is_a_new_product_per_pubtime() -> None:
    body = message(links=[{"href": "sftp://h/x/A.bufr", "rel": "update"}])
    notice = parse_wis2(encode(body))
    assert notice.relation == "update"
    assert notice.key == f"{notice.data_id}@2026-12-07T00:00:00+00:00"


def _without(key: str) -> dict[str, Any]:
    body = message()
    del body["properties"][key]
    return body


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{oops", "the payload is not JSON"),
        (b"[1]", "the payload is not a JSON object"),
        (b"\xff\xfe", "the payload is not UTF-8 text"),
        (encode(message(conformsTo=[])), "conformsTo does not name"),
        (encode(message(type="FeatureCollection")), "type is 'FeatureCollection'"),
        (encode(_without("data_id")), "properties.data_id is missing or not a text"),
        (encode(_without("pubtime")), "properties.pubtime is missing or not a text"),
        (encode(_without("datetime")), "properties has neither datetime"),
        (
            encode(message(properties={**message()["properties"], "pubtime": "yesterday"})),
            "properties.pubtime 'yesterday' is not an RFC 3339 time",
        ),
        (
            encode(
                message(
                    properties={
                        **message()["properties"],
                        "integrity": {"method": "crc32", "value": "AAAA"},
                    }
                )
            ),
            "properties.integrity method 'crc32' is not one of",
        ),
        (
            encode(
                message(
                    properties={
                        **message()["properties"],
                        "integrity": {"method": "sha256", "value": "not base64!"},
                    }
                )
            ),
            "properties.integrity value 'not base64!' is not base64",
        ),
        (encode(message(links=[{"href": "x", "rel": "via"}])), "0 links with rel canonical"),
        (
            encode(message(links=[{"href": "gopher://h/f", "rel": "canonical"}])),
            "the canonical link's href 'gopher://h/f' is not a",
        ),
        (encode(message(links=[{"href": "https://h/", "rel": "canonical"}])), "names no file"),
        (b"{" + b" " * 9000 + b"}", "a WIS2 notification is at most 8192"),
        (encode({"version": "v04", "properties": {}}), "a deprecated v04 message"),
    ],
)
def test_wis2_refusals_are_one_line(body: bytes, reason: str) -> None:
    with pytest.raises(NotificationError) as error:
        parse_wis2(body)
    assert reason in str(error.value)
    assert "\n" not in str(error.value)


def test_json_payload_with_field_names() -> None:
    fields = {"url": "file.where", "id": "uid", "name": "called", "integrity": "check"}
    payload = {"file": {"where": "ftp://h/p/x.grib"}, "uid": 42, "called": "y.grib"}
    payload["check"] = "sha256:" + "B" * 43 + "="
    notice = parse_json(json.dumps(payload).encode(), fields)
    assert (notice.url, notice.data_id, notice.name) == ("ftp://h/p/x.grib", "42", "y.grib")
    assert notice.integrity == "sha256:" + "B" * 43 + "="


def test_json_payload_defaults_to_url_as_its_id() -> None:
    notice = parse_json(b'{"url": "https://h/f.nc"}', {})
    assert notice.data_id == "https://h/f.nc" and notice.name is None


@pytest.mark.parametrize(
    ("payload", "fields", "reason"),
    [
        (b'{"href": "https://h/f"}', {}, "field 'url' (the file's URL) is missing"),
        (b'{"u": "https://h/f", "n": "a/b"}', {"url": "u", "name": "n"}, "not a plain file name"),
        (b'{"url": "https://h/f"}', {"link": "x"}, "fields: unknown key 'link'"),
        (b'{"url": "https://h/f", "id": [1]}', {}, "field 'id' (the id) is not a text"),
    ],
)
def test_json_refusals_are_one_line(payload: bytes, fields: dict[str, str], reason: str) -> None:
    with pytest.raises(NotificationError) as error:
        parse_json(payload, fields)
    assert reason in str(error.value)
