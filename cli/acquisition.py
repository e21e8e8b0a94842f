"""`ecpds acquisition …`: dry-run, run now, pause and resume an acquisition host's discovery,
and read the record of its runs."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ecpds.cli.client import reports_errors, state_of
from ecpds.cli.resources import human_seconds, print_json, print_rows

acquisition_app = typer.Typer(no_args_is_help=True)

Host = Annotated[str, typer.Argument(help="acquisition host name")]
DestinationOption = Annotated[
    str | None,
    typer.Option("--destination", "-d", help="for a host in several destinations' host lists"),
]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON")]

RUN_COLUMNS = (
    "id",
    "host",
    "destination",
    "status",
    "started",
    "duration",
    "found",
    "new",
    "fetched",
    "failed",
    "skipped",
    "error",
)


def _operate(
    ctx: typer.Context, host: str, operation: str, destination: str | None, as_json: bool
) -> None:
    answer = (
        state_of(ctx)
        .client()
        .post(f"/acquisition/{host}/{operation}", params={"destination": destination})
    )
    if as_json:
        print_json(answer)
    else:
        typer.echo(f"{operation}: sent for host {host} (destination {answer['destination']})")


@acquisition_app.command("test")
@reports_errors
def test_host(
    ctx: typer.Context,
    host: Host,
    destination: DestinationOption = None,
    as_json: JsonOption = False,
) -> None:
    """Dry run: list what a run would fetch now and, for each file skipped, the rule and why."""
    plan = state_of(ctx).client().get(f"/acquisition/{host}/test", destination=destination)
    if as_json:
        print_json(plan)
        return
    print_rows(
        f"{host}: would fetch {len(plan['new'])} of {plan['found']}",
        ("path", "target", "rule", "changed"),
        plan["new"],
    )
    print_rows(f"{host}: skipped", ("path", "rule", "reason"), plan["skipped"])


def _operation_command(operation: str, help: str) -> None:
    def command(
        ctx: typer.Context,
        host: Host,
        destination: DestinationOption = None,
        as_json: JsonOption = False,
    ) -> None:
        _operate(ctx, host, operation, destination, as_json)

    command.__doc__ = help
    acquisition_app.command(operation)(reports_errors(command))


for _operation, _help in (
    ("run", "Run a discovery of the host now (skipped if one is running)."),
    ("pause", "Pause the host's discovery schedule."),
    ("resume", "Resume the host's discovery schedule."),
):
    _operation_command(_operation, _help)


def _run_row(run: dict[str, Any]) -> dict[str, Any]:
    skipped = ", ".join(
        f"{reason}: {count}" for reason, count in (run.get("skipped") or {}).items()
    )
    duration = run.get("duration")
    return run | {
        "skipped": skipped,
        "duration": human_seconds(duration) if isinstance(duration, int | float) else "",
    }


@acquisition_app.command()
@reports_errors
def runs(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Argument(help="only this host's runs")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n")] = 20,
    as_json: JsonOption = False,
) -> None:
    """The latest discovery runs, newest first: found, new, skipped by reason, fetched, failed."""
    rows = state_of(ctx).client().get("/acquisition/runs", host=host, limit=limit)
    if as_json:
        print_json(rows)
    else:
        print_rows("acquisition runs", RUN_COLUMNS, [_run_row(r) for r in rows])
