"""`ecpds destination|host|user|alias list/show/delete`: catalog entries through the REST API."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ecpds.cli.client import listing, reports_errors, state_of

console = Console()

JsonOption = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


@dataclass(frozen=True)
class Resource:
    name: str
    plural: str
    columns: tuple[str, ...]

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
)


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(cell(item) for item in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={cell(v)}" for k, v in value.items())
    return str(value)


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def print_rows(title: str, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column.replace("_", " "))
    for row in rows:
        table.add_row(*(cell(row.get(column)) for column in columns))
    console.print(table)


def print_record(title: str, record: dict[str, Any]) -> None:
    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in record.items():
        table.add_row(key, cell(value))
    console.print(table)


def resource_group(resource: Resource) -> typer.Typer:
    group = typer.Typer(no_args_is_help=True)

    @group.command("list", help=f"List every {resource.name}.")
    @reports_errors
    def list_(ctx: typer.Context, as_json: JsonOption = False) -> None:
        rows = listing(state_of(ctx).client().get(resource.path))
        if as_json:
            print_json(rows)
        else:
            print_rows(resource.plural, resource.columns, rows)

    @group.command("show", help=f"Show one {resource.name} with all its settings.")
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

    @group.command("delete", help=f"Delete one {resource.name}.")
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
