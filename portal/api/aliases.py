"""Aliases: files for one destination also queue to another, optionally renamed."""

from __future__ import annotations

from fastapi import APIRouter, status

from ecpds.core import catalog
from ecpds.core.models import INPUT, AliasCreate, AliasPublic, AliasUpdate
from ecpds.portal.api.deps import AdminDep, SessionDep
from ecpds.portal.api.errors import refusals

router = APIRouter(prefix="/aliases", tags=["aliases"])


class AliasIn(AliasCreate):
    model_config = INPUT  # type: ignore[assignment]


class AliasPatch(AliasUpdate):
    model_config = INPUT  # type: ignore[assignment]


@router.get("")
def list_aliases(session: SessionDep, _: AdminDep) -> list[AliasPublic]:
    return [catalog.alias_public(session, a) for a in catalog.list_aliases(session)]


@router.post("", status_code=status.HTTP_201_CREATED, responses=refusals(409))
def create_alias(data: AliasIn, session: SessionDep, _: AdminDep) -> AliasPublic:
    alias = catalog.create_alias(session, data=data)
    session.commit()
    return catalog.alias_public(session, alias)


@router.get("/{name}", responses=refusals(404))
def get_alias(name: str, session: SessionDep, _: AdminDep) -> AliasPublic:
    return catalog.alias_public(session, catalog.get_alias(session, name=name))


@router.patch("/{name}", responses=refusals(404))
def update_alias(name: str, data: AliasPatch, session: SessionDep, _: AdminDep) -> AliasPublic:
    alias = catalog.update_alias(session, name=name, data=data)
    session.commit()
    return catalog.alias_public(session, alias)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, responses=refusals(404))
def delete_alias(name: str, session: SessionDep, _: AdminDep) -> None:
    catalog.delete_alias(session, name=name)
    session.commit()
