"""Bearer tokens: a caller trades its password for a token to use instead."""

from __future__ import annotations

from fastapi import APIRouter, status
from pydantic import BaseModel, Field

from ecpds.core import catalog
from ecpds.core.models import INPUT
from ecpds.portal.api.deps import SessionDep, UserDep

router = APIRouter(prefix="/tokens", tags=["tokens"])


class TokenRequest(BaseModel):
    model_config = INPUT
    label: str = Field(default="", max_length=200)


class TokenResponse(BaseModel):
    token: str


@router.post("", status_code=status.HTTP_201_CREATED)
def create_token(
    session: SessionDep, user: UserDep, data: TokenRequest | None = None
) -> TokenResponse:
    """A new token for the caller; it is shown only this once."""
    token = catalog.create_token(session, user=user, label=data.label if data else "")
    session.commit()
    return TokenResponse(token=token)
