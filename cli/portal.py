"""`ecpds key …` and `ecpds policy …`: S3 access keys of data users, and destination policies."""

from __future__ import annotations

from typing import Annotated

import typer

from ecpds.cli.client import reports_errors, state_of
from ecpds.cli.resources import print_json, print_record, print_rows

key_app = typer.Typer(no_args_is_help=True)
policy_app = typer.Typer(no_args_is_help=True)

User = Annotated[str, typer.Argument(help="data user name")]
PolicyName = Annotated[str, typer.Argument(help="policy name")]
AsJson = Annotated[bool, typer.Option("--json", help="print JSON")]


@key_app.command("create")
@reports_errors
def create_key(ctx: typer.Context, user: User, as_json: AsJson = False) -> None:
    """A new S3 access key for USER; the secret is shown only this once."""
    key = state_of(ctx).client().post(f"/users/{user}/keys")
    if as_json:
        print_json(key)
        return
    print_record(f"S3 access key of {user} (keep the secret: it is not shown again)", key)


@key_app.command("list")
@reports_errors
def list_keys(ctx: typer.Context, user: User, as_json: AsJson = False) -> None:
    """The S3 access key ids of USER."""
    keys = state_of(ctx).client().get(f"/users/{user}/keys")
    if as_json:
        print_json(keys)
        return
    print_rows(f"S3 access keys of {user}", ("access_key_id", "created"), keys)


@key_app.command("delete")
@reports_errors
def delete_key(
    ctx: typer.Context, user: User, key_id: Annotated[str, typer.Argument(help="access key id")]
) -> None:
    """Revoke one S3 access key of USER."""
    state_of(ctx).client().delete(f"/users/{user}/keys/{key_id}")
    typer.echo(f"deleted key {key_id} of {user}")


@policy_app.command("list")
@reports_errors
def list_policies(ctx: typer.Context, as_json: AsJson = False) -> None:
    """Policies: named groups of destinations, and the users they are given to."""
    policies = state_of(ctx).client().get("/policies")
    if as_json:
        print_json(policies)
        return
    print_rows("policies", ("name", "destinations", "users", "comment"), policies)


@policy_app.command("create")
@reports_errors
def create_policy(
    ctx: typer.Context,
    name: PolicyName,
    destination: Annotated[
        list[str] | None, typer.Option("--destination", "-d", help="repeat for several")
    ] = None,
    user: Annotated[
        list[str] | None, typer.Option("--user", "-u", help="repeat for several")
    ] = None,
    comment: Annotated[str, typer.Option("--comment")] = "",
) -> None:
    """Create a policy giving its users every one of its destinations."""
    body = {
        "name": name,
        "comment": comment,
        "destinations": destination or [],
        "users": user or [],
    }
    print_record(f"policy {name}", state_of(ctx).client().post("/policies", json=body))


@policy_app.command("delete")
@reports_errors
def delete_policy(ctx: typer.Context, name: PolicyName) -> None:
    """Delete a policy (its users keep the destinations given to them directly)."""
    state_of(ctx).client().delete(f"/policies/{name}")
    typer.echo(f"deleted policy {name}")
