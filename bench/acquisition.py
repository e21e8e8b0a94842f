"""Acquisition benchmark: discovery, fetching and MQTT-triggered fetching, each beside its
peer, in one run (`make bench`; --json prints one object).

Discovery (bench/discovery.py): a folder of 10,000 files on a local OpenSSH server listed
with a regex rule until every new file is registered (discovery_s), a second run with
nothing new (rediscovery_s), beside `rclone lsf` of the folder (list_vs_rclone).
MQTT (bench/mqtt_acquisition.py): 1,000 WIS2 notifications published on Mosquitto for files
on a local HTTPS server, publish to stored (mqtt_files_per_s, mqtt_to_stored_p50_ms/_p99_ms).

Fetching: files fetched from a local OpenSSH server into the store by
RetrievalBatchWorkflow, as a discovery run awaits it, beside rclone. Starts the whole
system with `ecpds up` in a temporary home (free ports) and an sshd, then,
alternately and `--rounds` times each (the best of each kept):
(a) 1,000 files of 64 KiB: registered in the catalog and fetched by one batch workflow,
    beside `rclone copy` of the same folder to a local folder (acq_files_per_s,
    rclone_files_per_s, acq_vs_rclone);
(b) one large file (1 GiB by default): the same, beside `rclone copyto` (acq_large_mb_s,
    rclone_large_mb_s, acq_large_vs_rclone);
and the peak resident memory of the `ecpds up` process, worker and portal together
(peak_worker_rss_mib). The registration is timed apart (acq_register_s, 1,000 files).
Prints a table, or with --json one object. MB are 10^6 bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import shutil
import subprocess
import tempfile
import time
import tomllib
import uuid
from pathlib import Path

import httpx
from discovery import measure as discovery_figures
from mqtt_acquisition import mqtt_figures
from submit import (
    MiB,
    ecpds,
    figures_parser,
    log,
    process,
    report,
    start_sshd,
    system_environment,
    wait_until_up,
)
from temporalio.client import Client

from ecpds.core.db import open_catalog
from ecpds.core.devserver import wait_for_port
from ecpds.core.engine import RetrievalBatchInput
from ecpds.core.retrieval import SourceSpec, register_sources
from ecpds.core.secrets import CredentialBox, load_or_create_key
from ecpds.core.settings import Settings
from ecpds.workflows.retrieval import RetrievalBatchWorkflow


def peak_rss_mib(pid: int) -> float:
    """The process's high-water mark of resident memory (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Acquirer:
    """Registers sources in the system's catalog and awaits their batch workflow."""

    def __init__(self, settings: Settings, destination: str) -> None:
        self.settings = settings
        self.destination = destination
        self.engine = open_catalog(settings.catalog_url)
        self.box = CredentialBox(load_or_create_key(settings.key_file))

    def register(self, urls: list[str]) -> list[str]:
        registered, _ = register_sources(
            self.engine,
            self.box,
            destination=self.destination,
            sources=[SourceSpec(u) for u in urls],
        )
        return [r.id for r in registered]

    async def fetch(self, ids: list[str]) -> float:
        client = await Client.connect(
            self.settings.temporal_target, namespace=self.settings.temporal_namespace
        )
        began = time.perf_counter()
        result = await client.execute_workflow(
            RetrievalBatchWorkflow.run,
            RetrievalBatchInput(ids, self.destination),
            id=f"bench-retrievals-{uuid.uuid4().hex}",
            task_queue=self.settings.task_queue,
        )
        seconds = time.perf_counter() - began
        if result.failed:
            raise SystemExit(f"{result.failed} files failed: {result.errors[0].error}")
        return seconds


def rclone(env: dict[str, str], *args: str) -> float:
    began = time.perf_counter()
    done = subprocess.run(["rclone", *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"rclone {args[0]} failed: {done.stderr.strip()[-500:]}")
    return time.perf_counter() - began


def run(args: argparse.Namespace) -> dict[str, float]:
    if shutil.which("rclone") is None:
        raise SystemExit("rclone is missing: apt-get install rclone")
    tmp = Path(tempfile.mkdtemp(prefix="ecpds-bench-acquisition-"))
    tmp.chmod(0o755)
    home = tmp / "var"
    env = system_environment(home)
    base = f"https://127.0.0.1:{env['ECPDS_HTTPS_PORT']}/api/v1"
    results: dict[str, float] = {}
    (tmp / "sshd").mkdir()
    sshd_cmd, sshd_port, client_key = start_sshd(tmp / "sshd")
    user = getpass.getuser()
    small, large = tmp / "sources" / "small", tmp / "sources" / "large"
    small.mkdir(parents=True)
    large.mkdir()
    for i in range(args.files):
        (small / f"obs-{i:04d}.bufr").write_bytes(os.urandom(64 * 1024))
    big = large / "big.grib"
    with big.open("wb") as out:
        block = os.urandom(MiB)
        for _ in range(args.large_mib):
            out.write(block)
    url = f"sftp://{user}@127.0.0.1:{sshd_port}"
    rclone_env = dict(
        os.environ,
        RCLONE_CONFIG_SRC_TYPE="sftp",
        RCLONE_CONFIG_SRC_HOST="127.0.0.1",
        RCLONE_CONFIG_SRC_PORT=str(sshd_port),
        RCLONE_CONFIG_SRC_USER=user,
        RCLONE_CONFIG_SRC_KEY_FILE=str(client_key),
        RCLONE_CONFIG_SRC_SHELL_TYPE="unix",
        RCLONE_CONFIG_SRC_MD5SUM_COMMAND="none",
        RCLONE_CONFIG_SRC_SHA1SUM_COMMAND="none",
    )
    try:
        with (
            process(ecpds("up"), tmp / "up.log", env) as up,
            process(sshd_cmd, tmp / "sshd.log", env) as sshd,
        ):
            log("starting ecpds up …")
            wait_until_up(env, home, up, tmp / "up.log")
            wait_for_port("127.0.0.1", sshd_port, 20, sshd)
            admin = tomllib.loads((home / "admin.toml").read_text())
            api = httpx.Client(
                base_url=base,
                auth=(admin["api_user"], admin["api_password"]),
                verify=False,
                timeout=60,
            )
            api.post("/destinations", json={"name": "acq"}).raise_for_status()
            api.post(
                "/hosts",
                json={
                    "name": "provider",
                    "kind": "acquisition",
                    "url": f"{url}{tmp / 'sources'}",
                    "credentials": {"private_key": client_key.read_text()},
                },
            ).raise_for_status()
            api.close()
            os.environ["ECPDS_HOME"] = str(home)
            for name, value in env.items():
                if name.startswith("ECPDS_"):
                    os.environ[name] = value
            acquirer = Acquirer(Settings(), "acq")
            small_urls = [f"{url}{small}/obs-{i:04d}.bufr" for i in range(args.files)]
            files_s = rclone_files_s = large_s = rclone_large_s = register_s = float("inf")
            # Alternate the peers, best of each: the machine's load swings within a minute.
            for attempt in range(1, args.rounds + 1):
                log(f"round {attempt}: {args.files} files of 64 KiB, ecpds then rclone copy …")
                began = time.perf_counter()
                ids = acquirer.register(small_urls)
                register_s = min(register_s, time.perf_counter() - began)
                files_s = min(files_s, asyncio.run(acquirer.fetch(ids)))
                target = tmp / f"rclone-small-{attempt}"
                rclone_files_s = min(
                    rclone_files_s, rclone(rclone_env, "copy", f"src:{small}", str(target))
                )
                shutil.rmtree(target)
                log(f"round {attempt}: {args.large_mib} MiB, ecpds then rclone copyto …")
                [big_id] = acquirer.register([f"{url}{big}"])
                large_s = min(large_s, asyncio.run(acquirer.fetch([big_id])))
                copy = tmp / f"rclone-{attempt}.grib"
                rclone_large_s = min(
                    rclone_large_s, rclone(rclone_env, "copyto", f"src:{big}", str(copy))
                )
                copy.unlink()
            results["acq_files_per_s"] = args.files / files_s
            results["rclone_files_per_s"] = args.files / rclone_files_s
            results["acq_vs_rclone"] = results["acq_files_per_s"] / results["rclone_files_per_s"]
            size_mb = args.large_mib * MiB / 1e6
            results["acq_large_mb_s"] = size_mb / large_s
            results["rclone_large_mb_s"] = size_mb / rclone_large_s
            results["acq_large_vs_rclone"] = rclone_large_s / large_s
            results["acq_register_s"] = register_s
            results["large_mib"] = float(args.large_mib)
            results["peak_worker_rss_mib"] = peak_rss_mib(up.pid)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def main() -> None:
    parser = figures_parser(__doc__)
    parser.add_argument("--files", type=int, default=1000, help="small files (64 KiB each)")
    parser.add_argument("--large-mib", type=int, default=1024, help="size of the large file")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each, best kept")
    parser.add_argument("--listed", type=int, default=10_000, help="files in the listed folder")
    parser.add_argument("--notifications", type=int, default=1000, help="WIS2 messages")
    args = parser.parse_args()
    figures: dict[str, float] = {}
    log(f"discovery of {args.listed} files, and rclone lsf …")
    figures |= {k: float(v) for k, v in discovery_figures(args.listed).items() if v is not None}
    log(f"{args.notifications} WIS2 notifications …")
    figures |= mqtt_figures(files=args.notifications)
    figures |= run(args)
    report(figures, as_json=args.json)


if __name__ == "__main__":
    main()
