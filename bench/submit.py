"""Submission benchmark: `ecpds put` beside curl, and an asynchronous group fetched over SFTP.

Starts the whole system with `ecpds up` in a temporary home (free ports), then
(a) pushes the same 1 GiB file to the same REST endpoint with `ecpds put` and with curl
    (alternately, twice each, the best of each kept),
(b) registers 1,000 files of 64 KiB on a local OpenSSH server with `ecpds put --source`
    and waits for the group with `ecpds wait`.
Prints a table, or with --json one object (put_mb_s, curl_mb_s, put_vs_curl,
async_registrations_per_s, async_group_s). MB are 10^6 bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx

from ecpds.core.devserver import free_port, wait_for_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from peers.ports import UP_PORTS  # noqa: E402

MiB = 1 << 20


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ecpds(*args: str) -> list[str]:
    return [sys.executable, "-m", "ecpds.cli.main", *args]


@contextlib.contextmanager
def process(
    cmd: list[str], logfile: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen]:
    with logfile.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def system_environment(home: Path) -> dict[str, str]:
    env = dict(os.environ, ECPDS_HOME=str(home))
    for name in UP_PORTS:
        env[f"ECPDS_{name}"] = str(free_port())
    return env


def wait_until_up(env: dict[str, str], home: Path, proc: subprocess.Popen, log_file: Path) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"`ecpds up` stopped: see {log_file}")
        if "ready:" in log_file.read_text(errors="replace") and (home / "admin.toml").exists():
            return
        time.sleep(0.5)
    raise SystemExit(f"`ecpds up` did not become ready: see {log_file}")


def start_sshd(folder: Path) -> tuple[list[str], int, Path]:
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(sshd):
        raise SystemExit("sshd is missing: run tests/peers/install.sh")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    host_key, client_key = folder / "host_key", folder / "client_key"
    for key in (host_key, client_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    port = free_port()
    config = folder / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"PidFile {folder / 'sshd.pid'}\nAuthorizedKeysFile {client_key}.pub\n"
        "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n"
        "MaxStartups 100\nMaxSessions 100\nLogLevel ERROR\n"
    )
    return [sshd, "-D", "-e", "-f", str(config)], port, client_key


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    began = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])}… failed: {done.stderr.strip()[-500:]}")
    return seconds, done.stdout


def run(args: argparse.Namespace) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="ecpds-bench-submit-"))
    tmp.chmod(0o755)
    home = tmp / "var"
    env = system_environment(home)
    base = f"https://127.0.0.1:{env['ECPDS_HTTPS_PORT']}/api/v1"
    results: dict[str, float] = {}
    (tmp / "sshd").mkdir()
    sshd_cmd, sshd_port, client_key = start_sshd(tmp / "sshd")
    try:
        with (
            process(ecpds("up"), tmp / "up.log", env) as up,
            process(sshd_cmd, tmp / "sshd.log", env) as sshd,
        ):
            log("starting ecpds up …")
            wait_until_up(env, home, up, tmp / "up.log")
            wait_for_port("127.0.0.1", sshd_port, 20, sshd)
            admin = tomllib.loads((home / "admin.toml").read_text())
            user, password = admin["api_user"], admin["api_password"]
            env |= {"ECPDS_API_USER": user, "ECPDS_API_PASSWORD": password}
            api = httpx.Client(base_url=base, auth=(user, password), verify=False, timeout=60)
            api.post("/destinations", json={"name": "bench"}).raise_for_status()

            product = tmp / "product.bin"
            size = args.size_mib * MiB
            with product.open("wb") as out:
                block = os.urandom(MiB)
                for _ in range(args.size_mib):
                    out.write(block)
            url = f"{base}/destinations/bench/files?name=curl.bin"
            curl = [
                "curl", "-sSfk", "-o", "/dev/null", "-u", f"{user}:{password}",
                "-H", "Content-Type: application/octet-stream",
                "-X", "POST", "-T", str(product), url,
            ]  # fmt: skip
            put_s = curl_s = float("inf")
            # Alternate the two, best of each: the machine's load swings within a minute.
            for attempt in range(1, args.rounds + 1):
                log(f"round {attempt}: ecpds put of {args.size_mib} MiB, then curl …")
                put_s = min(put_s, timed(ecpds("put", str(product), "-d", "bench"), env)[0])
                curl_s = min(curl_s, timed(curl, env)[0])
            product.unlink()
            results["put_mb_s"] = size / 1e6 / put_s
            results["curl_mb_s"] = size / 1e6 / curl_s
            results["put_vs_curl"] = results["put_mb_s"] / results["curl_mb_s"]

            folder = tmp / "sources"
            folder.mkdir()
            for i in range(args.files):
                (folder / f"obs-{i:04d}.bufr").write_bytes(os.urandom(64 * 1024))
            source_user = getpass.getuser()
            api.post(
                "/hosts",
                json={
                    "name": "hpc",
                    "kind": "acquisition",
                    "url": f"sftp://{source_user}@127.0.0.1:{sshd_port}{folder}",
                    "credentials": {"private_key": client_key.read_text()},
                },
            ).raise_for_status()
            listing = tmp / "sources.txt"
            listing.write_text(
                "".join(
                    f"sftp://{source_user}@127.0.0.1:{sshd_port}{folder}/obs-{i:04d}.bufr\n"
                    for i in range(args.files)
                )
            )
            log(f"registering {args.files} sources and waiting for the group …")
            began = time.perf_counter()
            register_s, _ = timed(
                ecpds("put", "--sources-from", str(listing), "-d", "bench", "--group", "g"), env
            )
            timed(ecpds("wait", "g", "--interval", "0.5"), env)
            results["async_registrations_per_s"] = args.files / register_s
            results["async_group_s"] = time.perf_counter() - began
            api.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile of `values` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def figures_parser(doc: str) -> argparse.ArgumentParser:
    """A bench's options: the first line of its docstring as help, and --json."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def report(
    results: dict[str, float], *, as_json: bool, labels: dict[str, str] | None = None
) -> None:
    """A table of the figures, or one JSON object. With `labels`, the table shows the
    figures they name, in their order, each under its label; else every figure by key."""
    if as_json:
        print(json.dumps({k: round(v, 3) for k, v in results.items()}))
        return
    if labels is None:
        labels = {key: key for key in results}
    width = max(map(len, labels.values()))
    for key, label in labels.items():
        if key in results:
            print(f"{label:<{width}}  {results[key]:10.2f}")


def main() -> None:
    parser = figures_parser(__doc__)
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the pushed file")
    parser.add_argument("--files", type=int, default=1000, help="files in the async group")
    parser.add_argument("--rounds", type=int, default=2, help="put and curl runs, best kept")
    args = parser.parse_args()
    report(run(args), as_json=args.json)


if __name__ == "__main__":
    main()
