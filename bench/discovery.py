"""Discovery figures (a measurement, not a timed test): a folder of 10,000 files on a local
OpenSSH server listed with a regex rule until every new file is registered, a second run
with nothing new, and `rclone lsf` of the same folder beside them.

Runs the discovery activity's body in-process (no Temporal: listing, rules, only-new and
registration are what is measured). Prints a table, or with --json one JSON object.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from dissemination import process, sshd_config, work_folder

from ecpds.core import acquisition, catalog
from ecpds.core.db import open_catalog, session_scope
from ecpds.core.devserver import wait_for_port
from ecpds.core.models import DestinationCreate, HostCreate
from ecpds.core.secrets import CredentialBox, load_or_create_key

OLD = time.time() - 7200


def provider_folder(root: Path, count: int) -> Path:
    folder = root / "provider"
    folder.mkdir()
    for i in range(count):
        path = folder / f"t2m_{i:05d}.grib"
        path.write_bytes(b"x" * 64)
        os.utime(path, (OLD, OLD))
    for i in range(count // 20):
        (folder / f"readme_{i}.txt").write_bytes(b"not matching")
    return folder


def rclone_lsf(folder: Path, port: int, key: Path, user: str) -> float | None:
    rclone = shutil.which("rclone")
    if rclone is None:
        return None
    started = time.monotonic()
    subprocess.run(
        [
            rclone,
            "lsf",
            f":sftp:{folder}",
            "--sftp-host=127.0.0.1",
            f"--sftp-port={port}",
            f"--sftp-user={user}",
            f"--sftp-key-file={key}",
        ],
        check=True,
        capture_output=True,
    )
    return time.monotonic() - started


def measure(count: int) -> dict[str, float | int | None]:
    with tempfile.TemporaryDirectory(dir=work_folder(count * 4096)) as name:
        tmp = Path(name)
        tmp.chmod(0o755)
        (tmp / "sshd").mkdir()
        command, port, key = sshd_config(tmp / "sshd")
        folder = provider_folder(tmp, count)
        engine = open_catalog(f"sqlite:///{tmp / 'catalog.db'}")
        box = CredentialBox(load_or_create_key(tmp / "key"))
        user = getpass.getuser()
        with session_scope(engine) as session:
            catalog.create_host(
                session,
                box=box,
                data=HostCreate(
                    name="provider",
                    kind="acquisition",
                    url=f"sftp://{user}@127.0.0.1:{port}{folder}",
                    credentials={"private_key": key.read_text()},
                    acquisition={"rules": [{"pattern": r"(?P<param>[a-z0-9]+)_\d+\.grib"}]},
                ),
            )
            catalog.create_destination(
                session, data=DestinationCreate(name="acquired", hosts=["provider"])
            )
        with process(command, tmp / "sshd.log") as sshd:
            wait_for_port("127.0.0.1", port, 20, sshd)
            figures: dict[str, float | int | None] = {"files": count}
            for label in ("discovery", "rediscovery"):
                run_id = acquisition.start_run(engine, host="provider", destination="acquired")
                started = time.monotonic()
                found = acquisition.discover(
                    engine, box, run_id=run_id, host="provider", destination="acquired"
                )
                figures[f"{label}_s"] = time.monotonic() - started
                figures[f"{label}_new"] = found.new
                figures[f"{label}_found"] = found.found
            figures["rclone_lsf_s"] = rclone_lsf(folder, port, key, user)
        engine.dispose()
    rclone = figures["rclone_lsf_s"]
    if isinstance(rclone, float) and isinstance(figures["discovery_s"], float):
        figures["list_vs_rclone"] = rclone / figures["discovery_s"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    figures = measure(args.files)
    if args.json:
        print(json.dumps(figures))
        return
    for key, value in figures.items():
        print(f"{key:20} {value:.3f}" if isinstance(value, float) else f"{key:20} {value}")


if __name__ == "__main__":
    main()
