"""`ecpds destination|host|user|alias list/show/delete`: catalog entries through the REST API."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ecpds.cli.client import listing, reports_errors, state_of

# Piped output is not cut or wrapped at 80 columns: rows stay whole for grep and awk.
PIPED_WIDTH = 10_000
console = Console(width=None if sys.stdout.isatty() else PIPED_WIDTH)

JsonOption = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


@dataclass(frozen=True)
class Resource:
    name: str
    plural: str
    columns: tuple[str, ...]
    title: str = ""  # how help texts name one; default: `name`

    @property
    def path(self) -> str:
        return f"/{self.plural}"


RESOURCES = (
    Resource(
        "destination",
        "destinations",
        ("name", "hosts", "max_connections", "status", "active", "comment"),
    ),
    Resource("host", "hosts", ("name", "kind", "url", "active", "credential_keys", "comment")),
    Resource("user", "users", ("name", "admin", "active", "destinations", "comment")),
    Resource("alias", "aliases", ("name", "source", "target", "pattern", "rewrite", "active")),
    Resource(
        "expected",
        "expected",
        ("name", "destination", "pattern", "due", "comment"),
        "expected product",
    ),
)


def human_bytes(count: float) -> str:
    """1536 -> "1.5 KiB"."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def human_rate(per_second: float) -> str:
    """1536.0 -> "1.5 KiB/s"."""
    return f"{human_bytes(per_second)}/s"


def human_seconds(seconds: float) -> str:
    """75 -> "1 min 15 s"."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


# Fields shown for people in tables and records; `--json` keeps the raw numbers.
HUMAN: dict[str, Callable[[float], str]] = {
    "size": human_bytes,
    "size_sent": human_bytes,
    "bytes_sent": human_bytes,
    "max_file_size": human_bytes,
    "compression_min_size": human_bytes,
    "rate": human_rate,
    "eta": human_seconds,
}


def cell(value: Any, field: str = "") -> str:
    if value is None:
        return ""
    if field in HUMAN and isinstance(value, int | float) and not isinstance(value, bool):
        return HUMAN[field](value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(cell(item) for item in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={cell(v)}" for k, v in value.items())
    return str(value)


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def rows_table(title: str, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column.replace("_", " "))
    for row in rows:
        table.add_row(*(cell(row.get(column), column) for column in columns))
    return table


def print_rows(title: str, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    console.print(rows_table(title, columns, rows))


def print_record(title: str, record: dict[str, Any]) -> None:
    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in record.items():
        table.add_row(key, cell(value, key))
    console.print(table)


def resource_group(resource: Resource) -> typer.Typer:
    group = typer.Typer(no_args_is_help=True)

    @group.command("list", help=f"List every {resource.title or resource.name}.")
    @reports_errors
    def list_(ctx: typer.Context, as_json: JsonOption = False) -> None:
        rows = listing(state_of(ctx).client().get(resource.path))
        if as_json:
            print_json(rows)
        else:
            print_rows(resource.plural, resource.columns, rows)

    @group.command(
        "show", help=f"Show one {resource.title or resource.name} with all its settings."
    )
    @reports_errors
    def show(
        ctx: typer.Context,
        name: Annotated[str, typer.Argument(help="its name")],
        as_json: JsonOption = False,
    ) -> None:
        record = state_of(ctx).client().get(f"{resource.path}/{name}")
        if as_json:
            print_json(record)
        else:
            print_record(f"{resource.name} {name}", record)

    @group.command("delete", help=f"Delete one {resource.title or resource.name}.")
    @reports_errors
    def delete(
        ctx: typer.Context,
        name: Annotated[str, typer.Argument(help="its name")],
        force: Annotated[
            bool, typer.Option("--force", help="delete even what is still in use")
        ] = False,
    ) -> None:
        params = {"force": "true"} if force else {}
        state_of(ctx).client().request("DELETE", f"{resource.path}/{name}", params=params)
        typer.echo(f"deleted {resource.name} {name}")

    return group
