"""ecpds's search attributes on any Temporal namespace: which are missing, and registering
them through the operator service (the dev server gets them on its command line instead)."""

from __future__ import annotations

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.common import SearchAttributeIndexedValueType as Kind
from temporalio.common import SearchAttributeKey
from temporalio.runtime import Runtime
from temporalio.service import RPCError

from ecpds.core.engine import SEARCH_ATTRIBUTES
from ecpds.core.settings import Settings

# The type names Temporal's CLI and dev server take (`--search-attribute NAME=TYPE`).
TYPE_NAMES = {Kind.KEYWORD: "Keyword", Kind.INT: "Int"}


class SearchAttributesError(Exception):
    """The namespace lacks search attributes ecpds needs and they could not be registered;
    the message is one line naming them and what to run."""


async def connect(settings: Settings, runtime: Runtime | None = None) -> Client:
    """A Temporal client for the settings' server and namespace (connects now); `runtime`
    serves the SDK's metrics (the worker's, see workers/worker.sdk_runtime)."""
    return await Client.connect(
        settings.temporal_target, namespace=settings.temporal_namespace, runtime=runtime
    )


def type_name(key: SearchAttributeKey) -> str:
    return TYPE_NAMES[key.indexed_value_type]


def create_command(keys: list[SearchAttributeKey], namespace: str) -> str:
    """The `temporal` CLI commands an operator of the server runs to register `keys`, one
    per attribute (given several names, the command registers only the first)."""
    return " && ".join(
        f"temporal operator search-attribute create --namespace {namespace}"
        f" --name {key.name} --type {type_name(key)}"
        for key in keys
    )


async def missing_search_attributes(client: Client, namespace: str) -> list[SearchAttributeKey]:
    """ecpds's search attributes that `namespace` does not have.

    One registered under the same name with another type cannot be fixed by adding it:
    that is a SearchAttributesError.
    """
    try:
        listing = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=namespace)
        )
    except RPCError as exc:
        raise SearchAttributesError(
            f"cannot list the search attributes of namespace {namespace}: {exc.message}"
        ) from None
    registered = dict(listing.custom_attributes) | dict(listing.system_attributes)
    wrong = [
        f"{key.name} is {IndexedValueType.Name(registered[key.name])}, not {type_name(key)}"
        for key in SEARCH_ATTRIBUTES
        if key.name in registered and registered[key.name] != int(key.indexed_value_type)
    ]
    if wrong:
        raise SearchAttributesError(
            f"namespace {namespace} has search attributes of the wrong type ({'; '.join(wrong)}):"
            " use another namespace (ECPDS_TEMPORAL_NAMESPACE)"
        )
    return [key for key in SEARCH_ATTRIBUTES if key.name not in registered]


async def register_search_attributes(client: Client, namespace: str) -> list[str]:
    """Add the search attributes `namespace` lacks; the names added (none if all were there)."""
    missing = await missing_search_attributes(client, namespace)
    if not missing:
        return []
    wanted = {key.name: IndexedValueType.ValueType(int(key.indexed_value_type)) for key in missing}
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(search_attributes=wanted, namespace=namespace)
        )
    except RPCError as exc:
        raise SearchAttributesError(
            f"Temporal refused to register the search attributes {', '.join(wanted)} in"
            f" namespace {namespace} ({exc.message}): have an operator of the server run"
            f" `{create_command(missing, namespace)}`, or run `ecpds temporal setup` with rights"
        ) from None
    return list(wanted)
