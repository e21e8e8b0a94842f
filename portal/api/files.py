"""Data files: upload (the raw request body streamed into the store), list, read, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from sqlmodel import Session, select

from ecpds.core import catalog
from ecpds.core.dispatch import SWEEP_LATER, best_effort
from ecpds.core.ingest import ingest
from ecpds.core.models import LONGEST, DataFile, DataFilePublic, DataTransfer, DataUser, IsoTime
from ecpds.core.push import PushOptions, parse_metadata
from ecpds.portal.api.deps import (
    AdminDep,
    ApiState,
    SessionDep,
    StateDep,
    UserDep,
    visible_destinations,
)
from ecpds.portal.api.errors import refusals

router = APIRouter(tags=["files"])

# A file's bytes, as the upload takes them and the download gives them.
OCTETS = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


class PushFields(BaseModel):
    """The options of a push as the API takes them: checked by `core.push`, as at every door."""

    priority: int | None = Field(default=None, ge=0, le=99, description="0 (highest) to 99")
    lifetime: int | None = Field(default=None, gt=0, le=LONGEST, description="seconds")
    delay: int | None = Field(default=None, ge=0, le=LONGEST, description="seconds")
    at: IsoTime | None = Field(default=None, description="scheduled time, ISO 8601")
    standby: bool | None = None
    metadata: str | None = Field(default=None, description="k=v,k2=v2")
    group: str | None = None
    reqid: str | None = Field(default=None, min_length=1, description="the same again: no copy")

    def options(self, target: str | None = None) -> PushOptions:
        fields = self.model_dump(include=set(PushFields.model_fields) - {"metadata"})
        return PushOptions(target=target, metadata=parse_metadata(self.metadata), **fields)


class UploadQuery(PushFields):
    name: str = Field(min_length=1, description="file name")
    target: str | None = Field(default=None, description="name at the remote site")


class UploadResult(BaseModel):
    id: str
    name: str
    size: int
    md5: str
    adler32: str
    transfers: list[int]


@router.post(
    "/destinations/{destination}/files",
    status_code=status.HTTP_201_CREATED,
    responses=refusals(404, 409, 413, 429),
    # No body is an empty file.
    openapi_extra={"requestBody": {"required": False, "content": OCTETS}},
)
async def upload_file(
    destination: str,
    request: Request,
    state: StateDep,
    user: UserDep,
    query: Annotated[UploadQuery, Query()],
) -> UploadResult:
    """Stream the request body (not multipart) into the store and queue its transfers."""
    options = query.options(query.target)
    if options.reqid is not None:
        earlier = await run_in_threadpool(_earlier_upload, state, user, options.reqid)
        if earlier is not None:
            # The same request again (a retry): same answer, nothing stored twice; and the
            # wake the first one may have missed, the engine being down then.
            async for _ in request.stream():
                pass
            if state.dispatcher is not None:
                await best_effort(
                    state.dispatcher.queue(earlier.transfers),
                    what=f"waking the schedulers of data file {earlier.id}",
                    later=SWEEP_LATER,
                )
            return earlier
    result = await ingest(
        engine=state.engine,
        store=state.store,
        destination=destination,
        name=query.name,
        chunks=request.stream(),
        user=user,
        options=options,
        dispatcher=state.dispatcher,
        doors=state.doors,
    )
    data_file = result.data_file
    return UploadResult(
        id=data_file.id,
        name=data_file.name,
        size=data_file.size,
        md5=data_file.md5 or "",
        adler32=data_file.adler32 or "",
        transfers=result.transfer_ids,
    )


def _earlier_upload(state: ApiState, user: DataUser, reqid: str) -> UploadResult | None:
    """The upload made with `reqid`, if the caller may see it; else None, as for a new reqid."""
    with Session(state.engine) as session:
        data_file = session.exec(select(DataFile).where(DataFile.reqid == reqid)).first()
        if data_file is None:
            return None
        allowed = visible_destinations(session, user)
        if allowed is not None and not catalog.list_transfers(
            session, destinations=allowed, data_file_id=data_file.id, limit=1
        ):
            return None
        ids = session.exec(
            select(DataTransfer.id).where(DataTransfer.data_file_id == data_file.id)
        ).all()
        return UploadResult(
            id=data_file.id,
            name=data_file.name,
            size=data_file.size,
            md5=data_file.md5 or "",
            adler32=data_file.adler32 or "",
            transfers=[i for i in ids if i is not None],
        )


def _readable_file(session: Session, user: DataUser, id: str) -> DataFile:
    data_file = catalog.get_data_file(session, id=id)
    allowed = visible_destinations(session, user)
    if allowed is not None and not catalog.list_transfers(
        session, destinations=allowed, data_file_id=id, limit=1
    ):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown data file {id!r}")
    return data_file


@router.get("/files")
def list_files(
    session: SessionDep,
    user: UserDep,
    destination: str | None = None,
    name: str | None = None,
    group: str | None = None,
    metadata: Annotated[str | None, Query(description="k=v,k2=v2")] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 100,
) -> list[DataFilePublic]:
    allowed = visible_destinations(session, user)
    if destination is not None:
        allowed = [destination] if allowed is None or destination in allowed else []
    files = catalog.list_data_files(
        session,
        destinations=allowed,
        name=name,
        group=group,
        metadata=parse_metadata(metadata),
        limit=limit,
    )
    return [DataFilePublic.model_validate(f.model_dump()) for f in files]


@router.get("/files/{id}", responses=refusals(404))
def get_file(id: str, session: SessionDep, user: UserDep) -> DataFilePublic:
    return DataFilePublic.model_validate(_readable_file(session, user, id).model_dump())


@router.get(
    "/files/{id}/content",
    response_class=StreamingResponse,
    responses={200: {"content": OCTETS, "description": "the file's bytes"}} | refusals(404),
)
def get_file_content(id: str, session: SessionDep, state: StateDep, user: UserDep) -> Response:
    data_file = _readable_file(session, user, id)
    return StreamingResponse(
        state.store.iter_bytes(data_file.id, adler32=data_file.adler32),
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(data_file.size),
            "Content-Disposition": f'attachment; filename="{data_file.name}"',
            "ETag": f'"{data_file.md5}"',
        },
    )


@router.delete("/files/{id}", status_code=status.HTTP_204_NO_CONTENT, responses=refusals(404))
async def delete_file(id: str, session: SessionDep, state: StateDep, _: AdminDep) -> None:
    def forget() -> None:
        catalog.delete_data_file(session, id=id)
        session.commit()

    await run_in_threadpool(forget)
    await run_in_threadpool(state.store.delete, id)
