"""Notification history: the announcements already published, for listeners catching up.

`GET /notifications` replays them (the outbox keeps them `notification_retention` days);
`GET /notifications/topics` tells a listener which broker topics to subscribe to.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlmodel import Session

from ecpds.core import catalog
from ecpds.core.models import DataUser, IsoTime, Notification
from ecpds.core.notifications import settings_of, topic_filter
from ecpds.portal.api.deps import (
    SessionDep,
    UserDep,
    check_destination_access,
    visible_destinations,
)
from ecpds.portal.api.errors import refusals

router = APIRouter(prefix="/notifications", tags=["notifications"])


class NotificationPublic(BaseModel):
    """One published notification, as it went to the broker."""

    id: int  # the position: ask for `after=<id>` to read on
    message_id: str  # also the payload's `id`: subscribers drop a repeat by it
    event: str
    destination: str
    topic: str
    created: datetime
    published: datetime
    content_type: str | None
    payload: Any  # the JSON object when the payload is JSON, else its text


class NotificationTopic(BaseModel):
    """What a listener subscribes to on the broker for one destination."""

    destination: str
    notify: str
    topic_filter: str | None  # None: the destination announces nothing
    format: str
    broker: str  # "embedded" or the external broker's URL


DestinationsQuery = Annotated[
    list[str] | None,
    Query(description="only these destinations (repeatable); default: all the caller sees"),
]


def _destinations(session: Session, user: DataUser, wanted: list[str] | None) -> list[str] | None:
    """The destinations asked for (each must be visible: 404 otherwise), else all visible."""
    for name in wanted or ():
        check_destination_access(session, user, name)
    return wanted or visible_destinations(session, user)


def _payload(row: Notification) -> Any:
    try:
        text = row.payload.decode()
    except UnicodeDecodeError:
        return row.payload.decode(errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


@router.get("", responses=refusals(404))
def list_notifications(
    session: SessionDep,
    user: UserDep,
    destination: DestinationsQuery = None,
    since: Annotated[
        IsoTime | None, Query(description="only those created at or after (RFC 3339)")
    ] = None,
    after: Annotated[int, Query(ge=0, description="only those after this id (paging)")] = 0,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> list[NotificationPublic]:
    """Published notifications in publication order; page on with `after=<last id>`."""
    rows = catalog.published_notifications(
        session,
        destinations=_destinations(session, user, destination),
        since=since,
        after=after,
        limit=limit,
    )
    return [
        NotificationPublic.model_validate(
            row.model_dump(exclude={"payload"}) | {"payload": _payload(row)}
        )
        for row in rows
    ]


@router.get("/topics", responses=refusals(404))
def list_topics(
    session: SessionDep, user: UserDep, destination: DestinationsQuery = None
) -> list[NotificationTopic]:
    """Each destination's topic filter on its broker (data users may not read its settings)."""
    names = _destinations(session, user, destination)
    topics = []
    for row in catalog.list_destinations(session, names=names):
        settings = settings_of(row.notification)
        topics.append(
            NotificationTopic(
                destination=row.name,
                notify=settings.notify,
                topic_filter=topic_filter(settings, row.name),
                format=settings.format,
                broker=settings.broker,
            )
        )
    return topics
