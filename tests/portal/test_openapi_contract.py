"""The OpenAPI description is true: schemathesis against a running portal, and the docs offline.

One portal (`serve`, with the session's real Temporal server and a fresh catalog) serves
every test of the module. Its admin is the last one, so it cannot delete itself and
stays able to log in whatever the fuzzer sends.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ecpds.core.models import (
    CLOCK_PATTERN,
    COMPRESSION_PATTERN,
    LOCATION_PATTERN,
    DestinationCreate,
)

from .conftest import served_portal

ST = Path(sys.executable).with_name("st")


@dataclass
class Running:
    base: str  # https://127.0.0.1:PORT
    admin: httpx.Client  # the API, as the last admin, with its bearer token
    token: str


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Running]:
    home = tmp_path_factory.mktemp("contract") / "var"
    with served_portal(home, temporal_server) as (settings, login):
        base = f"https://127.0.0.1:{settings.https_port}"
        made = httpx.post(f"{base}/api/v1/tokens", auth=login, json={"label": "fuzz"}, verify=False)
        token = made.json()["token"]
        bearer = {"Authorization": f"Bearer {token}"}
        with httpx.Client(
            base_url=f"{base}/api/v1", headers=bearer, verify=False, timeout=30
        ) as client:
            yield Running(base, client, token)


def one_line(response: httpx.Response, code: int) -> str:
    assert response.status_code == code, response.text
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail
    return detail


def schema(running: Running) -> dict[str, Any]:
    answer = httpx.get(f"{running.base}/api/v1/openapi.json", verify=False)
    assert answer.status_code == 200
    return dict(answer.json())


def test_every_refusal_is_declared_as_a_one_line_detail(running: Running) -> None:
    described = schema(running)
    components = described["components"]["schemas"]
    assert components["Error"]["required"] == ["detail"]
    assert "HTTPValidationError" not in components
    for path, operations in described["paths"].items():
        for method, operation in operations.items():
            codes = {int(c) for c in operation["responses"] if c.isdigit()}
            if path != "/api/v1/health":
                assert 401 in codes, f"{method} {path} needs a login"
            for code in codes - set(range(400)):
                content = operation["responses"][str(code)]["content"]
                assert content["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/Error"
                }, f"{method} {path} {code}"
    # Request validation answers the declared shape, every problem on one line.
    bad = {"name": "x", "max_connections": "many", "active_from": "25:99", "colour": 1}
    detail = one_line(running.admin.post("/destinations", json=bad), 422)
    assert "max_connections" in detail and "active_from" in detail and "colour" in detail
    one_line(running.admin.get("/transfers", params={"limit": "lots"}), 422)
    one_line(running.admin.get("/destinations/nowhere"), 404)
    one_line(httpx.get(f"{running.base}/api/v1/destinations", verify=False), 401)


def test_allow_names_every_method_of_the_path(running: Running) -> None:
    described = schema(running)
    for path, operations in described["paths"].items():
        concrete = re.sub(r"\{[^}]+\}", "x", path)
        answer = running.admin.request("OPTIONS", f"{running.base}{concrete}")
        one_line(answer, 405)
        allowed = sorted(m.strip() for m in answer.headers["allow"].split(","))
        assert allowed == sorted(m.upper() for m in operations), path
    answer = running.admin.request("OPTIONS", "/destinations/x")
    assert answer.headers["allow"] == "GET, PATCH, DELETE"
    assert "GET, PATCH, DELETE" in answer.json()["detail"]


def _accepts(model: Any, **values: Any) -> bool:
    try:
        model(**values)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize(
    ("field", "pattern", "values"),
    [
        ("active_from", CLOCK_PATTERN, ["00:00", "23:59", "7:00", "24:00", "12:60", "12:3"]),
        ("compression", COMPRESSION_PATTERN, ["gzip", "GZip", "None", "rar", "gzip2", ""]),
        ("backup_url", LOCATION_PATTERN, ["/srv/b", "s3://b/d", "b/d", "s3:/b", " /x"]),
    ],
)
def test_the_schema_pattern_is_the_check(
    running: Running, field: str, pattern: str, values: list[str]
) -> None:
    described = schema(running)["components"]["schemas"]["DestinationIn"]["properties"][field]
    assert {"type": "string", "pattern": pattern} in described["anyOf"]
    for value in values:
        matches = re.search(pattern, value) is not None
        assert matches == _accepts(DestinationCreate, name="d", **{field: value}), value


def test_host_url_needs_a_known_scheme_in_the_schema_too(running: Running) -> None:
    described = schema(running)["components"]["schemas"]
    pattern = described["HostIn"]["properties"]["url"]["pattern"]
    urls = ("ftp://h/d", "FTP://h/d", "file:///tmp", "h/d", "ftp:/h", "://h", "rar://h")
    for n, url in enumerate(urls):
        made = running.admin.post("/hosts", json={"name": f"url{n}", "url": url})
        assert made.status_code in (201, 422), made.text
        assert (re.search(pattern, url) is not None) == (made.status_code == 201), made.text
    refused = running.admin.post("/hosts", json={"name": "h", "url": "host/dir"})
    assert "no scheme" in one_line(refused, 422)
    alias = described["AliasIn"]["properties"]["source"]
    assert alias["minLength"] == 1
    one_line(running.admin.post("/aliases", json={"name": "a", "source": "", "target": "t"}), 422)


def test_request_bodies_take_json_types_as_they_are(running: Running) -> None:
    for coerced in ({"max_connections": "5"}, {"active": "yes"}, {"active": 1}):
        detail = one_line(running.admin.post("/destinations", json={"name": "s"} | coerced), 422)
        assert next(iter(coerced)) in detail
    assert running.admin.get("/destinations/s").status_code == 404


def test_null_in_a_patch_clears_only_what_may_be_empty(running: Running) -> None:
    made = running.admin.post("/destinations", json={"name": "n", "compression": "gzip"})
    assert made.status_code == 201, made.text
    patched = running.admin.patch("/destinations/n", json={"comment": None, "compression": None})
    assert patched.status_code == 200, patched.text
    assert patched.json()["comment"] == "" and patched.json()["compression"] is None
    assert running.admin.post("/destinations", json={"name": "m"}).status_code == 201
    alias = {"name": "nm", "source": "n", "target": "m", "priority": 5}
    assert running.admin.post("/aliases", json=alias).status_code == 201
    patched = running.admin.patch("/aliases/nm", json={"delay": None, "priority": None})
    assert patched.status_code == 200, patched.text
    assert patched.json()["delay"] == 0 and patched.json()["priority"] is None


def test_times_far_ahead_are_refused_not_failed(running: Running) -> None:
    assert running.admin.post("/destinations", json={"name": "far"}).status_code == 201
    for query in ({"delay": 10**13}, {"at": "9999-12-31T23:00:00Z"}, {"lifetime": 10**13}):
        upload = running.admin.post("/destinations/far/files", params={"name": "f"} | query)
        one_line(upload, 422)
    refused = running.admin.post("/destinations", json={"name": "f2", "max_start": 2**63})
    assert "max_start" in one_line(refused, 422)


def test_docs_page_loads_its_assets_from_the_portal(running: Running) -> None:
    page = httpx.get(f"{running.base}/api/v1/docs", verify=False)
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    urls += re.findall(r"""url: ?["']([^"']+)["']""", page.text)
    assert len(urls) >= 4, urls
    for url in urls:
        assert url.startswith("/api/v1/"), f"{url} is not served by the portal"
        asset = httpx.get(f"{running.base}{url}", verify=False)
        assert asset.status_code == 200 and asset.content, url
    kinds = {httpx.get(f"{running.base}{u}", verify=False).headers["content-type"] for u in urls}
    assert any(k.startswith("text/javascript") for k in kinds), kinds
    assert any(k.startswith("text/css") for k in kinds), kinds
    # Only the page's own assets are served, nothing else of the package.
    other = httpx.get(f"{running.base}/api/v1/docs-assets/redoc.standalone.js", verify=False)
    one_line(other, 404)


# What a schema cannot say, so that an operation refuses data valid for it; each refusal
# names its reason in one line. Integers are JSON integers everywhere: 2.0 is refused (422),
# though JSON Schema counts it as an integer.
NAMES = "names must be those of existing destinations, hosts or users"
LEGITIMATE: dict[tuple[str, str], tuple[list[int], str]] = {
    ("POST", "/api/v1/destinations"): ([422], f"{NAMES}; a target template gives a safe path"),
    ("PATCH", "/api/v1/destinations/{name}"): ([422], f"{NAMES}; as for POST"),
    ("POST", "/api/v1/hosts"): ([422], "options and credentials depend on the protocol"),
    ("PATCH", "/api/v1/hosts/{name}"): ([422], "as for POST"),
    ("POST", "/api/v1/users"): ([422], NAMES),
    ("PATCH", "/api/v1/users/{name}"): ([422], NAMES),
    ("POST", "/api/v1/policies"): ([422], NAMES),
    ("PATCH", "/api/v1/policies/{name}"): ([422], NAMES),
    ("POST", "/api/v1/aliases"): ([422], f"{NAMES}, two different ones; a rewrite needs a pattern"),
    ("PATCH", "/api/v1/aliases/{name}"): ([422], "as for POST"),
    ("POST", "/api/v1/apply"): ([422], f"{NAMES}, or be described in the same request"),
    ("POST", "/api/v1/expected"): ([422], NAMES),
    ("PATCH", "/api/v1/expected/{name}"): ([422], NAMES),
    ("POST", "/api/v1/destinations/{destination}/files"): (
        [413, 422],
        "at + lifetime must be in the future; at and delay exclude each other; metadata is"
        " k=v pairs; the destination's max_file_size",
    ),
    ("POST", "/api/v1/destinations/{destination}/sources"): (
        [422],
        "each source must be under a host of the destination; as for an upload",
    ),
    ("GET", "/api/v1/files"): ([422], "metadata is k=v pairs"),
    ("POST", "/api/v1/destinations/{name}/operations/{operation}"): (
        [422],
        "the stateful phase follows a link from a transfer's operation, which is not one of"
        " a destination's (the schema's enum says so; a link's value is not checked)",
    ),
    ("POST", "/api/v1/transfers/{id}/operations/{operation}"): (
        [422],
        "priority takes a value from 0 to 99, extend a positive number of seconds",
    ),
    ("POST", "/api/v1/transfers/operations/{operation}"): (
        [422],
        "at least one id (not required by the schema: a console form sends its ids in its"
        " body); as for one transfer's operation",
    ),
    **{
        (method, "/data/{path}"): (
            [400],
            "a path has no control characters; files are written into /DESTINATION/NAME",
        )
        for method in ("GET", "HEAD", "PUT", "DELETE")
    },
}


def schemathesis_config() -> str:
    """The run's configuration: the usual expectations, widened by `LEGITIMATE`."""
    usual = ["2xx", "401", "403", "404", "409", "429"]
    blocks = []
    for (method, path), (codes, _) in LEGITIMATE.items():
        statuses = ", ".join(f'"{s}"' for s in usual + [str(c) for c in codes])
        blocks.append(
            f'[[operations]]\ninclude-name = "{method} {path}"\n'
            f"checks.positive_data_acceptance.expected-statuses = [{statuses}]\n"
        )
    return "\n".join(blocks)


def test_schemathesis_finds_no_contract_break(running: Running, tmp_path: Path) -> None:
    one_line(running.admin.delete("/users/admin"), 409)
    config = tmp_path / "schemathesis.toml"
    config.write_text(schemathesis_config())
    command = [
        str(ST),
        "--config-file",
        str(config),
        "run",
        f"{running.base}/api/v1/openapi.json",
        "--url",
        running.base,
        "--header",
        f"Authorization: Bearer {running.token}",
        "--tls-verify",
        "false",
        "--checks",
        "all",
        # Bounded and the same every run: few examples, no randomness (no seed needed).
        "--max-examples",
        "5",
        "--generation-deterministic",
        "--max-failures",
        "20",
        "--workers",
        "2",
        "--request-timeout",
        "30",
        "--no-color",
    ]
    run = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,  # schemathesis keeps its cache in the working folder
        env=os.environ | {"SCHEMATHESIS_HOOKS": ""},
    )
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-4000:]
    # The fuzzer's admin is still there and still an active admin: it could not delete,
    # demote or deactivate itself (it may have changed its password: its token still works).
    one_line(running.admin.delete("/users/admin"), 409)
    assert running.admin.get("/users/admin").json()["admin"] is True
