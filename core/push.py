"""How a push becomes transfers: the options of a push, checked once, and the plan of its legs.

Every door (REST upload, asynchronous sources, the CLI, the portal file system) hands its
options to `plan_push`, so a push is refused for the same reason in the same words
whichever way it came in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlmodel import Session, select

from ecpds.core import access, catalog
from ecpds.core.errors import unknown
from ecpds.core.models import (
    LONGEST,
    DataFile,
    DataTransfer,
    DataUser,
    Destination,
    TransferStatus,
    utcnow,
)

_META_PAIR = re.compile(r"^([\w.-]+)=(.*)$")


class IngestError(Exception):
    """Bad input for a push: one line; `status` is the matching HTTP code."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def parse_metadata(text: str | None) -> dict[str, str]:
    """`k=v,k2=v2` as a dict: the one metadata syntax of every door; empty pairs are skipped."""
    metadata = {}
    for pair in (text or "").split(","):
        if not pair.strip():
            continue
        match = _META_PAIR.match(pair.strip())
        if match is None:
            raise IngestError(f"metadata {pair.strip()!r} is not key=value (use k=v,k2=v2)")
        metadata[match.group(1)] = match.group(2)
    return metadata


@dataclass(frozen=True)
class PushOptions:
    """How a pushed file is to be sent; None leaves it to the destination (or alias)."""

    target: str | None = None  # name at the remote site (default: the file name)
    priority: int | None = None  # 0 (highest) to 99
    lifetime: int | None = None  # seconds from the scheduled start
    delay: int | None = None  # seconds before sending
    at: datetime | None = None  # send at this time (with a time zone)
    standby: bool | None = None  # hold until released
    metadata: dict[str, str] = field(default_factory=dict)
    group: str | None = None
    reqid: str | None = None  # the same request again stores nothing twice

    def check(self) -> None:
        """Refuse options that are wrong whatever the catalog holds."""
        if self.priority is not None and not 0 <= self.priority <= 99:
            raise IngestError(f"priority {self.priority} is out of range 0 (highest) to 99")
        if self.lifetime is not None and not 0 < self.lifetime <= LONGEST:
            raise IngestError(f"lifetime {self.lifetime} must be 1 to {LONGEST} seconds")
        if self.delay is not None and not 0 <= self.delay <= LONGEST:
            raise IngestError(f"delay {self.delay} must be 0 to {LONGEST} seconds")
        if self.at is not None and self.delay:
            raise IngestError("give either a delay or a time (at), not both")
        if self.at is not None and self.at.tzinfo is None:
            raise IngestError("time (at) needs a time zone, e.g. 2030-01-01T06:00:00Z")


def check_file_name(name: str) -> None:
    if not name or "/" in name or "\0" in name:
        raise IngestError(f"file name {name!r} is not a plain file name")


def check_target(target: str) -> None:
    if not target or target.endswith("/") or "\0" in target:
        raise IngestError(f"target {target!r} is not a file name")


@dataclass
class PushPlan:
    """What the catalog step will register, decided before any byte is stored."""

    destination: Destination
    max_size: int
    transfers: list[DataTransfer]


def plan_push(
    session: Session, *, destination: str, options: PushOptions, user: DataUser | None
) -> PushPlan:
    """Check a push to `destination` and plan one transfer per destination and alias.

    `options.target` is the file's name there (the caller puts in the default). Raises
    IngestError (one line, with its HTTP status) when the push may not be made.
    """
    dest = catalog.find_destination(session, name=destination)
    # Same answer for "absent" and "not yours" (policies included): names are not disclosed,
    # and only the caller's own are suggested.
    if dest is None or (
        user is not None and destination not in access.user_destinations(session, user=user)
    ):
        known = (
            [d.name for d in catalog.list_destinations(session)]
            if user is None
            else access.user_destinations(session, user=user)
        )
        raise IngestError(unknown("destination", destination, known), 404)
    options.check()
    target = options.target or ""
    check_target(target)
    if (
        dest.max_pending
        and catalog.pending_transfers(session, destination=dest) >= dest.max_pending
    ):
        raise IngestError(
            f"destination {destination!r} already has {dest.max_pending} pending transfers"
            " (max_pending)",
            429,
        )
    if (
        options.reqid is not None
        and session.exec(select(DataFile.id).where(DataFile.reqid == options.reqid)).first()
    ):
        raise IngestError(f"request id {options.reqid!r} was already used", 409)

    now = utcnow()
    start = options.at if options.at is not None else now + timedelta(seconds=options.delay or 0)
    transfers = []
    legs = [(dest, target, None)] + catalog.aliases_for(session, destination=dest, target=target)
    for leg_dest, leg_target, alias in legs:
        seconds = options.lifetime or (alias and alias.lifetime) or leg_dest.default_lifetime
        try:
            scheduled = start + timedelta(seconds=alias.delay if alias else 0)
            expires = scheduled + timedelta(seconds=seconds)
        except OverflowError:
            raise IngestError(f"the transfer to {leg_dest.name!r} expires after 9999") from None
        if expires <= now:
            raise IngestError(f"the transfer to {leg_dest.name!r} would expire before it starts")
        if options.standby or not catalog.has_dissemination_hosts(session, destination=leg_dest):
            status = TransferStatus.HOLD
        elif scheduled > now:
            status = TransferStatus.SCHE
        else:
            status = TransferStatus.WAIT
        assert leg_dest.id is not None
        transfers.append(
            DataTransfer(
                data_file_id="",
                destination_id=leg_dest.id,
                target=leg_target,
                priority=_first(
                    options.priority, alias and alias.priority, leg_dest.default_priority
                ),
                scheduled=scheduled,
                expires=expires,
                status=status,
            )
        )
    return PushPlan(destination=dest, max_size=dest.max_file_size, transfers=transfers)


def _first(*values: int | None) -> int:
    return next(v for v in values if v is not None)
