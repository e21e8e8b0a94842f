"""Where a running `ecpds up` is: the state file it writes and how every other command finds it.

`ecpds up` writes HOME/run/ecpds.toml (its pid, URLs, ports and the admin credentials
file's location; no secrets) and a pointer to HOME in the user's state folder
($XDG_STATE_HOME/ecpds/running, else ~/.local/state/ecpds/running), so a CLI started in
any folder or shell finds the system. HOME is always the state folder (`var/` by default).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ecpds.core.settings import Settings

# The settings a CLI takes from the running system unless it sets them itself.
ADDRESSES = ("public_host", "https_port", "ftp_port", "sftp_port", "s3_port", "mqtt_port")
# Any of these set by the caller means the caller chose its own portal.
OWN_PORTAL = {"api_url", "public_host", "https_port"}


class Ambiguous(Exception):
    """More than one `ecpds up` runs for this user and nothing says which one is meant."""


@dataclass(frozen=True)
class RunningSystem:
    home: Path
    pid: int
    api_url: str
    addresses: dict[str, Any]

    @property
    def portal_log(self) -> Path:
        return self.home / "log" / "portal.log"


def state_file(home: Path) -> Path:
    return home / "run" / "ecpds.toml"


def registry() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "ecpds" / "running"


def _pointer(home: Path) -> Path:
    return registry() / hashlib.sha256(str(home).encode()).hexdigest()[:16]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes: it only waits for its parent to reap it.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks after boot, field 22 of /proc/PID/stat), or
    None if no process has that pid. A pid and its start name one process; a pid alone may
    since have gone to another (pids wrap around quickly on a busy machine)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[19] if len(fields) > 19 else None


def same_process(pid: int, start: str | None) -> bool:
    """Whether `pid` is still the process that started at `start` (None: not recorded)."""
    return alive(pid) and (start is None or process_start(pid) == start)


def _toml(value: Any) -> str:
    # JSON's strings, integers and booleans are valid TOML values.
    return json.dumps(value)


def record(settings: Settings, pid: int, notes: dict[str, str]) -> Path:
    """Write the state file of the system `ecpds up` (pid `pid`) runs in settings.home."""
    home = settings.home.resolve()
    lines = [
        f"# Written by `ecpds up` (pid {pid}); removed when it stops. Holds no secrets.",
        f"home = {_toml(str(home))}",
        f"pid = {pid}",
        f"pid_start = {_toml(process_start(pid) or '')}",
        f"started = {_toml(datetime.now(UTC).isoformat(timespec='seconds'))}",
        f"api_url = {_toml(settings.portal_url)}",
        f"admin_file = {_toml(str(settings.admin_file.resolve()))}",
        *(f"{key} = {_toml(value)}" for key, value in notes.items()),
        "",
        "[addresses]",
        *(f"{name} = {_toml(getattr(settings, name))}" for name in ADDRESSES),
    ]
    path = state_file(home)
    partial = path.with_suffix(".part")
    partial.write_text("\n".join(lines) + "\n")
    partial.replace(path)
    pointer = _pointer(home)
    pointer.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pointer.write_text(f"{home}\n")
    return path


def forget(settings: Settings) -> None:
    """Remove what `record` wrote (when `ecpds up` stops)."""
    home = settings.home.resolve()
    for path in (state_file(home), _pointer(home)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def read(home: Path) -> RunningSystem | None:
    """The system whose state file is in `home`, if its `ecpds up` is alive."""
    try:
        saved = tomllib.loads(state_file(home).read_text())
        system = RunningSystem(
            home=Path(saved["home"]),
            pid=int(saved["pid"]),
            api_url=str(saved["api_url"]),
            addresses=dict(saved["addresses"]),
        )
        start = str(saved.get("pid_start", "")) or None
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError, ValueError):
        return None
    return system if same_process(system.pid, start) else None


def registered() -> list[RunningSystem]:
    """Every system this user's `ecpds up` runs; pointers of stopped ones are dropped."""
    systems = []
    with contextlib.suppress(FileNotFoundError):
        for pointer in sorted(registry().iterdir()):
            with contextlib.suppress(OSError):
                system = read(Path(pointer.read_text().strip()))
                if system is None:
                    pointer.unlink()
                else:
                    systems.append(system)
    return sorted(systems, key=lambda system: str(system.home))


def find(settings: Settings) -> RunningSystem | None:
    """The system a command means: the one in ECPDS_HOME if set, else the one in ./var,
    else the only one this user runs."""
    home = settings.home.resolve()
    if "home" in settings.model_fields_set:
        return read(home)
    local = read(home)
    if local is not None:
        return local
    systems = registered()
    if len(systems) > 1:
        homes = ", ".join(str(system.home) for system in systems)
        raise Ambiguous(f"{len(systems)} systems are running ({homes}): set ECPDS_HOME to one")
    return systems[0] if systems else None


def locate(settings: Settings, system: RunningSystem | None) -> Settings:
    """`settings` pointed at `system`, except for what the caller set itself."""
    if system is None:
        return settings
    chosen = settings.model_fields_set
    values: dict[str, Any] = {k: v for k, v in system.addresses.items() if k not in chosen}
    if not chosen & OWN_PORTAL:
        values["api_url"] = system.api_url
    values["home"] = system.home
    return settings.model_copy(update=values)


def unreachable(settings: Settings, system: RunningSystem | None) -> str:
    """Why the portal at settings.portal_url may not answer, for the one-line error."""
    if system is not None:
        return f"the `ecpds up` in {system.home} (pid {system.pid}) runs: see {system.portal_log}"
    if "api_url" in settings.model_fields_set:
        return "is `ecpds up` running?"
    return nothing_runs(settings)


def nothing_runs(settings: Settings) -> str:
    if "home" in settings.model_fields_set:
        return f"no `ecpds up` runs in {settings.home.resolve()} (ECPDS_HOME)"
    return (
        f"no `ecpds up` runs in {settings.home.resolve()} or elsewhere for this user: "
        "start one, or set ECPDS_HOME to its var/ folder"
    )
