"""Data transfers: one file to one destination, with its status and progress."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from ecpds.core import catalog
from ecpds.core.models import DataTransferPublic, TransferStatus
from ecpds.portal.api.deps import SessionDep, UserDep, visible_destinations
from ecpds.portal.api.errors import refusals

router = APIRouter(prefix="/transfers", tags=["transfers"])


@router.get("")
def list_transfers(
    session: SessionDep,
    user: UserDep,
    destination: str | None = None,
    status: TransferStatus | None = None,
    data_file_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 100,
) -> list[DataTransferPublic]:
    allowed = visible_destinations(session, user)
    if destination is not None:
        allowed = [destination] if allowed is None or destination in allowed else []
    transfers = catalog.list_transfers(
        session, destinations=allowed, status=status, data_file_id=data_file_id, limit=limit
    )
    return [catalog.transfer_public(session, t) for t in transfers]


@router.get("/{id}", responses=refusals(404))
def get_transfer(id: int, session: SessionDep, user: UserDep) -> DataTransferPublic:
    public = catalog.transfer_public(session, catalog.get_transfer(session, id=id))
    allowed = visible_destinations(session, user)
    if allowed is not None and public.destination not in allowed:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown transfer {id}")
    return public
