"""`ecpds put`, `wait`, `status`, `transfers`, `files`: pushing data and looking it up.

`put FILE|-` streams the bytes to the portal (synchronous push); `put --source URL`
registers files for the workers to fetch (asynchronous push), and `wait GROUP` follows them.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Annotated, Any
from urllib.parse import quote

import typer
from rich.console import Console
from rich.live import Live
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from ecpds.cli.client import ApiClient, CliError, listing, reports_errors, state_of
from ecpds.cli.operations import sent_text
from ecpds.cli.resources import (
    JsonOption,
    console,
    print_json,
    print_record,
    print_rows,
    rows_table,
)

CHUNK = 1 << 20
_DURATION = re.compile(r"^(\d+)([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
TRANSFER_COLUMNS = (
    "id",
    "destination",
    "target",
    "status",
    "priority",
    "scheduled",
    "host",
    "bytes_sent",
    "last_error",
)
WATCH_COLUMNS = ("id", "destination", "target", "status", "host", "sent", "rate", "eta")
FILE_COLUMNS = ("id", "name", "size", "group", "arrived", "expires", "meta")

stderr = Console(stderr=True)


def metadata_text(values: list[str]) -> str | None:
    """`--metadata k=v,k2=v2` (repeatable) as one `k=v,…` string, which the portal checks."""
    return ",".join(values) or None


def lifetime_seconds(text: str | None, start: datetime) -> int | None:
    """Seconds (`3600`, `90m`, `12h`, `2d`, `1w`) or an expiry time (ISO 8601) after `start`."""
    if text is None:
        return None
    match = _DURATION.match(text.strip())
    if match:
        seconds = int(match.group(1)) * _UNITS[match.group(2)]
        if seconds <= 0:
            raise CliError(f"lifetime {text!r} must be longer than zero")
        return seconds
    try:
        expiry = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CliError(
            f"lifetime {text!r} is neither a duration (3600, 90m, 12h, 2d, 1w) nor a time"
        ) from None
    if expiry.tzinfo is None:
        expiry = expiry.replace(tzinfo=UTC)
    seconds = int((expiry - start).total_seconds())
    if seconds <= 0:
        raise CliError(f"lifetime {text!r} is in the past")
    return seconds


def _timing(
    at: datetime | None, delay: int | None, asap: bool, lifetime: str | None
) -> dict[str, Any]:
    if asap and (at is not None or delay):
        raise CliError("--asap cannot go with --at or --delay")
    if at is not None and at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    now = datetime.now(UTC)
    start = at or now + timedelta(seconds=delay or 0)
    return {
        "at": at.isoformat() if at else None,
        "delay": 0 if asap else delay,
        "lifetime": lifetime_seconds(lifetime, start),
    }


def _byte_chunks(source: IO[bytes], progress: Progress, task: Any) -> Iterator[bytes]:
    while block := source.read(CHUNK):
        progress.advance(task, len(block))
        yield block


def _push(
    client: ApiClient,
    file: str,
    destination: str,
    params: dict[str, Any],
) -> Any:
    stdin = file == "-"
    if stdin and not params.get("target"):
        raise CliError("reading from stdin (-) needs --target NAME")
    path = Path(file)
    if not stdin and not path.is_file():
        raise CliError(f"{file}: no such file")
    name = Path(params["target"]).name if stdin else path.name
    size = None if stdin else path.stat().st_size
    columns: list[Any] = [TextColumn("{task.description}")]
    if size is None:
        columns += [SpinnerColumn(), DownloadColumn(), TransferSpeedColumn(), TimeElapsedColumn()]
    else:
        columns += [BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()]
    progress = Progress(*columns, console=stderr, transient=size is None)
    headers = {"Content-Type": "application/octet-stream"}
    if size is not None:
        headers["Content-Length"] = str(size)
    clean = {k: v for k, v in (params | {"name": name}).items() if v is not None}
    source = sys.stdin.buffer if stdin else path.open("rb")
    try:
        with progress:
            task = progress.add_task(name, total=size)
            try:
                return client.request(
                    "POST",
                    f"/destinations/{quote(destination, safe='')}/files",
                    content=_byte_chunks(source, progress, task),
                    params=clean,
                    headers=headers,
                )
            except CliError:
                # The portal's refusal is the one line to show: the bar goes.
                progress.remove_task(task)
                raise
    finally:
        if not stdin:
            source.close()


def _sources(urls: list[str], sources_from: str | None) -> list[str]:
    found = list(urls)
    if sources_from is not None:
        try:
            text = sys.stdin.read() if sources_from == "-" else Path(sources_from).read_text()
        except OSError as exc:
            raise CliError(f"{sources_from}: {exc.strerror or exc}") from None
        found += [line.strip() for line in text.splitlines() if line.strip()]
    return found


def put(
    ctx: typer.Context,
    file: Annotated[
        str | None, typer.Argument(help="file to upload, - for stdin (not with --source)")
    ] = None,
    destination: Annotated[str, typer.Option("--destination", "-d", help="destination name")] = "",
    source: Annotated[
        list[str] | None,
        typer.Option("--source", "-s", help="URL for the workers to fetch (repeatable)"),
    ] = None,
    sources_from: Annotated[
        str | None, typer.Option(help="file with one source URL a line (- for stdin)")
    ] = None,
    target: Annotated[str | None, typer.Option(help="target name (default: file name)")] = None,
    priority: Annotated[int | None, typer.Option(help="0 (highest) to 99")] = None,
    lifetime: Annotated[
        str | None, typer.Option(help="seconds, 90m, 12h, 2d, 1w, or an expiry time")
    ] = None,
    delay: Annotated[int | None, typer.Option(help="seconds before sending")] = None,
    at: Annotated[datetime | None, typer.Option(help="send at this time (ISO 8601)")] = None,
    asap: Annotated[bool, typer.Option("--asap", help="send as soon as possible")] = False,
    standby: Annotated[bool, typer.Option(help="hold until released")] = False,
    metadata: Annotated[
        list[str] | None, typer.Option("--metadata", "-m", help="k=v,k2=v2 (repeatable)")
    ] = None,
    group: Annotated[str | None, typer.Option(help="group name (see `ecpds wait`)")] = None,
    reqid: Annotated[
        str | None, typer.Option(help="request id: the same one again stores nothing twice")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Push FILE (or stdin) to a destination, or register --source URLs to be fetched.

    Prints the DataFileID once the file is in the store and its transfers are queued.
    """
    if not destination:
        raise CliError("missing --destination (-d) NAME")
    params = {
        "target": target,
        "priority": priority,
        "standby": "true" if standby else None,
        "metadata": metadata_text(metadata or []),
        "group": group,
        "reqid": reqid,
    } | _timing(at, delay, asap, lifetime)
    urls = _sources(source or [], sources_from)
    client = state_of(ctx).client()
    if urls:
        if file is not None:
            raise CliError("give either FILE or --source, not both")
        if target and len(urls) > 1:
            raise CliError("--target names one file: it cannot go with several sources")
        _register(client, destination, urls, params, as_json)
        return
    if file is None:
        raise CliError("missing FILE (or - for stdin, or --source URL)")
    answer = _push(client, file, destination, params)
    if as_json:
        print_json(answer)
        return
    typer.echo(
        f"DataFileID {answer['id']}  {answer['name']}  {answer['size']} bytes  "
        f"md5 {answer['md5']}  {transfer_ids(answer.get('transfers', []))}"
    )


def transfer_ids(ids: list[int]) -> str:
    """Transfer ids as words: "transfer 5", "transfers 5, 6", or "no transfer"."""
    if not ids:
        return "no transfer"
    return f"transfer{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))}"


def _register(
    client: ApiClient, destination: str, urls: list[str], params: dict[str, Any], as_json: bool
) -> None:
    body = {k: v for k, v in params.items() if v is not None and k != "target"}
    body["standby"] = bool(params.get("standby"))
    body["sources"] = [{"url": url, "target": params.get("target")} for url in urls]
    answer = client.post(f"/destinations/{quote(destination, safe='')}/sources", json=body)
    if as_json:
        print_json(answer)
        return
    for item in answer["files"]:
        typer.echo(f"DataFileID {item['id']}  {item['name']}  {item['source']}")
    again = "" if answer.get("new", True) else " (already registered by this request id)"
    group = f" in group {answer['group']}" if answer.get("group") else ""
    stderr.print(f"{len(answer['files'])} file(s) registered{group}{again}")


def wait(
    ctx: typer.Context,
    group: Annotated[str, typer.Argument(help="group given to `ecpds put --group`")],
    interval: Annotated[float, typer.Option(help="seconds between checks")] = 1.0,
    timeout: Annotated[float, typer.Option(help="give up after this many seconds (0: never)")] = 0,
    as_json: JsonOption = False,
) -> None:
    """Wait until every file of GROUP is in the store; fails naming the files that failed."""
    client = state_of(ctx).client()
    path = f"/groups/{quote(group, safe='')}"
    began = time.monotonic()
    state = client.get(path)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
        transient=as_json,
    )
    with progress:
        task = progress.add_task(f"group {group}", total=state["total"])
        while True:
            progress.update(
                task, total=state["total"], completed=state["arrived"] + len(state["failed"])
            )
            if state["pending"] == 0:
                break
            if timeout and time.monotonic() - began > timeout:
                raise CliError(
                    f"group {group}: {state['pending']} of {state['total']} files still "
                    f"pending after {timeout:g} s"
                )
            time.sleep(max(interval, 0.1))
            state = client.get(path)
    if as_json:
        print_json(state)
    failed = state["failed"]
    if failed:
        for item in failed:
            stderr.print(f"{item['name']} ({item['id']}): {item['error']}", markup=False)
        names = ", ".join(item["name"] for item in failed[:10])
        more = f" and {len(failed) - 10} more" if len(failed) > 10 else ""
        raise CliError(f"{len(failed)} of {state['total']} files failed: {names}{more}")
    if not as_json:
        typer.echo(f"group {group}: all {state['total']} files are in the store")


def status(
    ctx: typer.Context,
    id: Annotated[str, typer.Argument(help="DataFileID, or a transfer id (a number)")],
    as_json: JsonOption = False,
) -> None:
    """Show a data file and its transfers, or one transfer."""
    client = state_of(ctx).client()
    if id.isdigit():
        transfer = client.get(f"/transfers/{id}")
        if as_json:
            print_json(transfer)
        else:
            print_record(f"transfer {id}", transfer)
        return
    data_file = client.get(f"/files/{quote(id, safe='')}")
    transfers = listing(client.get("/transfers", data_file_id=id, limit=1000))
    if as_json:
        print_json({"file": data_file, "transfers": transfers})
        return
    print_record(f"data file {id}", data_file)
    print_rows("transfers", TRANSFER_COLUMNS, transfers)


def transfers(
    ctx: typer.Context,
    destination: Annotated[str | None, typer.Option("--destination", "-d")] = None,
    status: Annotated[str | None, typer.Option(help="WAIT, EXEC, DONE, FAIL, …")] = None,
    file: Annotated[str | None, typer.Option("--file", help="DataFileID")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 100,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="refresh a live table until Ctrl-C")
    ] = False,
    interval: Annotated[
        float, typer.Option(min=0.1, help="seconds between refreshes of --watch")
    ] = 2.0,
    count: Annotated[
        int, typer.Option(min=0, help="stop --watch after this many refreshes (0: never)")
    ] = 0,
    as_json: JsonOption = False,
) -> None:
    """List transfers, newest first; --watch follows their bytes, rate and ETA."""
    client = state_of(ctx).client()

    def fetch() -> list[dict[str, Any]]:
        return listing(
            client.get(
                "/transfers",
                destination=destination,
                status=status.upper() if status else None,
                data_file_id=file,
                limit=limit,
            )
        )

    if watch:
        if as_json:
            raise CliError("--watch shows a table: it cannot go with --json")
        _watch(fetch, interval, count)
        return
    rows = fetch()
    if as_json:
        print_json(rows)
        return
    print_rows(f"{len(rows)} transfer(s)", TRANSFER_COLUMNS, rows)


def _watch_table(rows: list[dict[str, Any]]) -> Table:
    shown = [row | {"sent": sent_text(row)} for row in rows]
    title = f"{len(rows)} transfer(s) at {datetime.now().astimezone():%H:%M:%S}"
    return rows_table(title, WATCH_COLUMNS, shown)


def _watch(fetch: Callable[[], list[dict[str, Any]]], interval: float, count: int) -> None:
    """Refresh the table every `interval` seconds, `count` times (0: until Ctrl-C).

    On a terminal the table is redrawn in place; piped, each refresh is printed anew.
    """
    live = Live(console=console, auto_refresh=False) if console.is_terminal else None
    with contextlib.suppress(KeyboardInterrupt), live or contextlib.nullcontext():
        for refresh in itertools.count(1):
            table = _watch_table(fetch())
            if live is None:
                console.print(table)
            else:
                live.update(table, refresh=True)
            if refresh == count:
                break
            time.sleep(interval)


def files(
    ctx: typer.Context,
    destination: Annotated[str | None, typer.Option("--destination", "-d")] = None,
    group: Annotated[str | None, typer.Option()] = None,
    name: Annotated[str | None, typer.Option()] = None,
    metadata: Annotated[
        list[str] | None, typer.Option("--metadata", "-m", help="k=v,k2=v2 (all must match)")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 100,
    as_json: JsonOption = False,
) -> None:
    """List data files, newest first."""
    rows = listing(
        state_of(ctx)
        .client()
        .get(
            "/files",
            destination=destination,
            group=group,
            name=name,
            metadata=metadata_text(metadata or []),
            limit=limit,
        )
    )
    if as_json:
        print_json(rows)
        return
    print_rows(f"{len(rows)} file(s)", FILE_COLUMNS, rows)


def view(
    ctx: typer.Context,
    kind: Annotated[str, typer.Argument(help="destination or metadata")],
    name: Annotated[str, typer.Argument(help="the destination, or the metadata key")],
    value: Annotated[str | None, typer.Option(help="only this metadata value")] = None,
    prefix: Annotated[str, typer.Option(help="only target names under this folder")] = "",
    limit: Annotated[int, typer.Option(min=1, max=100000)] = 1000,
    as_json: JsonOption = False,
) -> None:
    """The store as folders: a destination's files by target name, or VALUE/NAME by metadata."""
    client = state_of(ctx).client()
    if kind == "destination":
        path = f"/views/destinations/{quote(name, safe='')}"
        rows = listing(client.get(path, prefix=prefix or None, limit=limit))
    elif kind == "metadata":
        path = f"/views/metadata/{quote(name, safe='')}"
        rows = listing(client.get(path, value=value, limit=limit))
    else:
        raise CliError(f"unknown view {kind!r}: use destination or metadata")
    if as_json:
        print_json(rows)
        return
    print_rows(f"{kind} {name}", ("path", "size", "id", "arrived"), rows)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `ecpds` application."""
    for command in (put, wait, status, transfers, files, view):
        app.command()(reports_errors(command))
