"""`ecpds up` and `ecpds down`: Temporal's dev server, a worker and the portal as child
processes, each in its own process group, watched until Ctrl-C, SIGTERM or `ecpds down`.

A child that dies once the system is up is started again after a growing pause, as a
service manager would; one that keeps dying soon after each start stops everything, with
its name and its log. A worker retired on purpose (cli/autoscale.py) is not started again."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import httpx
from rich.table import Table
from sqlalchemy.engine import make_url

from ecpds.cli import running
from ecpds.cli.client import CliError
from ecpds.cli.resources import console
from ecpds.cli.running import alive, same_process
from ecpds.cli.temporal import setup_search_attributes
from ecpds.core.devserver import DevServerError, dev_server_command, wait_for_temporal
from ecpds.core.settings import Settings, with_worker_metrics

if TYPE_CHECKING:
    from ecpds.cli.autoscale import WorkerPlan, WorkerPools

STARTUP_SECONDS = 180.0  # the first start migrates the catalog and hashes the admin password
GRACE_SECONDS = 20.0  # after SIGTERM, before SIGKILL (and a worker's own grace)
RESTART_PAUSES = (1.0, 2.0, 5.0, 10.0, 30.0)  # before each new start of a child that died
STEADY_SECONDS = 60.0  # a child up this long starts its restart count afresh
# (label, setting, URL scheme shown before host:port or "")
EXTRA_PORTS = (
    ("FTP", "ftp_port", ""),
    ("SFTP", "sftp_port", ""),
    ("S3", "s3_port", ""),
    ("MQTT", "mqtt_port", "mqtt://"),
    ("MQTTS", "mqtts_port", "mqtts://"),
    ("MQTT WebSocket", "mqtt_ws_port", "wss://"),
)

# (label, setting) of the worker's Prometheus endpoints
WORKER_METRICS = (
    ("Worker metrics", "worker_metrics_port"),
    ("Temporal SDK metrics", "worker_sdk_metrics_port"),
)


@dataclass
class Child:
    name: str
    log: Path
    process: subprocess.Popen[bytes]
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)  # over the supervisor's own
    started: float = field(default_factory=time.monotonic)
    failures: int = 0  # deaths soon after a start, in a row
    restart_at: float | None = None  # when it died: the time of its next start

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class Stop:
    """Set by SIGINT, SIGTERM or SIGHUP; the supervisor checks it between steps."""

    signal_name: str = ""
    previous: dict[int, object] = field(default_factory=dict)

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        self.signal_name = signal.Signals(signum).name

    def __bool__(self) -> bool:
        return bool(self.signal_name)

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self.previous[sig] = signal.signal(sig, self)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


def run_folder(settings: Settings) -> Path:
    return settings.home / "run"


def pid_file(settings: Settings) -> Path:
    return run_folder(settings) / "ecpds.pids"


def read_pids(path: Path) -> dict[str, int]:
    """The pids written by `write_pids`, less those now given to another process: each
    line names a child, its pid and when it started, so a stale file (an `ecpds up`
    killed outright) never makes `ecpds down` signal a stranger that has the pid since."""
    pids: dict[str, int] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            name, pid, start = ([*line.split(), "", ""])[:3]
            if not pid.isdigit():
                continue
            if not alive(int(pid)) or same_process(int(pid), start or None):
                pids[name] = int(pid)
    return pids


def write_pids(path: Path, pids: dict[str, int]) -> None:
    partial = path.with_suffix(".part")
    lines = [
        f"{name} {pid} {running.process_start(pid) or ''}".rstrip() for name, pid in pids.items()
    ]
    partial.write_text("".join(f"{line}\n" for line in lines))
    partial.replace(path)


def stop_grace(settings: Settings) -> float:
    """How long a child may take to stop after SIGTERM: a worker lets its running
    activities finish for worker_grace_seconds first."""
    return GRACE_SECONDS + settings.worker_grace_seconds


def signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def check_ports_free(settings: Settings, embedded_temporal: bool) -> None:
    """Every port we are about to open must be free; name the setting that moves it."""
    wanted = [("https_port", settings.bind, settings.https_port)]
    wanted += [(attr, settings.bind, getattr(settings, attr)) for _, attr, _ in EXTRA_PORTS]
    if embedded_temporal:
        wanted += [
            ("temporal_port", "127.0.0.1", settings.temporal_port),
            ("temporal_ui_port", "127.0.0.1", settings.temporal_ui_port),
        ]
    seen: dict[int, str] = {}
    for attr, host, port in wanted:
        env = f"ECPDS_{attr.upper()}"
        if port in seen:
            raise CliError(f"port {port} is set for both {seen[port]} and {env}: change one")
        seen[port] = env
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                raise CliError(
                    f"port {port} on {host} is taken: stop what uses it or set {env} to a free port"
                ) from None


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def last_line(log: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        if lines:
            return lines[-1].strip()[:300]
    return ""


class Supervisor:
    def __init__(self, settings: Settings, stop: Stop) -> None:
        self.settings = settings
        self.home = settings.home.resolve()
        self.stop = stop
        self.children: list[Child] = []
        self.retired: dict[str, tuple[Child, float]] = {}  # stopping on purpose: the deadline
        self.pids: dict[str, int] = {"up": os.getpid()}
        self.logs = self.home / "log"

    def _spawn(
        self, log_path: Path, command: list[str], extra_env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        env = dict(os.environ, ECPDS_HOME=str(self.home), **extra_env)
        with log_path.open("ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
            log.flush()
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # own process group: Ctrl-C reaches only us
            )

    def start(self, name: str, command: list[str], env: dict[str, str] | None = None) -> Child:
        log_path = self.logs / f"{name}.log"
        env = env or {}
        child = Child(name, log_path, self._spawn(log_path, command, env), command, env)
        self.children.append(child)
        self.pids[name] = child.pid
        write_pids(pid_file(self.settings), self.pids)
        return child

    def retire(self, child: Child) -> None:
        """SIGTERM a child that is not to run any more; `reap_retired` sees it gone."""
        self.children.remove(child)
        signal_group(child.pid, signal.SIGTERM)
        self.retired[child.name] = (child, time.monotonic() + stop_grace(self.settings))

    def reap_retired(self) -> None:
        """Forget the retired children that have stopped; SIGKILL those past their grace."""
        for name, (child, deadline) in list(self.retired.items()):
            if child.process.poll() is None:
                if time.monotonic() < deadline:
                    continue
                console.print(f"{name} did not stop within its grace: killing it")
                signal_group(child.pid, signal.SIGKILL)
                child.process.wait()
            signal_group(child.pid, signal.SIGKILL)  # what it left in its group
            del self.retired[name]
            self.pids.pop(name, None)
            write_pids(pid_file(self.settings), self.pids)

    def _died(self, child: Child, code: int) -> str:
        tail = last_line(child.log)
        if tail.startswith("--- "):  # only the header of its start: it said nothing
            tail = ""
        return f"{child.name} exited with code {code} (see {child.log})" + (
            f": {tail}" if tail else ""
        )

    def keep_children(self) -> None:
        """Once up: start again, after a pause, a child that died; CliError if one keeps
        dying within STEADY_SECONDS of each start (RESTART_PAUSES times in a row)."""
        now = time.monotonic()
        for child in self.children:
            code = child.process.poll()
            if code is None:
                if now - child.started >= STEADY_SECONDS:
                    child.failures = 0
                continue
            if child.restart_at is None:
                signal_group(child.pid, signal.SIGKILL)  # what it left in its group
                died = self._died(child, code)
                if now - child.started >= STEADY_SECONDS:
                    child.failures = 0
                if child.failures >= len(RESTART_PAUSES):
                    raise CliError(f"{died}; it died {child.failures + 1} times in a row")
                pause = RESTART_PAUSES[child.failures]
                child.failures += 1
                child.restart_at = now + pause
                console.print(f"{died}: starting it again in {pause:.0f} s")
            elif now >= child.restart_at:
                child.process = self._spawn(child.log, child.command, child.env)
                child.started, child.restart_at = now, None
                self.pids[child.name] = child.pid
                write_pids(pid_file(self.settings), self.pids)
                console.print(f"{child.name} started again (pid {child.pid})")

    def check_children(self) -> None:
        for child in self.children:
            code = child.process.poll()
            if code is not None:
                raise CliError(self._died(child, code))

    def wait_for(self, child: Child, host: str, port: int) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not answers(host, port):
            if self.stop:
                return
            self.check_children()
            if time.monotonic() > deadline:
                raise CliError(
                    f"{child.name} does not answer on {host}:{port} after "
                    f"{STARTUP_SECONDS:.0f} s (see {child.log})"
                )
            time.sleep(0.2)

    def terminate(self) -> None:
        """SIGTERM every child group, newest first, the dev server last (the workers
        finish their activities with it); SIGKILL what is left after the grace."""
        everyone = [*reversed(self.children), *(child for child, _ in self.retired.values())]
        last = [child for child in everyone if child.name == "temporal"]
        for wave in ([child for child in everyone if child not in last], last):
            self._stop(wave)

    def _stop(self, children: list[Child]) -> None:
        for child in children:
            signal_group(child.pid, signal.SIGTERM)
        grace = stop_grace(self.settings)
        deadline = time.monotonic() + grace
        for child in children:
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                console.print(f"{child.name} did not stop within {grace:.0f} s: killing it")
                signal_group(child.pid, signal.SIGKILL)
                child.process.wait()
            # Sweep anything the child left behind in its group.
            signal_group(child.pid, signal.SIGKILL)
        running.forget(self.settings)
        with contextlib.suppress(FileNotFoundError):
            pid_file(self.settings).unlink()


def _openapi_answers(schema_url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(schema_url, verify=False, timeout=5).status_code == 200
    return False


def _admin_note(settings: Settings, first_start: bool) -> str:
    if settings.admin_password_file is not None:
        return f"the password in {settings.admin_password_file}"
    admin_file = settings.admin_file.resolve()
    if first_start and admin_file.is_file():
        with contextlib.suppress(OSError, tomllib.TOMLDecodeError, KeyError):
            saved = tomllib.loads(admin_file.read_text())
            return f"password {saved['api_password']} (created now, saved in {admin_file})"
    return f"see {admin_file}"


def service_table(
    settings: Settings, supervisor: Supervisor, workers: WorkerPools, first_start: bool
) -> Table:
    table = Table(title=f"ecpds in {supervisor.home}")
    for column in ("service", "address", "notes"):
        table.add_column(column, overflow="fold")
    if settings.temporal_address:
        table.add_row("Temporal", settings.temporal_address, "external (ECPDS_TEMPORAL_ADDRESS)")
    else:
        table.add_row(
            "Temporal gRPC",
            settings.temporal_target,
            f"dev server, SQLite {supervisor.home / 'temporal.db'}",
        )
        table.add_row("Temporal UI", f"http://127.0.0.1:{settings.temporal_ui_port}", "Web UI")
    for pool in workers.pools:
        service, notes = pool.description()
        table.add_row(service, "", notes)
    worker = with_worker_metrics(settings)
    for label, attr in WORKER_METRICS:
        port = getattr(worker, attr)
        if port:
            note = "" if answers(settings.public_host, port) else "not answering: see its log"
            table.add_row(label, f"http://{settings.public_host}:{port}/metrics", note)
    base = f"https://{settings.public_host}:{settings.https_port}"
    table.add_row("Portal HTTPS", base, "self-signed unless ECPDS_TLS_CERT is set")
    table.add_row("REST API", settings.portal_url, "")
    login = "no login" if settings.metrics_public else "admins only"
    table.add_row("Portal metrics", f"{base}/metrics", f"Prometheus, {login}")
    if _openapi_answers(f"{base}/api/v1/openapi.json"):
        table.add_row("OpenAPI docs", f"{base}/api/v1/docs", f"schema {base}/api/v1/openapi.json")
    for label, attr, scheme in EXTRA_PORTS:
        port = getattr(settings, attr)
        if answers(settings.public_host, port):
            address = f"{scheme}{settings.public_host}:{port}"
            note = f"ECPDS_{attr.upper()}"
            if attr == "ftp_port" and settings.ftp_passive_ports:
                note += f"; passive data ports {settings.ftp_passive_ports}"
            table.add_row(label, address, note)
    catalog = make_url(settings.catalog_url).render_as_string(hide_password=True)
    table.add_row("Catalog", catalog, "")
    table.add_row("Store", ", ".join(settings.store_urls), "")
    table.add_row("Admin", settings.api_user, _admin_note(settings, first_start))
    table.add_row("Logs", str(supervisor.logs), f"pids in {pid_file(settings).resolve()}")
    table.add_row("State", str(running.state_file(supervisor.home)), "where other shells find it")
    table.add_row("CLI", *cli_command())
    return table


def cli_command() -> tuple[str, str]:
    """The `ecpds` command beside this interpreter, and how to have it on the PATH."""
    command = Path(sys.executable).parent / "ecpds"
    if shutil.which("ecpds") == str(command):
        return str(command), "on the PATH"
    return str(command), f"or `source {command.parent / 'activate'}` to type just `ecpds`"


def state_notes(settings: Settings) -> dict[str, str]:
    notes = {"temporal": settings.temporal_target}
    if not settings.temporal_address:
        notes["temporal_ui"] = f"http://127.0.0.1:{settings.temporal_ui_port}"
    return notes


def register_search_attributes(settings: Settings) -> None:
    """An external Temporal lacks ecpds's search attributes until they are registered: do
    it now, or say in one line what is missing (workflows that set them fail until then)."""
    try:
        added = setup_search_attributes(settings)
    except CliError as exc:
        console.print(f"warning: {exc}", markup=False, soft_wrap=True)
        return
    if added:
        names = ", ".join(added)
        console.print(f"registered search attributes {names} on {settings.temporal_target}")


def child_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ecpds.cli.main", *args]


def up(settings: Settings, config: Path | None, workers: WorkerPlan) -> int:
    """Start everything, print the service table, and supervise until told to stop."""
    from ecpds.cli.autoscale import WorkerPools  # it imports this module

    previous = read_pids(pid_file(settings))
    if previous.get("up") and alive(previous["up"]):
        raise CliError(
            f"ecpds is already running in {settings.home.resolve()} (pid {previous['up']}): "
            "`ecpds down` stops it"
        )
    left = [f"{name} {pid}" for name, pid in previous.items() if alive(pid)]
    if left:
        raise CliError(
            f"a previous `ecpds up` left processes running ({', '.join(left)}): "
            "`ecpds down` stops them"
        )
    embedded = not settings.temporal_address
    check_ports_free(settings, embedded)
    if not embedded:
        host, _, port = settings.temporal_address.rpartition(":")
        if not port.isdigit() or not answers(host or "127.0.0.1", int(port)):
            raise CliError(
                f"Temporal at ECPDS_TEMPORAL_ADDRESS={settings.temporal_address} does not answer: "
                "start it, or unset ECPDS_TEMPORAL_ADDRESS to run the embedded dev server"
            )
        register_search_attributes(settings)
    settings.home.mkdir(parents=True, exist_ok=True)
    (settings.home / "log").mkdir(exist_ok=True)
    run_folder(settings).mkdir(exist_ok=True)
    if config is not None:
        os.environ["ECPDS_CONFIG"] = str(config.resolve())
    first_start = not settings.admin_file.exists()

    stop = Stop()
    stop.install()
    supervisor = Supervisor(settings, stop)
    pools = WorkerPools.planned(supervisor, settings, workers)
    try:
        with console.status("starting", spinner="dots") as status:
            if embedded:
                try:
                    temporal_cmd = dev_server_command(
                        supervisor.home / "temporal.db",
                        settings.temporal_port,
                        settings.temporal_ui_port,
                        ui=True,
                    )
                except DevServerError as exc:
                    raise CliError(str(exc)) from None
                status.update("starting Temporal's dev server")
                temporal = supervisor.start("temporal", temporal_cmd)
                supervisor.wait_for(temporal, "127.0.0.1", settings.temporal_port)
                try:
                    wait_for_temporal(
                        settings.temporal_port,
                        STARTUP_SECONDS,
                        temporal.process,
                        cancelled=lambda: bool(stop),
                    )
                except DevServerError as exc:
                    raise CliError(f"{exc} (see {temporal.log})") from None
                if stop:
                    return 0
            status.update("starting the worker and the portal")
            pools.start()
            portal = supervisor.start("portal", child_command("portal"))
            supervisor.wait_for(portal, settings.public_host, settings.https_port)
            if stop:
                return 0
            supervisor.check_children()
            table = service_table(settings, supervisor, pools, first_start)
            running.record(settings, supervisor.pids["up"], state_notes(settings))
        console.print(table)
        console.print("ready: Ctrl-C or `ecpds down` stops everything")
        sys.stdout.flush()
        while not stop:
            supervisor.keep_children()
            supervisor.reap_retired()
            pools.scale(time.monotonic())
            sys.stdout.flush()
            time.sleep(0.5)
        console.print(f"{stop.signal_name}: stopping {', '.join(supervisor.pids)}")
        return 0
    finally:
        pools.close()
        supervisor.terminate()
        stop.restore()
        sys.stdout.flush()


def down(settings: Settings) -> None:
    """Stop the `ecpds up` of this home folder and everything it started."""
    path = pid_file(settings)
    pids = read_pids(path)
    if not pids:
        console.print(f"nothing is running in {settings.home.resolve()}")
        return
    supervisor_pid = pids.pop("up", None)
    if supervisor_pid and alive(supervisor_pid):
        os.kill(supervisor_pid, signal.SIGTERM)
    else:
        # `ecpds up` died without cleaning up: stop its children ourselves.
        for pid in pids.values():
            signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + stop_grace(settings) * 2
    everyone = [supervisor_pid or 0, *pids.values()]
    while any(alive(pid) for pid in everyone if pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    for name, pid in pids.items():
        if alive(pid):
            console.print(f"{name} (pid {pid}) ignored SIGTERM: killing it")
        signal_group(pid, signal.SIGKILL)
    running.forget(settings)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    console.print(f"stopped {', '.join(['up', *pids])} in {settings.home.resolve()}")
