"""The `ecpds` command: one binary, many sub-commands; most of them call the portal's REST API.

Command groups of other modules register here with one `app.add_typer(...)` line; their
commands reach settings and the API through `ecpds.cli.client.state_of(ctx)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from typer import _click  # typer vendors click: its exceptions and contexts are these
from typer.core import TyperGroup

from ecpds.cli import data, listen
from ecpds.cli.acquisition import acquisition_app
from ecpds.cli.client import ApiError, CliError, CliState, reports_errors, state_of
from ecpds.cli.operations import scheduler_app, transfer_app
from ecpds.cli.portal import key_app, policy_app
from ecpds.cli.resources import RESOURCES, print_json, print_rows, resource_group
from ecpds.cli.store import store_app
from ecpds.cli.temporal import reaching_temporal, temporal_app
from ecpds.core.roles import Role
from ecpds.core.store import StoreError


@contextlib.contextmanager
def usage_in_one_line() -> Iterator[None]:
    """A usage error (unknown option, missing argument) as one line, exit code 2."""
    try:
        yield
    except _click.exceptions.NoArgsIsHelpError:
        raise  # `ecpds` alone shows the help, as it should
    except _click.exceptions.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        typer.echo(f"error: {' '.join(exc.format_message().split())}{hint}", err=True)
        raise typer.Exit(exc.exit_code) from None


class EcpdsGroup(TyperGroup):
    """The `ecpds` command: usage errors of any sub-command are one line, not a box."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: _click.Context | None = None,
        **extra: Any,
    ) -> _click.Context:
        with usage_in_one_line():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: _click.Context) -> Any:
        with usage_in_one_line():
            return super().invoke(ctx)


app = typer.Typer(
    name="ecpds",
    cls=EcpdsGroup,
    help="A product data store for weather centres: dissemination, acquisition, data portal.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
for _resource in RESOURCES:
    app.add_typer(
        resource_group(_resource),
        name=_resource.name,
        help=f"Manage {_resource.title + 's' if _resource.title else _resource.plural}.",
    )
data.register(app)
listen.register(app)
app.add_typer(scheduler_app, name="scheduler", help="Hold, restart or clean a destination.")
app.add_typer(transfer_app, name="transfer", help="List transfers and operate on one.")
app.add_typer(key_app, name="key", help="S3 access keys of data users.")
app.add_typer(
    acquisition_app,
    name="acquisition",
    help="Acquisition hosts: dry run, run now, pause, resume, and their runs.",
)
app.add_typer(policy_app, name="policy", help="Policies: destinations given to users as a group.")
app.add_typer(store_app, name="store", help="Store locations: their credentials.")
app.add_typer(
    temporal_app, name="temporal", help="Prepare the Temporal namespace: its search attributes."
)


# What `apply --dry-run` reports: nothing has changed yet.
APPLY_WOULD = {"created": "would create", "updated": "would update"}


@app.callback()
def options(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="TOML settings file (else ECPDS_CONFIG)"),
    ] = None,
) -> None:
    """Settings come from ECPDS_* environment variables, then the --config TOML file."""
    ctx.obj = CliState(config)
    ctx.call_on_close(ctx.obj.close)


@app.command()
@reports_errors
def apply(
    ctx: typer.Context,
    file: Annotated[Path, typer.Option("--file", "-f", help="site TOML file")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="report, change nothing")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Create or update hosts, destinations, aliases and users from a site file (idempotent)."""
    from ecpds.cli.site import load_site  # heavy (the catalog models): only when used

    spec = load_site(file)
    client = state_of(ctx).client()
    try:
        report = client.post("/apply", json=spec, params={"dry_run": dry_run})
    except ApiError as exc:
        if exc.status not in (400, 404, 409, 422):
            raise
        # The portal found a problem in the file's content: say which file.
        raise CliError(f"{file.name}: {exc}") from None
    if as_json:
        print_json(report)
        return
    words = APPLY_WOULD if dry_run else {}
    rows = [
        {"change": words.get(change, change), "entry": entry}
        for change in ("created", "updated", "unchanged")
        for entry in report.get(change, [])
    ]
    title = f"{file.name}{' (dry run: nothing changed)' if dry_run else ''}"
    print_rows(title, ("change", "entry"), rows)


@app.command()
@reports_errors
def token(
    ctx: typer.Context,
    label: Annotated[str, typer.Option(help="what the token is for")] = "",
) -> None:
    """Create an API token for the calling user; use it as ECPDS_API_TOKEN. Shown only once."""
    typer.echo(state_of(ctx).client().post("/tokens", json={"label": label})["token"])


@app.command()
@reports_errors
def up(
    ctx: typer.Context,
    workers: Annotated[
        str | None,
        typer.Option(
            help="worker processes: a count, or MIN..MAX to follow the task queues' backlog"
            " (one more per worker_scale_backlog waiting tasks), each running every role;"
            " or a count or range by role, such as dissemination=1..4,acquisition=1..2"
            " (default: the workers setting, 1)",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run everything: Temporal dev server (unless ECPDS_TEMPORAL_ADDRESS), workers, the portal."""
    state = state_of(ctx)
    from ecpds.cli import supervisor  # heavy: `put` and the look-ups start faster without
    from ecpds.cli.autoscale import parse_workers

    if workers is None:
        plan = parse_workers(state.settings.workers, "ECPDS_WORKERS")
    else:
        plan = parse_workers(workers)
    raise typer.Exit(supervisor.up(state.settings, state.config, plan))


@app.command()
@reports_errors
def down(ctx: typer.Context) -> None:
    """Stop what `ecpds up` started: the one in ECPDS_HOME, else ./var, else the only one."""
    from ecpds.cli import supervisor

    supervisor.down(state_of(ctx).system[0])


@app.command()
@reports_errors
def worker(
    ctx: typer.Context,
    role: Annotated[
        list[Role] | None,
        typer.Option(
            help="dissemination, acquisition or auxiliary; repeat for several"
            " (default: the worker_roles setting, all three)"
        ),
    ] = None,
) -> None:
    """Run one Temporal worker (workflows and activities) until Ctrl-C or SIGTERM."""
    from ecpds.core.settings import with_worker_metrics
    from ecpds.workers.worker import run_worker

    settings = with_worker_metrics(state_of(ctx).settings)
    if role:
        settings = settings.model_copy(update={"worker_roles": role})

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_worker(settings, stop)

    with reaching_temporal(settings):
        try:
            asyncio.run(serve())
        except StoreError as exc:
            raise CliError(str(exc)) from None
    exit_without_finalizing()


def exit_without_finalizing() -> None:
    """End a worker that has shut down cleanly without the interpreter's finalization: the
    SDK's and gRPC's native threads may still be winding down then, and one that touches
    the GIL while Python finalizes aborts the process (SIGABRT, seen in CI) after a clean
    stop. Logs and standard streams are flushed first."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@app.command()
@reports_errors
def portal(ctx: typer.Context) -> None:
    """Run the portal (REST API, data front ends, MQTT broker) until Ctrl-C or SIGTERM."""
    from ecpds.portal.base import PortalError
    from ecpds.portal.server import run

    try:
        run(state_of(ctx).settings)
    except (PortalError, StoreError) as exc:
        raise CliError(str(exc)) from None


def main() -> None:
    app()


if __name__ == "__main__":
    main()
