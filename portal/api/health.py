"""Liveness for load balancers and `ecpds up`: no authentication."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from ecpds.portal.api.deps import SessionDep

router = APIRouter(tags=["health"])


@router.get("/health")
def health(session: SessionDep) -> dict[str, str]:
    session.exec(text("SELECT 1"))  # type: ignore[call-overload]
    return {"status": "ok"}
