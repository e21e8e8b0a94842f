"""Listing benchmark: a folder of 10,000 files on a local OpenSSH server, listed by ecpds
(both SFTP engines) and by `rclone lsf`, each from connecting to the last entry.

Prints a table, or with --json one JSON object (best of --repeat runs).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dissemination import sshd_config

from ecpds.core.devserver import wait_for_port
from ecpds.core.protocols import open_remote


def make_files(folder: Path, count: int) -> None:
    folder.mkdir()
    for i in range(count):
        fd = os.open(folder / f"f{i:05d}.dat", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"x" * (i % 50))
        os.close(fd)


def ecpds_list(url: str, key: str, engine: str) -> tuple[float, float, int]:
    """(seconds from connecting, seconds of the listing alone, entries)."""
    started = time.monotonic()
    with open_remote("bench", url, {"engine": engine}, {"private_key": key}) as remote:
        listing = time.monotonic()
        count = sum(1 for _ in remote.list(""))
        done = time.monotonic()
    return done - started, done - listing, count


def rclone_list(rclone: str, port: int, key: Path, user: str, folder: Path) -> tuple[float, int]:
    started = time.monotonic()
    done = subprocess.run(
        [
            rclone, "lsf", "--format", "pst", f":sftp:{folder}", "--sftp-host=127.0.0.1",
            f"--sftp-port={port}", f"--sftp-user={user}", f"--sftp-key-file={key}",
        ],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return time.monotonic() - started, len(done.stdout.splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rclone = shutil.which("rclone")
    user = getpass.getuser()
    with tempfile.TemporaryDirectory(prefix="ecpds-bench-list-") as tmp:
        base = Path(tmp)
        os.chmod(base, 0o755)
        (base / "sshd").mkdir()
        command, port, key = sshd_config(base / "sshd")
        folder = base / "many"
        make_files(folder, args.files)
        log = (base / "sshd.log").open("wb")
        sshd = subprocess.Popen(command, stdout=log, stderr=log)
        runs: dict[str, list[float]] = {}
        try:
            wait_for_port("127.0.0.1", port, 20, sshd)
            url = f"sftp://{user}@127.0.0.1:{port}{folder}"
            for _ in range(args.repeat):
                for engine in ("openssh", "asyncssh"):
                    total, alone, count = ecpds_list(url, key.read_text(), engine)
                    assert count == args.files, f"{engine} listed {count}"
                    runs.setdefault(f"ecpds_{engine}_s", []).append(total)
                    runs.setdefault(f"ecpds_{engine}_listing_only_s", []).append(alone)
                if rclone:
                    seconds, count = rclone_list(rclone, port, key, user, folder)
                    assert count == args.files, f"rclone listed {count}"
                    runs.setdefault("rclone_lsf_s", []).append(seconds)
        finally:
            sshd.terminate()
            sshd.wait()
            log.close()
    results: dict[str, float | int] = {k: round(min(v), 3) for k, v in runs.items()}
    results["files"] = args.files
    if "rclone_lsf_s" in results:
        for engine in ("openssh", "asyncssh"):
            results[f"{engine}_vs_rclone"] = round(
                results["rclone_lsf_s"] / results[f"ecpds_{engine}_s"], 2
            )
    if args.json:
        print(json.dumps(results))
    else:
        for name, value in results.items():
            print(f"{name:34} {value}")
    if not rclone:
        print("rclone is missing: run tests/peers/install.sh", file=sys.stderr)


if __name__ == "__main__":
    main()
