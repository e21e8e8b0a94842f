"""A second shell finds the running system: `ecpds up` on other ports, in another folder.

Two real `ecpds up` (each with its own worker and portal, on one external Temporal) run
in their own folders; the `ecpds` command runs from a third folder with no ECPDS_*
setting and must find them through the state files they write.
"""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
import uuid
from pathlib import Path

import pytest

from ecpds.cli.running import process_start, same_process
from ecpds.cli.supervisor import read_pids, write_pids
from ecpds.core.devserver import free_port

from .test_up import ECPDS, PORTS, Running, leftovers, start


@pytest.fixture
def base_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECPDS_")}
    return env | {"XDG_STATE_HOME": str(tmp_path / "state"), "COLUMNS": "200"}


def up_in(folder: Path, base_env: dict[str, str], temporal: str) -> Running:
    """`ecpds up` started in `folder` (so its state is in folder/var) on free ports."""
    folder.mkdir()
    env = base_env | {f"ECPDS_{name.upper()}": str(free_port()) for name in PORTS}
    # Its own task queue: the two systems share one Temporal server.
    env |= {"ECPDS_TEMPORAL_ADDRESS": temporal, "ECPDS_TASK_QUEUE": f"q-{uuid.uuid4().hex[:8]}"}
    return start(folder, env)


def test_cli_in_another_folder_finds_the_running_system(
    tmp_path: Path, base_env: dict[str, str], temporal_server: str
) -> None:
    if not ECPDS.exists():
        pytest.skip(f"the ecpds command is not installed beside {ECPDS.parent}")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def ecpds(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(ECPDS), *args], cwd=elsewhere, env=base_env | env, capture_output=True, text=True
        )

    first = up_in(tmp_path / "first", base_env, temporal_server)
    second: Running | None = None
    try:
        state = tomllib.loads((first.home / "run" / "ecpds.toml").read_text())
        assert state["home"] == str(first.home) and state["pid"] == first.process.pid
        assert state["api_url"] == f"https://127.0.0.1:{first.port('https_port')}/api/v1"
        assert state["addresses"]["sftp_port"] == first.port("sftp_port")
        assert state["admin_file"] == str(first.home / "admin.toml")
        admin = tomllib.loads((first.home / "admin.toml").read_text())
        assert admin["api_password"] not in (first.home / "run" / "ecpds.toml").read_text()
        rows = {line.strip("│ ").split(" ")[0] for line in first.output.splitlines()}
        assert {"State", "CLI"} <= rows, first.output  # where others find it, how to run it

        found = ecpds("host", "list", "--json")
        assert found.returncode == 0, found.stderr
        assert json.loads(found.stdout) == []

        second = up_in(tmp_path / "second", base_env, temporal_server)
        site = tmp_path / "site.toml"
        site.write_text('[[host]]\nname = "only-second"\nurl = "file:///tmp/only-second"\n')
        applied = ecpds("apply", "-f", str(site), ECPDS_HOME=str(second.home))
        assert applied.returncode == 0, applied.stderr

        which = ecpds("host", "list")
        assert which.returncode == 1
        assert which.stderr.strip() == (
            f"error: 2 systems are running ({first.home}, {second.home}): set ECPDS_HOME to one"
        )

        down = ecpds("down", ECPDS_HOME=str(second.home))
        assert down.returncode == 0, down.stderr
        assert f"in {second.home}" in down.stdout
        second.process.communicate(timeout=120)
        assert second.process.returncode == 0
        assert not (second.home / "run" / "ecpds.toml").exists()

        hosts = ecpds("host", "list", "--json")
        assert hosts.returncode == 0, hosts.stderr
        assert json.loads(hosts.stdout) == []  # the first system's catalog, not the second's

        down = ecpds("down")
        assert down.returncode == 0, down.stderr
        assert f"in {first.home}" in down.stdout
        first.process.communicate(timeout=120)
        assert first.process.returncode == 0
    finally:
        for system in (first, second):
            if system is not None and system.process.poll() is None:
                system.process.terminate()
                system.process.communicate(timeout=120)
    assert leftovers(first.home) == [] and second is not None and leftovers(second.home) == []
    assert list((tmp_path / "state" / "ecpds" / "running").iterdir()) == []

    gone = ecpds("host", "list")
    assert gone.returncode == 1
    assert gone.stderr.strip() == (
        f"error: no `ecpds up` runs in {elsewhere / 'var'} or elsewhere for this user: "
        "start one, or set ECPDS_HOME to its var/ folder"
    )


def test_a_pid_given_to_another_process_since_is_not_ours(tmp_path: Path) -> None:
    """pids wrap around fast on a busy machine: a stale pid file (an `ecpds up` killed
    outright) must not make `ecpds down` signal whoever has one of its pids now."""
    me = os.getpid()
    start = process_start(me)
    assert start is not None and start.isdigit()
    child = subprocess.Popen(["true"])
    child.wait()  # a pid no process has now
    pids = tmp_path / "ecpds.pids"
    pids.write_text(f"worker {me} {start}\nportal {me} 1\ngone {child.pid} 5\nold {me}\n")
    assert read_pids(pids) == {"worker": me, "gone": child.pid, "old": me}
    write_pids(pids, {"up": me})
    assert pids.read_text() == f"up {me} {start}\n"
    assert same_process(me, start) and not same_process(me, "1")
