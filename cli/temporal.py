"""`ecpds temporal …`: prepare the Temporal namespace ecpds runs on (its search attributes)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import typer

from ecpds.cli.client import CliError, reports_errors, state_of
from ecpds.core.settings import Settings

temporal_app = typer.Typer(no_args_is_help=True)


@contextlib.contextmanager
def reaching_temporal(settings: Settings) -> Iterator[None]:
    """A Temporal server that does not answer as one line naming its address."""
    try:
        yield
    except RuntimeError as exc:
        if not str(exc).startswith("Failed client connect"):
            raise
        raise CliError(f"cannot reach Temporal at {settings.temporal_target}: {exc}") from None


def setup_search_attributes(settings: Settings) -> list[str]:
    """Register the search attributes the settings' namespace lacks; the names added."""
    # Imported here: the Temporal client would slow every other command's start.
    from ecpds.core.temporal_setup import (
        SearchAttributesError,
        connect,
        register_search_attributes,
    )

    async def register() -> list[str]:
        client = await connect(settings)
        return await register_search_attributes(client, settings.temporal_namespace)

    with reaching_temporal(settings):
        try:
            return asyncio.run(register())
        except SearchAttributesError as exc:
            raise CliError(str(exc)) from None


@temporal_app.command()
@reports_errors
def setup(ctx: typer.Context) -> None:
    """Register ecpds's search attributes on the Temporal namespace of the settings."""
    settings = state_of(ctx).settings
    added = setup_search_attributes(settings)
    where = f"namespace {settings.temporal_namespace} on {settings.temporal_target}"
    if added:
        typer.echo(f"registered search attributes {', '.join(added)} in {where}")
    else:
        from ecpds.core.engine import SEARCH_ATTRIBUTES

        names = ", ".join(key.name for key in SEARCH_ATTRIBUTES)
        typer.echo(f"nothing was missing: {where} has {names}")
