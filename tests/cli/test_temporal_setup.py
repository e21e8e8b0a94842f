"""`ecpds temporal setup` against a real dev server started without ecpds's search attributes,
as an external Temporal is until they are registered."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers.temporal import running_dev_server
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from typer.testing import CliRunner, Result

from cli.test_up import ECPDS, PORTS, start, stop
from ecpds.cli.main import app
from ecpds.core.devserver import dev_server_command, free_port, temporal_binary
from ecpds.core.engine import PRIORITY, SEARCH_ATTRIBUTES
from ecpds.core.temporal_setup import create_command
from ecpds.workers.worker import warn_of_missing_search_attributes

runner = CliRunner()
CLASHING = "clashing"  # a namespace where Priority is already a Keyword
FOR_UP = "for-up"  # a namespace left to `ecpds up`
BY_HAND = "by-hand"  # a namespace registered with the command ecpds advises


@pytest.fixture(scope="module")
def bare_temporal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A dev server whose namespaces have none of ecpds's search attributes; its host:port."""
    folder = tmp_path_factory.mktemp("bare-temporal")
    port, ui_port = free_port(), free_port()
    command = dev_server_command(
        folder / "temporal.db", port, ui_port, ui=False, search_attributes=False
    )
    command = [*command, "--namespace", CLASHING, "--namespace", FOR_UP, "--namespace", BY_HAND]
    with running_dev_server(folder, command, port) as address:
        yield address


def registered(address: str, namespace: str) -> dict[str, int]:
    async def listing() -> dict[str, int]:
        client = await Client.connect(address, namespace=namespace)
        answer = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=namespace)
        )
        return dict(answer.custom_attributes)

    return asyncio.run(listing())


def setup(address: str, home: Path, namespace: str = "default") -> Result:
    env = {
        "ECPDS_HOME": str(home),
        "ECPDS_CONFIG": "",
        "ECPDS_TEMPORAL_ADDRESS": address,
        "ECPDS_TEMPORAL_NAMESPACE": namespace,
    }
    return runner.invoke(app, ["temporal", "setup"], env=env)


def test_setup_registers_the_missing_attributes_once(
    bare_temporal: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    names = {key.name for key in SEARCH_ATTRIBUTES}
    assert not names & set(registered(bare_temporal, "default"))

    async def worker_start() -> None:
        client = await Client.connect(bare_temporal)
        await warn_of_missing_search_attributes(client, "default")

    with caplog.at_level(logging.WARNING, logger="ecpds.workers.worker"):
        asyncio.run(worker_start())
    warning = caplog.messages[-1]
    assert all(name in warning for name in names)
    assert "ecpds temporal setup" in warning

    first = setup(bare_temporal, tmp_path)
    assert first.exit_code == 0, first.output
    assert first.output.startswith("registered search attributes ")
    assert all(name in first.output for name in names)
    now = registered(bare_temporal, "default")
    for key in SEARCH_ATTRIBUTES:
        assert now.get(key.name) == int(key.indexed_value_type), key.name

    second = setup(bare_temporal, tmp_path)
    assert second.exit_code == 0, second.output
    assert second.output.startswith("nothing was missing: namespace default")

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ecpds.workers.worker"):
        asyncio.run(worker_start())
    assert caplog.messages == []


def test_an_attribute_of_another_type_is_one_line(bare_temporal: str, tmp_path: Path) -> None:
    async def clash() -> None:
        client = await Client.connect(bare_temporal, namespace=CLASHING)
        keyword = IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                search_attributes={PRIORITY.name: keyword}, namespace=CLASHING
            )
        )

    asyncio.run(clash())
    result = setup(bare_temporal, tmp_path, namespace=CLASHING)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "Priority is INDEXED_VALUE_TYPE_KEYWORD, not Int" in lines[0]
    assert registered(bare_temporal, CLASHING) == {PRIORITY.name: 2}


def test_an_unreachable_server_is_one_line(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    result = setup(address, tmp_path)
    assert result.exit_code == 1
    assert result.output.startswith(f"error: cannot reach Temporal at {address}")
    assert len(result.output.strip().splitlines()) == 1


def test_up_registers_them_on_an_external_temporal(bare_temporal: str, tmp_path: Path) -> None:
    if not ECPDS.exists():
        pytest.skip(f"the ecpds command is not installed beside {ECPDS.parent}")
    assert registered(bare_temporal, FOR_UP) == {}
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECPDS_")}
    env |= {f"ECPDS_{name.upper()}": str(free_port()) for name in PORTS}
    env |= {
        "ECPDS_HOME": str(tmp_path / "var"),
        "ECPDS_TEMPORAL_ADDRESS": bare_temporal,
        "ECPDS_TEMPORAL_NAMESPACE": FOR_UP,
        "COLUMNS": "200",
    }
    running = start(tmp_path, env)
    try:
        names = ", ".join(key.name for key in SEARCH_ATTRIBUTES)
        assert f"registered search attributes {names} on {bare_temporal}" in running.output
        now = registered(bare_temporal, FOR_UP)
        assert now == {key.name: int(key.indexed_value_type) for key in SEARCH_ATTRIBUTES}
    finally:
        stop(running)
    assert "lacks the search attributes" not in (running.home / "log" / "worker.log").read_text()


def test_the_advised_temporal_command_registers_them(bare_temporal: str) -> None:
    """What ecpds tells an operator to run when it may not register them itself."""
    advice = create_command(list(SEARCH_ATTRIBUTES), BY_HAND)
    for command in advice.split(" && "):
        words = command.split()
        assert words[0] == "temporal"
        run = [temporal_binary(), *words[1:], "--address", bare_temporal]
        done = subprocess.run(run, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    now = registered(bare_temporal, BY_HAND)
    assert now == {key.name: int(key.indexed_value_type) for key in SEARCH_ATTRIBUTES}
