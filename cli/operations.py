"""`ecpds scheduler …` and `ecpds transfer …`: watch transfers and operate the dissemination."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ecpds.cli.client import reports_errors, state_of
from ecpds.cli.resources import (
    human_bytes,
    human_rate,
    human_seconds,
    print_json,
    print_record,
    print_rows,
)

scheduler_app = typer.Typer(no_args_is_help=True)
transfer_app = typer.Typer(no_args_is_help=True)

TRANSFER_COLUMNS = (
    "id",
    "destination",
    "target",
    "status",
    "priority",
    "host",
    "bytes_sent",
    "start_count",
    "requeue_count",
    "last_error",
)

Destination = Annotated[str, typer.Argument(help="destination name")]
TransferId = Annotated[int, typer.Argument(help="transfer id")]
TransferIds = Annotated[list[int], typer.Argument(help="transfer ids (one or more)")]


def _destination_op(ctx: typer.Context, name: str, operation: str, **params: object) -> None:
    state_of(ctx).client().post(f"/destinations/{name}/operations/{operation}", params=dict(params))
    typer.echo(f"{operation}: sent to destination {name}")


def _transfer_op(ctx: typer.Context, id: int, operation: str, value: int | None = None) -> None:
    state_of(ctx).client().post(f"/transfers/{id}/operations/{operation}", params={"value": value})
    typer.echo(f"{operation}: sent for transfer {id}")


def _transfers_op(ctx: typer.Context, ids: list[int], operation: str) -> None:
    """One transfer as `_transfer_op`; several in one call of the selection's route, each
    refusal told on stderr (exit code 1 if any)."""
    if len(ids) == 1:
        _transfer_op(ctx, ids[0], operation)
        return
    answer = state_of(ctx).client().post(f"/transfers/operations/{operation}", params={"id": ids})
    sent, refused = answer["sent"], answer["refused"]
    typer.echo(f"{operation}: sent for {len(sent)} of {len(sent) + len(refused)} transfers")
    for refusal in refused:
        typer.echo(f"error: {refusal['detail']}", err=True)
    if refused:
        raise typer.Exit(1)


@scheduler_app.command()
@reports_errors
def hold(ctx: typer.Context, name: Destination) -> None:
    """Put a destination on hold: running transfers finish, no new one starts."""
    _destination_op(ctx, name, "hold")


@scheduler_app.command()
@reports_errors
def restart(
    ctx: typer.Context,
    name: Destination,
    immediate: Annotated[
        bool, typer.Option("--immediate", help="interrupt running transfers and queue them again")
    ] = False,
) -> None:
    """Release a destination from hold, back on its primary host (graceful by default)."""
    _destination_op(ctx, name, "restart", immediate=immediate)


@scheduler_app.command("clean-expired")
@reports_errors
def clean_expired(ctx: typer.Context, name: Destination) -> None:
    """Drop the destination's expired transfers from its queue."""
    _destination_op(ctx, name, "clean-expired")


@transfer_app.command("list")
@reports_errors
def list_transfers(
    ctx: typer.Context,
    destination: Annotated[str | None, typer.Option("--destination", "-d")] = None,
    status: Annotated[str | None, typer.Option("--status", "-s", help="e.g. WAIT, EXEC")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n")] = 100,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List transfers, newest first."""
    rows = (
        state_of(ctx)
        .client()
        .get("/transfers", destination=destination, status=status, limit=limit)
    )
    if as_json:
        print_json(rows)
    else:
        print_rows("transfers", TRANSFER_COLUMNS, rows)


@transfer_app.command()
@reports_errors
def show(
    ctx: typer.Context, id: TransferId, as_json: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """Show one transfer with its status, host, progress (bytes, rate, ETA) and last error."""
    record = state_of(ctx).client().get(f"/transfers/{id}")
    if as_json:
        print_json(record)
    else:
        print_record(f"transfer {id}", {"progress": progress_text(record)} | record)


def sent_text(record: dict[str, Any]) -> str:
    """e.g. "12.0 MiB of 32.0 MiB (37%)" from a transfer's JSON."""
    sent = int(record.get("bytes_sent") or 0)
    size = int(record.get("size") or 0)
    text = f"{human_bytes(sent)} of {human_bytes(size)}"
    if size:
        text += f" ({min(sent * 100 // size, 100)}%)"
    return text


def progress_text(record: dict[str, Any]) -> str:
    """e.g. "12.0 MiB of 32.0 MiB (37%), 4.0 MiB/s, ETA 5 s" from a transfer's JSON."""
    text = sent_text(record)
    rate = record.get("rate")
    if isinstance(rate, int | float) and rate > 0:
        text += f", {human_rate(rate)}"
    eta = record.get("eta")
    if isinstance(eta, int | float):
        text += f", ETA {human_seconds(eta)}"
    return text


@transfer_app.command()
@reports_errors
def requeue(ctx: typer.Context, ids: TransferIds) -> None:
    """Queue transfers again (finished ones are sent again)."""
    _transfers_op(ctx, ids, "requeue")


@transfer_app.command()
@reports_errors
def stop(ctx: typer.Context, ids: TransferIds) -> None:
    """Stop transfers for good (STOP)."""
    _transfers_op(ctx, ids, "stop")


@transfer_app.command()
@reports_errors
def interrupt(ctx: typer.Context, ids: TransferIds) -> None:
    """Interrupt transfers (INTR); `requeue` sends them again."""
    _transfers_op(ctx, ids, "interrupt")


@transfer_app.command("schedule-now")
@reports_errors
def schedule_now(ctx: typer.Context, ids: TransferIds) -> None:
    """Start scheduled transfers now instead of at their time."""
    _transfers_op(ctx, ids, "schedule-now")


@transfer_app.command()
@reports_errors
def priority(
    ctx: typer.Context,
    id: TransferId,
    value: Annotated[int, typer.Argument(min=0, max=99, help="0 is the most urgent")],
) -> None:
    """Set a waiting transfer's priority."""
    _transfer_op(ctx, id, "priority", value)


@transfer_app.command()
@reports_errors
def extend(
    ctx: typer.Context,
    id: TransferId,
    seconds: Annotated[int, typer.Argument(min=1, help="seconds to add to its lifetime")],
) -> None:
    """Extend a transfer's lifetime."""
    _transfer_op(ctx, id, "extend", seconds)


@transfer_app.command()
@reports_errors
def delete(ctx: typer.Context, ids: TransferIds) -> None:
    """Delete transfers (running ones are interrupted first)."""
    _transfers_op(ctx, ids, "delete")
