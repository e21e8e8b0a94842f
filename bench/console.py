"""Console benchmark: how fast the web console's pages answer with a big catalog, beside
the CLI and the REST API asking the same, and how long a Prometheus scrape takes.

For each catalog (SQLite, and PostgreSQL when one answers: ECPDS_BENCH_DATABASE_URL, or
the local server on 127.0.0.1:5432), seeds 1,000 destinations and 1,000,000 transfers
(tests/peers/seed.py), starts `ecpds up` on it, then times ROUNDS requests of each page as the
admin: the dashboard, one destination's page, a transfer search (one destination,
FAIL) and the arrivals page (its charts of the busiest destinations), each page's p95;
`ecpds transfers --json` for the same search (the whole command, interpreter start
included) and the REST request it makes (p95);
console_vs_cli = CLI time ÷ the search page's p95 (≥ 1.0: the page is no slower); and the
portal's `/metrics` scrape p95. Targets: every page p95 under 300 ms. Prints a table, or
with --json one object.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from pathlib import Path

import httpx
import sqlalchemy
from submit import (
    ecpds,
    figures_parser,
    log,
    percentile,
    process,
    report,
    system_environment,
    timed,
    wait_until_up,
)

from ecpds.core.db import open_catalog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from peers.seed import seed  # noqa: E402

DESTINATION = "site-0500"


def postgresql_url() -> str | None:
    """A fresh schema on the PostgreSQL to use, or None when none answers."""
    base = os.environ.get("ECPDS_BENCH_DATABASE_URL")
    if base is None:
        if shutil.which("pg_isready") is None:
            return None
        answer = subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", "5432", "-q"])
        if answer.returncode != 0:
            return None
        base = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    engine = sqlalchemy.create_engine(base)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
    engine.dispose()
    return f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"


def console_login(base: str, user: str, password: str) -> httpx.Client:
    """A client holding the console's session cookie, logged in through its form."""
    client = httpx.Client(base_url=base, verify=False, timeout=120, follow_redirects=True)
    form = client.get("/login")
    form.raise_for_status()
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    fields = {"username": user, "password": password}
    if token:
        fields["csrf"] = token.group(1)
    answer = client.post("/login", data=fields)
    answer.raise_for_status()
    if "logout" not in answer.text.lower():
        raise SystemExit(f"the console login failed: {answer.status_code} {answer.text[:200]}")
    return client


def timed_get(client: httpx.Client, path: str, rounds: int, **params: str) -> float:
    """The p95 in ms of `rounds` GETs of `path` (each must answer 200)."""
    client.get(path, params=params).raise_for_status()  # warm the caches once
    seconds = []
    for _ in range(rounds):
        began = time.perf_counter()
        answer = client.get(path, params=params)
        seconds.append(time.perf_counter() - began)
        if answer.status_code != 200:
            raise SystemExit(f"GET {path}: {answer.status_code} {answer.text[:200]}")
    return percentile(seconds, 95) * 1000


def measure(label: str, url: str, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    log(f"{label}: seeding {args.destinations} destinations, {args.transfers} transfers …")
    engine = open_catalog(url)
    began = time.perf_counter()
    seed(engine, destinations=args.destinations, transfers=args.transfers)
    engine.dispose()
    log(f"{label}: seeded in {time.perf_counter() - began:.0f} s; starting ecpds up …")
    home = tmp / label / "var"
    home.parent.mkdir(parents=True)
    env = system_environment(home) | {"ECPDS_DATABASE_URL": url}
    results: dict[str, float] = {}
    with process(ecpds("up"), home.parent / "up.log", env) as up:
        wait_until_up(env, home, up, home.parent / "up.log")
        admin = tomllib.loads((home / "admin.toml").read_text())
        user, password = admin["api_user"], admin["api_password"]
        env |= {"ECPDS_API_USER": user, "ECPDS_API_PASSWORD": password}
        base = f"https://127.0.0.1:{env['ECPDS_HTTPS_PORT']}"
        search = {"destination": DESTINATION, "status": "FAIL"}
        console = console_login(base, user, password)
        try:
            results[f"{label}_dashboard_p95_ms"] = timed_get(console, "/", args.rounds)
            results[f"{label}_destination_p95_ms"] = timed_get(
                console, f"/destinations/{DESTINATION}", args.rounds
            )
            results[f"{label}_search_p95_ms"] = timed_get(
                console, "/transfers", args.rounds, **search
            )
            results[f"{label}_arrivals_p95_ms"] = timed_get(console, "/arrivals", args.rounds)
            results[f"{label}_metrics_p95_ms"] = timed_get(console, "/metrics", args.rounds)
        finally:
            console.close()
        with httpx.Client(base_url=base, auth=(user, password), verify=False, timeout=120) as api:
            results[f"{label}_rest_search_p95_ms"] = timed_get(
                api, "/api/v1/transfers", args.rounds, **search, limit="100"
            )
        cli = ecpds("transfers", "--json", "-d", DESTINATION, "--status", "FAIL", "--limit", "100")
        cli_seconds = statistics.median(timed(cli, env)[0] for _ in range(5))
        results[f"{label}_cli_search_ms"] = cli_seconds * 1000
        results[f"{label}_console_vs_cli"] = (
            results[f"{label}_cli_search_ms"] / results[f"{label}_search_p95_ms"]
        )
    return results


def main() -> None:
    parser = figures_parser(__doc__)
    parser.add_argument("--destinations", type=int, default=1_000)
    parser.add_argument("--transfers", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=40, help="requests per page")
    parser.add_argument("--sqlite-only", action="store_true", help="skip PostgreSQL")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ecpds-bench-console-"))
    results: dict[str, float] = {}
    try:
        results |= measure("sqlite", f"sqlite:///{tmp / 'catalog.db'}", args, tmp)
        url = None if args.sqlite_only else postgresql_url()
        if url is None:
            log("no PostgreSQL answers: SQLite only")
        else:
            results |= measure("postgresql", url, args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(results, as_json=args.json)


if __name__ == "__main__":
    main()
