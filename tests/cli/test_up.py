"""End to end: `ecpds up` in a temporary folder, the CLI and REST API against it, `ecpds down`.

`ecpds up` runs as a real subprocess (Temporal dev server, worker, portal); the CLI runs
in-process through CliRunner against the portal it started.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from amqtt.client import MQTTClient
from amqtt.errors import ConnectError
from peers.catalog import PG_URL, fresh_pg_schema, until
from typer.testing import CliRunner, Result

from ecpds.cli import supervisor as supervisor_module
from ecpds.cli.client import CliError
from ecpds.cli.main import app
from ecpds.core.devserver import free_port
from ecpds.core.roles import Role
from ecpds.core.settings import Settings

ECPDS = Path(sys.executable).parent / "ecpds"
PORTS = (
    "temporal_port",
    "temporal_ui_port",
    "https_port",
    "ftp_port",
    "sftp_port",
    "s3_port",
    "mqtt_port",
    "mqtts_port",
    "mqtt_ws_port",
    "worker_metrics_port",
    "worker_sdk_metrics_port",
)
SITE = """
[[host]]
name = "local1"
url = "file://{remote}"

[[destination]]
name = "dest1"
hosts = ["local1"]
max_connections = 2

[[destination]]
name = "mirror"

[[alias]]
name = "dest1-mirror"
source = "dest1"
target = "mirror"

[[user]]
name = "reader"
password = "${{READER_PASSWORD}}"
destinations = ["dest1"]
"""
READER_PASSWORD = "reader-secret-1"

runner = CliRunner()


@dataclass
class Running:
    home: Path
    env: dict[str, str]
    process: subprocess.Popen[str]
    output: str
    workers: frozenset[str] = frozenset({"worker"})  # the names of the first workers

    def port(self, name: str) -> int:
        return int(self.env[f"ECPDS_{name.upper()}"])

    @property
    def services(self) -> set[str]:
        embedded = "ECPDS_TEMPORAL_ADDRESS" not in self.env
        return {"up", "portal", *self.workers} | ({"temporal"} if embedded else set())

    @property
    def api(self) -> str:
        return f"https://127.0.0.1:{self.port('https_port')}/api/v1"

    def cli(self, *args: str, **env: str) -> Result:
        return runner.invoke(app, list(args), env={**self.env, **env})

    def admin(self) -> httpx.Client:
        saved = tomllib.loads((self.home / "admin.toml").read_text())
        auth = (saved["api_user"], saved["api_password"])
        return httpx.Client(base_url=self.api, auth=auth, verify=False, timeout=30)


def start(folder: Path, env: dict[str, str], *options: str) -> Running:
    process = subprocess.Popen(
        [str(ECPDS), "up", *options],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("ready:"):
            break
    output = "".join(lines)
    if process.poll() is not None:
        pytest.fail(f"ecpds up exited with code {process.returncode}:\n{output}")
    return Running(folder / "var", env, process, output)


def read_pids(home: Path) -> dict[str, int]:
    return supervisor_module.read_pids(home / "run" / "ecpds.pids")


def stop(running: Running, *, ctrl_c: bool = False, killed: bool = False) -> str:
    """Stop with `ecpds down` (or SIGINT, as Ctrl-C sends) and check that nothing is left.

    With `killed`, `ecpds up` dies first (SIGKILL) and `ecpds down` stops its children."""
    pids = read_pids(running.home)
    assert set(pids) == running.services
    if killed:
        running.process.kill()
        running.process.wait()
        again = runner.invoke(app, ["up"], env=running.env)
        assert again.exit_code == 1
        assert "left processes running" in again.stderr and "`ecpds down`" in again.stderr
    if ctrl_c:
        running.process.send_signal(signal.SIGINT)
    else:
        down = subprocess.run(
            [str(ECPDS), "down"],
            cwd=running.home.parent,
            env=running.env,
            capture_output=True,
            text=True,
        )
        assert down.returncode == 0, down.stderr
    rest, _ = running.process.communicate(timeout=120)
    assert running.process.returncode == (-signal.SIGKILL if killed else 0), rest
    for name, pid in pids.items():
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"{name} (pid {pid}) is alive"
    assert leftovers(running.home) == []
    assert not (running.home / "run" / "ecpds.pids").exists()
    return rest


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def leftovers(home: Path) -> list[str]:
    """Processes whose command line or environment names `home` (found through /proc)."""
    found = []
    marks = (str(home).encode(), f"ECPDS_HOME={home}".encode())
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if _zombie(int(proc.name)):
            continue
        if any(mark in cmdline for mark in marks) or marks[1] in environ.split(b"\0"):
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{proc.name}: {command}")
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    found += [line for line in ps.splitlines() if str(home) in line and "ps -eo" not in line]
    return found


@pytest.fixture(scope="module", params=["embedded", "external"])
def system(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    """`ecpds up` with its own Temporal dev server and SQLite, or with a running Temporal
    (and PostgreSQL when ECPDS_TEST_DATABASE_URL is set)."""
    if not ECPDS.exists():
        pytest.skip(f"the ecpds command is not installed beside {sys.executable}")
    folder = tmp_path_factory.mktemp("up")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECPDS_")}
    env |= {f"ECPDS_{name.upper()}": str(free_port()) for name in PORTS}
    env |= {"ECPDS_HOME": str(folder / "var"), "COLUMNS": "200"}
    if request.param == "external":
        env["ECPDS_TEMPORAL_ADDRESS"] = request.getfixturevalue("temporal_server")
        if PG_URL:
            env["ECPDS_DATABASE_URL"] = fresh_pg_schema(PG_URL)
    running = start(folder, env)
    try:
        yield running
    finally:
        if running.process.poll() is None:
            running.process.terminate()
            running.process.communicate(timeout=120)


def serves(url: str, family: str) -> bool:
    """Whether the metrics endpoint at `url` answers with metrics named `family`*."""
    return family in httpx.get(url, timeout=10).text


def test_up_prints_every_service_and_first_credentials(system: Running) -> None:
    password = tomllib.loads((system.home / "admin.toml").read_text())["api_password"]
    assert (system.home / "admin.toml").stat().st_mode & 0o777 == 0o600
    for text in (
        system.api,
        f"mqtt://127.0.0.1:{system.port('mqtt_port')}",
        f"mqtts://127.0.0.1:{system.port('mqtts_port')}",
        f"wss://127.0.0.1:{system.port('mqtt_ws_port')}",
        f"password {password}",
        f"https://127.0.0.1:{system.port('https_port')}/metrics",
    ):
        assert text in system.output
    # The worker's metrics and its Temporal SDK's, listed and answering.
    endpoints = (("worker_metrics_port", "ecpds_"), ("worker_sdk_metrics_port", "temporal_"))
    for port, family in endpoints:
        url = f"http://127.0.0.1:{system.port(port)}/metrics"
        assert url in system.output
        assert until(functools.partial(serves, url, family), f"{family} at {url}")
    scraped = httpx.get(f"https://127.0.0.1:{system.port('https_port')}/metrics", verify=False)
    assert "ecpds_transfers" in scraped.text
    if "temporal" not in system.services:
        assert system.env["ECPDS_TEMPORAL_ADDRESS"] in system.output
        assert "external (ECPDS_TEMPORAL_ADDRESS)" in system.output
        assert "Temporal UI" not in system.output
        if "ECPDS_DATABASE_URL" in system.env:
            assert "postgresql+psycopg://postgres@127.0.0.1:5432/test" in system.output
        return
    assert f"127.0.0.1:{system.port('temporal_port')}" in system.output
    ui_url = f"http://127.0.0.1:{system.port('temporal_ui_port')}"
    assert ui_url in system.output
    ui = httpx.get(f"{ui_url}/", timeout=30)
    assert ui.status_code == 200


def test_apply_site_twice_then_read_back(system: Running, tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text(SITE.format(remote=system.home.parent / "remote"))
    first = system.cli("apply", "-f", str(site), "--json", READER_PASSWORD=READER_PASSWORD)
    assert first.exit_code == 0, first.output
    assert sorted(json.loads(first.stdout)["created"]) == sorted(
        [
            "host local1",
            "destination dest1",
            "destination mirror",
            "alias dest1-mirror",
            "user reader",
        ]
    )
    again = system.cli("apply", "-f", str(site), "--json", READER_PASSWORD=READER_PASSWORD)
    assert again.exit_code == 0, again.output
    report = json.loads(again.stdout)
    assert report["created"] == [] and report["updated"] == []
    assert len(report["unchanged"]) == 5

    with system.admin() as api:
        dest1 = api.get("/destinations/dest1").json()
        assert dest1["hosts"] == ["local1"] and dest1["max_connections"] == 2
        assert api.get("/users/reader").json()["destinations"] == ["dest1"]
    with httpx.Client(base_url=system.api, verify=False, auth=("reader", READER_PASSWORD)) as api:
        assert [d["name"] for d in api.get("/destinations").json()] == ["dest1"]

    listed = system.cli("destination", "list", "--json")
    assert listed.exit_code == 0, listed.output
    assert sorted(d["name"] for d in json.loads(listed.stdout)) == ["dest1", "mirror"]
    host = json.loads(system.cli("host", "show", "local1", "--json").stdout)
    assert host["url"] == f"file://{system.home.parent / 'remote'}"
    aliases = json.loads(system.cli("alias", "list", "--json").stdout)
    assert [(a["source"], a["target"]) for a in aliases] == [("dest1", "mirror")]
    table = system.cli("destination", "list")
    assert table.exit_code == 0 and "dest1" in table.stdout and "local1" in table.stdout
    token = system.cli("token", "--label", "tests").stdout.strip()
    with_token = system.cli("host", "list", "--json", ECPDS_API_TOKEN=token)
    assert [h["name"] for h in json.loads(with_token.stdout)] == ["local1"]
    forged = system.cli("host", "list", ECPDS_API_TOKEN=token + "x")
    assert forged.exit_code == 1 and "HTTP 401" in forged.stderr

    draft = tmp_path / "draft.toml"
    draft.write_text(
        '[[destination]]\nname = "dest1"\nmax_connections = 3\n[[destination]]\nname = "draft"\n'
    )
    dry = system.cli("apply", "-f", str(draft), "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "dry run" in dry.stdout and "destination draft" in dry.stdout
    assert "destination dest1" in dry.stdout
    listed = system.cli("destination", "list", "--json")
    assert sorted(d["name"] for d in json.loads(listed.stdout)) == ["dest1", "mirror"]
    assert (
        json.loads(system.cli("destination", "show", "dest1", "--json").stdout)["max_connections"]
        == 2
    )


async def test_mqtt_broker_takes_data_user_logins(system: Running) -> None:
    broker = f"127.0.0.1:{system.port('mqtt_port')}"
    reader = MQTTClient(config={"auto_reconnect": False})
    await reader.connect(f"mqtt://reader:{READER_PASSWORD}@{broker}/")
    await reader.disconnect()
    with pytest.raises(ConnectError):
        await MQTTClient(config={"auto_reconnect": False}).connect(f"mqtt://reader:wrong@{broker}/")


def test_put_stores_the_file_with_its_md5(system: Running, tmp_path: Path) -> None:
    product = tmp_path / "forecast.grib"
    product.write_bytes(os.urandom(3 << 20) + b"end")
    result = system.cli("put", str(product), "-d", "dest1", "--json", "-m", "step=12")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    md5 = hashlib.md5(product.read_bytes()).hexdigest()
    assert answer["md5"] == md5 and answer["size"] == product.stat().st_size
    assert len(answer["transfers"]) == 2  # dest1 and its alias mirror
    stored = system.home / "store" / answer["id"][:2] / answer["id"]
    assert hashlib.md5(stored.read_bytes()).hexdigest() == md5
    with system.admin() as api:
        data_file = api.get(f"/files/{answer['id']}").json()
        assert data_file["md5"] == md5 and data_file["meta"] == {"step": "12"}
        transfers = {
            t["destination"]: t for t in (api.get(path).json() for path in transfer_paths(answer))
        }
        sent = settled(api, transfers["dest1"]["id"])
    assert sent["status"] == "DONE", sent["last_error"]
    delivered = system.home.parent / "remote" / "forecast.grib"
    assert hashlib.md5(delivered.read_bytes()).hexdigest() == md5
    # mirror has no dissemination host: its copy waits for portal pick-up.
    assert transfers["mirror"]["status"] == "HOLD"


def transfer_paths(answer: dict) -> list[str]:
    return [f"/transfers/{transfer_id}" for transfer_id in answer["transfers"]]


def settled(api: httpx.Client, transfer_id: int) -> dict:
    """The transfer once it is DONE, FAIL or STOP (or as it is after two minutes)."""
    deadline = time.monotonic() + 120
    while True:
        transfer = api.get(f"/transfers/{transfer_id}").json()
        if transfer["status"] in ("DONE", "FAIL", "STOP") or time.monotonic() > deadline:
            return transfer
        time.sleep(0.2)


def test_delete_then_apply_puts_it_back(system: Running, tmp_path: Path) -> None:
    deleted = system.cli("alias", "delete", "dest1-mirror")
    assert deleted.exit_code == 0, deleted.output
    assert json.loads(system.cli("alias", "list", "--json").stdout) == []
    gone = system.cli("alias", "show", "dest1-mirror")
    assert gone.exit_code == 1 and "dest1-mirror" in gone.stderr
    site = tmp_path / "site.toml"
    site.write_text(SITE.format(remote=system.home.parent / "remote"))
    again = system.cli("apply", "-f", str(site), "--json", READER_PASSWORD=READER_PASSWORD)
    assert again.exit_code == 0, again.output
    report = json.loads(again.stdout)
    assert report["created"] == ["alias dest1-mirror"] and report["updated"] == []


def test_bad_input_is_one_line_and_changes_nothing(system: Running, tmp_path: Path) -> None:
    def catalog() -> dict[str, set[str]]:
        # Names and ids only: the scheduler changes statuses while the test runs.
        with system.admin() as api:
            return {
                path: {
                    str(item["id"] if path == "/files" else item["name"])
                    for item in api.get(path).json()
                }
                for path in ("/destinations", "/hosts", "/users", "/files")
            }

    before = catalog()

    typo = tmp_path / "site.toml"
    typo.write_text('[[destination]]\nname = "x"\nmax_conections = 3\n')
    missing = tmp_path / "secret.toml"
    missing.write_text('[[user]]\nname = "u2"\npassword = "${NOT_SET_ANYWHERE}"\n')
    nocreds = tmp_path / "nocreds.toml"
    nocreds.write_text(
        '[[host]]\nname = "nocreds"\nurl = "sftp://someone@127.0.0.1:22/in"\n'
        '[[destination]]\nname = "newdest"\nhosts = ["nocreds"]\n'
    )
    product = tmp_path / "p.bin"
    product.write_bytes(b"payload")
    cases = [
        (system.cli("apply", "-f", str(nocreds)), "nocreds.toml: host 'nocreds'"),
        (
            system.cli("apply", "-f", str(typo)),
            "site.toml: destination 'x': unknown key 'max_conections'",
        ),
        (
            system.cli("apply", "-f", str(missing)),
            "environment variable 'NOT_SET_ANYWHERE' (in 'password') is not set",
        ),
        (
            system.cli("destination", "list", ECPDS_API_PASSWORD="wrong-password"),
            "refused the credentials of 'admin' (HTTP 401)",
        ),
        (system.cli("put", str(product), "-d", "nowhere"), "nowhere"),
        (system.cli("destination", "show", "nowhere"), "nowhere"),
    ]
    for result, message in cases:
        assert result.exit_code == 1, result.output
        error = result.stderr.strip().splitlines()[-1]  # put's progress bar comes first
        assert error.startswith("error: ") and message in error, result.stderr
        assert "Traceback" not in result.output

    assert catalog() == before


def test_down_stops_everything_and_up_again_keeps_data(system: Running) -> None:
    with system.admin() as api:
        files = {f["id"]: f["md5"] for f in api.get("/files").json()}
    admin_file = (system.home / "admin.toml").read_text()
    stop(system)

    again = start(system.home.parent, system.env)
    try:
        assert f"see {system.home / 'admin.toml'}" in again.output
        assert (system.home / "admin.toml").read_text() == admin_file
        with again.admin() as api:
            assert {f["id"]: f["md5"] for f in api.get("/files").json()} == files
            assert api.get("/destinations/dest1").json()["hosts"] == ["local1"]
        taken = runner.invoke(app, ["up"], env=again.env)
        assert taken.exit_code == 1
        assert "already running" in taken.stderr
    finally:
        # Ctrl-C with our own Temporal; with an external one, `ecpds up` is killed outright.
        embedded = "temporal" in again.services
        rest = stop(again, ctrl_c=embedded, killed=not embedded)
    if embedded:
        assert "SIGINT: stopping" in rest


def test_taken_port_is_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {f"ECPDS_{name.upper()}": str(free_port()) for name in PORTS}
        env |= {"ECPDS_HOME": str(tmp_path / "var"), "ECPDS_HTTPS_PORT": str(port)}
        result = runner.invoke(app, ["up"], env=env)
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"error: port {port} on 127.0.0.1 is taken: "
        "stop what uses it or set ECPDS_HTTPS_PORT to a free port"
    )
    assert not (tmp_path / "var" / "run" / "ecpds.pids").exists()


def test_external_temporal_that_does_not_answer(tmp_path: Path) -> None:
    env = {f"ECPDS_{name.upper()}": str(free_port()) for name in PORTS}
    address = f"127.0.0.1:{free_port()}"
    env |= {"ECPDS_HOME": str(tmp_path / "var"), "ECPDS_TEMPORAL_ADDRESS": address}
    result = runner.invoke(app, ["up"], env=env)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: Temporal at ECPDS_TEMPORAL_ADDRESS={address} does")
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "var" / "run" / "ecpds.pids").exists()


def test_a_child_that_dies_is_started_again(tmp_path: Path, temporal_server: str) -> None:
    """The worker killed (SIGKILL) once the system is up: `ecpds up` says so, starts a new
    one, and a product sent afterwards is delivered by it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECPDS_")}
    env |= {f"ECPDS_{name.upper()}": str(free_port()) for name in PORTS}
    env |= {"ECPDS_HOME": str(tmp_path / "var"), "ECPDS_TEMPORAL_ADDRESS": temporal_server}
    running = start(tmp_path, env)
    try:
        killed = read_pids(running.home)["worker"]
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while read_pids(running.home).get("worker") in (killed, None):
            assert running.process.poll() is None, running.process.communicate()[0]
            assert time.monotonic() < deadline, "the worker was never started again"
            time.sleep(0.2)
        assert Path(f"/proc/{read_pids(running.home)['worker']}").exists()
        remote = tmp_path / "remote"
        with running.admin() as api:
            made = api.post("/hosts", json={"name": "again-h", "url": f"file://{remote}"})
            assert made.status_code == 201, made.text
            made = api.post("/destinations", json={"name": "again", "hosts": ["again-h"]})
            assert made.status_code == 201, made.text
            sent = api.post("/destinations/again/files", params={"name": "a.grib"}, content=b"a")
            assert sent.status_code == 201, sent.text
            [transfer] = sent.json()["transfers"]
            while api.get(f"/transfers/{transfer}").json()["status"] != "DONE":
                assert time.monotonic() < deadline, api.get(f"/transfers/{transfer}").text
                time.sleep(0.3)
        assert (remote / "a.grib").read_bytes() == b"a"
    finally:
        rest = stop(running)
    log = running.home / "log" / "worker.log"
    assert f"worker exited with code -9 (see {log}): starting it again in 1 s" in rest
    assert "worker started again (pid " in rest


def test_a_child_that_keeps_dying_stops_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child that dies at each start (a real process) ends the supervision with its name,
    its log's last line and the count, once the pauses are spent."""
    monkeypatch.setattr(supervisor_module, "RESTART_PAUSES", (0.0, 0.0))
    settings = Settings(home=tmp_path / "var")
    (settings.home / "log").mkdir(parents=True)
    (settings.home / "run").mkdir()
    watch = supervisor_module.Supervisor(settings, supervisor_module.Stop())
    dying = [sys.executable, "-c", "import sys; print('bad setting: nope'); sys.exit(3)"]
    child = watch.start("worker", dying)
    starts = {child.pid}
    deadline = time.monotonic() + 60
    with pytest.raises(CliError) as stopped:
        while time.monotonic() < deadline:
            watch.keep_children()
            starts.add(child.pid)
            time.sleep(0.05)
    assert len(starts) == 3  # the first start and two more
    log = settings.home / "log" / "worker.log"
    assert str(stopped.value) == (
        f"worker exited with code 3 (see {log}): bad setting: nope; it died 3 times in a row"
    )


def scaling_env(tmp_path: Path, temporal_server: str) -> dict[str, str]:
    """`ecpds up` on its own task queues (no other test's backlog) with two slots a
    worker, one worker more per 4 waiting tasks and a 3 s scale-in wait."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECPDS_")}
    env |= {f"ECPDS_{name.upper()}": str(free_port()) for name in PORTS}
    return env | {
        "ECPDS_HOME": str(tmp_path / "var"),
        "ECPDS_TEMPORAL_ADDRESS": temporal_server,
        "ECPDS_TASK_QUEUE": f"scale-{tmp_path.name}",
        "ECPDS_WORKER_SLOTS": "2",
        "ECPDS_WORKER_SCALE_BACKLOG": "4",
        "ECPDS_WORKER_SCALE_IN_AFTER": "3",
    }


def queue_slow_sends(api: httpx.Client, remote: Path, name: str, count: int) -> list[int]:
    """`count` files of 1.5 MiB to destination `name` on a host at 1 MiB/s: each a (not
    local) activity of 1.5 s. Each test names its own destination: a destination's
    scheduler workflow is named after it, and Temporal is the same for every test."""
    host = {"name": "slow-h", "url": f"file://{remote}", "options": {"max_rate": 1 << 20}}
    made = api.post("/hosts", json=host)
    assert made.status_code == 201, made.text
    made = api.post(
        "/destinations", json={"name": name, "hosts": ["slow-h"], "max_connections": 50}
    )
    assert made.status_code == 201, made.text
    data = b"d" * (3 << 19)
    transfers = []
    for n in range(count):
        sent = api.post(f"/destinations/{name}/files", params={"name": f"{n}.bin"}, content=data)
        assert sent.status_code == 201, sent.text
        transfers += sent.json()["transfers"]
    return transfers


def wait_until_done(api: httpx.Client, transfers: list[int], deadline: float) -> None:
    """Every transfer DONE, none failing on the way."""
    statuses: dict[int, str] = {}
    while set(statuses.values()) != {"DONE"}:
        assert time.monotonic() < deadline, statuses
        shown = [api.get(f"/transfers/{t}").json() for t in transfers]
        # A failed send leaves its error, even on a transfer queued (WAIT) again.
        failed = [t for t in shown if t["last_error"] or t["status"] in ("FAIL", "RETR")]
        assert not failed, failed
        statuses = {t["id"]: t["status"] for t in shown}
        time.sleep(0.5)


def test_workers_follow_the_backlog(tmp_path: Path, temporal_server: str) -> None:
    """`ecpds up --workers 1..3` with two slots a worker: a backlog of slow sends starts
    two more workers, which are stopped once it is gone; every transfer is DONE."""
    running = start(tmp_path, scaling_env(tmp_path, temporal_server), "--workers", "1..3")
    started = time.monotonic()
    timings = {}
    try:
        assert "1..3 workers by backlog" in running.output
        remote = tmp_path / "remote"
        with running.admin() as api:
            transfers = queue_slow_sends(api, remote, "slow", 40)
            started = time.monotonic()
            deadline = started + 120
            while set(read_pids(running.home)) != running.services | {"worker-2", "worker-3"}:
                assert time.monotonic() < deadline, read_pids(running.home)
                time.sleep(0.2)
            timings["to 3 workers"] = time.monotonic() - started
            wait_until_done(api, transfers, deadline)
            timings["all done"] = time.monotonic() - started
            while set(read_pids(running.home)) != running.services:
                assert time.monotonic() < deadline, read_pids(running.home)
                time.sleep(0.2)
            timings["back to 1 worker"] = time.monotonic() - started
    finally:
        rest = stop(running)
    print(f"scaling times (s): {timings}")
    assert "scaled to 3 workers: backlog " in rest
    assert "scaled to 1 worker: backlog " in rest
    assert "started again" not in rest  # the retired workers stayed stopped
    assert sorted(p.name for p in remote.iterdir()) == sorted(f"{n}.bin" for n in range(40))


def test_each_role_follows_its_own_backlog(tmp_path: Path, temporal_server: str) -> None:
    """`--workers dissemination=1..3,acquisition=1..2,auxiliary=1`: a pool of
    `ecpds worker --role R` per role. A backlog of slow sends on the dissemination queue
    grows its pool to 3 and back to 1, while the acquisition pool, which could grow, keeps
    its one worker; every transfer is DONE."""
    env = scaling_env(tmp_path, temporal_server)
    plan = "dissemination=1..3,acquisition=1..2,auxiliary=1"
    running = start(tmp_path, env, "--workers", plan)
    running.workers = frozenset(f"worker-{role}" for role in Role)
    queue = env["ECPDS_TASK_QUEUE"]
    started = time.monotonic()
    timings = {}
    seen: set[str] = set()  # every name the pids file listed
    try:
        assert f"1..3 workers by backlog, task queue {queue}," in running.output
        assert f"1..2 workers by backlog, task queue {queue}-acquisition," in running.output
        assert f"1 worker, task queue {queue}-auxiliary," in running.output
        for role in Role:
            command = (running.home / "log" / f"worker-{role}.log").read_text().splitlines()[0]
            assert command.endswith(f"ecpds.cli.main worker --role {role}"), command
        remote = tmp_path / "remote"
        grown = running.services | {"worker-dissemination-2", "worker-dissemination-3"}
        with running.admin() as api:
            transfers = queue_slow_sends(api, remote, "slow-by-role", 24)
            started = time.monotonic()
            deadline = started + 120
            while not grown <= seen:
                assert time.monotonic() < deadline, sorted(seen)
                seen |= set(read_pids(running.home))
                time.sleep(0.2)
            timings["to 3 dissemination workers"] = time.monotonic() - started
            wait_until_done(api, transfers, deadline)
            timings["all done"] = time.monotonic() - started
            while (names := set(read_pids(running.home))) != running.services:
                assert time.monotonic() < deadline, names
                seen |= names
                time.sleep(0.2)
            timings["back to 1 dissemination worker"] = time.monotonic() - started
    finally:
        rest = stop(running)
        print(rest)
    print(f"scaling times (s): {timings}")
    assert seen == grown  # no second acquisition (or auxiliary) worker, ever
    assert "scaled to 3 dissemination workers: backlog " in rest
    assert "scaled to 1 dissemination worker: backlog " in rest
    assert "acquisition worker" not in rest
    assert "started again" not in rest
    assert sorted(p.name for p in remote.iterdir()) == sorted(f"{n}.bin" for n in range(24))


def test_bad_worker_range_is_one_line_error(tmp_path: Path) -> None:
    env = {"ECPDS_HOME": str(tmp_path / "var")}
    result = runner.invoke(app, ["up", "--workers", "3..1"], env=env)
    assert result.exit_code == 1
    assert result.stderr == (
        "error: --workers '3..1' is not a count or MIN..MAX range (such as 1..4) of at least"
        " one worker\n"
    )


@pytest.mark.parametrize(
    ("workers", "error"),
    [
        (
            "dissemination=1..4,archive=1",
            "'archive' is not a role (the roles: dissemination, acquisition, auxiliary)",
        ),
        ("dissemination=1..4,dissemination=2", "dissemination is given twice"),
        (
            "dissemination=4..1",
            "'4..1' is not a count or MIN..MAX range (such as 1..4) of at least one worker",
        ),
        ("1..4,acquisition=2", "'1..4' is not ROLE=RANGE (such as dissemination=1..4)"),
    ],
)
def test_bad_worker_ranges_by_role_are_one_line_errors(
    tmp_path: Path, workers: str, error: str
) -> None:
    env = {"ECPDS_HOME": str(tmp_path / "var")}
    result = runner.invoke(app, ["up", "--workers", workers], env=env)
    assert result.exit_code == 1
    assert result.stderr == f"error: --workers {workers!r}: {error}\n"
    # The same from the setting, when --workers is not given.
    result = runner.invoke(app, ["up"], env=env | {"ECPDS_WORKERS": workers})
    assert result.exit_code == 1
    assert result.stderr == f"error: ECPDS_WORKERS {workers!r}: {error}\n"
