"""`ecpds store …`: the store locations' credentials, sealed in this machine's state folder."""

from __future__ import annotations

from typing import Annotated

import typer

from ecpds.cli.client import CliError, reports_errors, state_of
from ecpds.core.secrets import CredentialBox, StoreCredentials, load_or_create_key

store_app = typer.Typer(no_args_is_help=True)


@store_app.command()
@reports_errors
def credentials(
    ctx: typer.Context,
    url: Annotated[str, typer.Argument(help="the store location, as in store_locations")],
    pairs: Annotated[
        list[str] | None,
        typer.Argument(help="fsspec options that are secrets: key=ID secret=KEY (S3), ..."),
    ] = None,
    remove: Annotated[bool, typer.Option("--remove", help="forget this location's")] = False,
) -> None:
    """Set the keys the store location URL is opened with, sealed with the secret key.

    Portals and workers read them when they open the store; give the same file
    (store_credentials_file) and secret key to every process.
    """
    settings = state_of(ctx).settings
    if url not in settings.store_urls:
        raise CliError(f"{url!r} is not a store location (store_locations: {settings.store_urls})")
    values: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            # Not echoed: it may be a secret typed without its name.
            raise CliError("each credential is NAME=VALUE (e.g. key=ID secret=KEY); one is not")
        values[name.strip()] = value
    if bool(values) == remove:
        raise CliError("give NAME=VALUE pairs, or --remove to forget the location's credentials")
    box = CredentialBox(load_or_create_key(settings.key_file))
    StoreCredentials(settings.store_secrets_file, box).set(url, values)
    done = f"set {', '.join(sorted(values))}" if values else "removed"
    typer.echo(f"credentials of {url}: {done} (in {settings.store_secrets_file})")
