"""`ecpds listen`: follow notifications (catching up first with --from or --state), print
them, run a command for each, or download each product verified.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from ecpds.cli.client import ApiClient, CliError, api_login, listing, reports_errors, state_of
from ecpds.core.listening import (
    Heard,
    LiveFeed,
    Position,
    Selection,
    Subscription,
    listen,
    local_path,
    save_verified,
    since_of,
)

SAVE_EVERY = 1.0  # seconds between writes of the state file (and once at the end)
TABLE_LINE = "{created:<26} {event:<9} {destination:<16} {size:>12} {name}"


def _subscriptions(
    client: ApiClient, destinations: list[str], embedded: bool
) -> list[Subscription]:
    params = {"destination": destinations} if destinations else {}
    topics = listing(client.get("/notifications/topics", **params))
    subscriptions = [
        Subscription(destination=t["destination"], topic_filter=t["topic_filter"])
        for t in topics
        if t["topic_filter"] and (t["broker"] == "embedded" or not embedded)
    ]
    if not subscriptions:
        raise CliError(
            "none of these destinations announces its products on this broker "
            "(see their notification settings: notify, broker)"
        )
    return subscriptions


def _history(client: ApiClient, destinations: list[str]) -> Any:
    def page(since: datetime, after: int) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"since": since.isoformat(), "after": after, "limit": 1000}
        if destinations:
            params["destination"] = destinations
        return listing(client.get("/notifications", **params))

    return page


def _show(heard: Heard, form: str) -> None:
    if form == "json":
        typer.echo(json.dumps(heard.record(), separators=(",", ":")))
        return
    created = heard.created.isoformat(timespec="seconds") if heard.created else ""
    fields = heard.fields()
    typer.echo(TABLE_LINE.format(created=created, **fields))


def _act(
    heard: Heard, client: ApiClient, download: Path | None, command: str | None, form: str
) -> None:
    fields = heard.fields()
    fields["path"] = ""
    if download is not None:
        try:
            path = local_path(download, heard)
            if not heard.url.startswith("https://"):
                raise ValueError(f"{heard.name}: no portal URL to download it from")
            fields["path"] = str(save_verified(client.download(heard.url), path, heard=heard))
        except ValueError as exc:
            raise CliError(str(exc)) from None
    if command is None:
        _show(heard, form)
        return
    quoted = {key: shlex.quote(value) for key, value in fields.items()}
    try:
        line = command.format_map(quoted)
    except (KeyError, ValueError, IndexError) as exc:
        raise CliError(
            f"--exec {command!r}: unknown placeholder {exc} (use {{id}} {{event}} {{name}} "
            "{target} {destination} {size} {md5} {url} {path} {topic})"
        ) from None
    subprocess.run(line, shell=True, check=False)  # the user's command, as they wrote it


@reports_errors
def listen_command(
    ctx: typer.Context,
    destination: Annotated[
        list[str] | None,
        typer.Option("--destination", "-d", help="only this destination (repeatable)"),
    ] = None,
    name: Annotated[str | None, typer.Option(help="only products whose name matches")] = None,
    event: Annotated[
        Literal["store", "delivery"] | None,
        typer.Option(help="only this event: store (in the portal) or delivery (at the site)"),
    ] = None,
    meta: Annotated[
        list[str] | None, typer.Option(help="only products with this metadata k=v (repeatable)")
    ] = None,
    form: Annotated[
        Literal["table", "json"], typer.Option("--format", help="table, or JSON lines")
    ] = "table",
    exec_: Annotated[
        str | None,
        typer.Option(
            "--exec",
            help="run this for each: {id} {event} {name} {target} {destination} {size} {md5} "
            "{url} {path} {topic} (shell-quoted)",
        ),
    ] = None,
    download: Annotated[
        Path | None, typer.Option(help="download each product into this folder, verified")
    ] = None,
    from_: Annotated[
        str | None,
        typer.Option("--from", help="first replay those since: RFC 3339 time or 30m, 2h, 1d"),
    ] = None,
    state: Annotated[
        Path | None, typer.Option(help="keep the position in this file; resume from it")
    ] = None,
    broker: Annotated[
        str | None,
        typer.Option(help="mqtt://, mqtts://, ws:// or wss:// URL (default: the portal's)"),
    ] = None,
    ca: Annotated[Path | None, typer.Option(help="CA file to check an mqtts:// broker")] = None,
    insecure: Annotated[
        bool, typer.Option(help="mqtts:// without checking the certificate")
    ] = False,
    count: Annotated[int | None, typer.Option(min=1, help="exit after N notifications")] = None,
) -> None:
    """Follow notifications live; with --from or --state, first those missed, none twice."""
    cli = state_of(ctx)
    settings, _ = cli.system
    client = cli.client()
    destinations = destination or []
    try:
        selection = Selection.of(name, meta or [])
        now = datetime.now(UTC)
        start = since_of(from_, now) if from_ else None
        resumed = state is not None and state.exists()
        position = Position.load(state) if state is not None and resumed else Position()
        if not resumed:
            position.floor = start or now  # a first run wants nothing older than this
        since = position.since if resumed else start
    except ValueError as exc:
        raise CliError(str(exc)) from None
    login = api_login(settings)
    if login is None:
        raise CliError("the broker needs a user and password: set ECPDS_API_PASSWORD")
    subscriptions = _subscriptions(client, destinations, embedded=broker is None)
    url = broker or settings.embedded_broker_url
    try:
        feed = LiveFeed(
            url,
            user=login[0],
            password=login[1],
            subscriptions=subscriptions,
            ca_file=ca,
            insecure=insecure,
        )
    except (ValueError, ConnectionError) as exc:
        raise CliError(str(exc)) from None
    filters = ", ".join(s.topic_filter for s in subscriptions)
    typer.echo(f"listening to {filters} on {url}", err=True)
    if form == "table" and exec_ is None:
        typer.echo(
            TABLE_LINE.format(
                created="created",
                event="event",
                destination="destination",
                size="size",
                name="name",
            )
        )
    handled, saved = 0, time.monotonic()
    try:
        for heard in listen(feed, _history(client, destinations), since, position):
            if selection.accepts(heard) and event in (None, heard.fields()["event"]):
                _act(heard, client, download, exec_, form)
                handled += 1
            position.add(heard)
            if state is not None and time.monotonic() - saved >= SAVE_EVERY:
                position.save(state)
                saved = time.monotonic()
            if count is not None and handled >= count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        feed.close()
        if state is not None:
            position.save(state)


def register(app: typer.Typer) -> None:
    app.command("listen")(listen_command)
