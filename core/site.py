"""A site description (site.toml): hosts, destinations, aliases, users and expected products
applied in one go.

Applying is idempotent (what already matches is "unchanged") and all-or-nothing.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from sqlmodel import Session

from ecpds.core import catalog
from ecpds.core.errors import NotFound, validation_message
from ecpds.core.models import (
    INPUT,
    AliasCreate,
    AliasUpdate,
    DataUserCreate,
    DataUserUpdate,
    DestinationCreate,
    DestinationUpdate,
    ExpectedProductCreate,
    ExpectedProductUpdate,
    HostCreate,
    HostUpdate,
)
from ecpds.core.secrets import CredentialBox, verify_password

_STRICT = INPUT


class SiteHost(HostCreate):
    model_config = _STRICT  # type: ignore[assignment]


class SiteDestination(DestinationCreate):
    model_config = _STRICT  # type: ignore[assignment]


class SiteAlias(AliasCreate):
    model_config = _STRICT  # type: ignore[assignment]


class SiteUser(DataUserCreate):
    model_config = _STRICT  # type: ignore[assignment]


class SiteExpected(ExpectedProductCreate):
    model_config = _STRICT  # type: ignore[assignment]


class SiteSpec(BaseModel):
    """The TOML arrays of tables `[[host]]`, `[[destination]]`, `[[alias]]`, `[[user]]`,
    `[[expected]]`."""

    model_config = _STRICT

    host: list[SiteHost] = Field(default_factory=list)
    destination: list[SiteDestination] = Field(default_factory=list)
    alias: list[SiteAlias] = Field(default_factory=list)
    user: list[SiteUser] = Field(default_factory=list)
    expected: list[SiteExpected] = Field(default_factory=list)


class ApplyReport(BaseModel):
    created: list[str] = Field(default_factory=list)
    updated: list[str] = Field(default_factory=list)
    unchanged: list[str] = Field(default_factory=list)


class SiteError(Exception):
    """The site description cannot be read; the message is one line."""


def load_site(path: Path) -> SiteSpec:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise SiteError(f"{path}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SiteError(f"{path}: not valid TOML: {exc}") from exc
    return parse_site(data, source=str(path))


def parse_site(data: dict[str, Any], *, source: str = "site") -> SiteSpec:
    try:
        return SiteSpec.model_validate(data)
    except ValidationError as exc:
        raise SiteError(f"{source}: {validation_message(exc)}") from exc


def _differs(current: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in wanted.items() if current.get(k) != v}


def apply_site(
    session: Session, box: CredentialBox, spec: SiteSpec, *, dry_run: bool = False
) -> ApplyReport:
    """Create or update everything in `spec`; with `dry_run`, report and roll back."""
    report = ApplyReport()
    for host in spec.host:
        _apply_host(session, box, host, report)
    # Order matters: destinations name hosts; aliases and users name destinations.
    for destination in spec.destination:
        _apply_destination(session, box, destination, report)
    for alias in spec.alias:
        _apply_alias(session, alias, report)
    for user in spec.user:
        _apply_user(session, user, report)
    for expected in spec.expected:
        _apply_expected(session, expected, report)
    if dry_run:
        session.rollback()
    return report


def _apply_host(session: Session, box: CredentialBox, spec: SiteHost, report: ApplyReport) -> None:
    label = f"host {spec.name}"
    current = catalog.find_host(session, name=spec.name)
    if current is None:
        catalog.create_host(session, box=box, data=HostCreate.model_validate(spec.model_dump()))
        report.created.append(label)
        return
    wanted = spec.model_dump(exclude_unset=True, exclude={"name", "credentials"})
    changes = _differs(current.model_dump(), wanted)
    if "credentials" in spec.model_fields_set and spec.credentials != box.open(
        current.credentials_encrypted
    ):
        changes["credentials"] = spec.credentials
    if not changes:
        report.unchanged.append(label)
        return
    catalog.update_host(session, box=box, name=spec.name, data=HostUpdate.model_validate(changes))
    report.updated.append(label)


def _apply_destination(
    session: Session, box: CredentialBox, spec: SiteDestination, report: ApplyReport
) -> None:
    label = f"destination {spec.name}"
    current = catalog.find_destination(session, name=spec.name)
    if current is None:
        catalog.create_destination(
            session, data=DestinationCreate.model_validate(spec.model_dump()), box=box
        )
        report.created.append(label)
        return
    have = current.model_dump() | {
        "hosts": [h.name for h in catalog.destination_hosts(session, destination=current)]
    }
    changes = _differs(
        have, spec.model_dump(exclude_unset=True, exclude={"name", "notification_password"})
    )
    password = spec.notification_password
    if password is not None and password != box.open(current.notification_password_encrypted).get(
        "password", ""
    ):
        changes["notification_password"] = password
    if not changes:
        report.unchanged.append(label)
        return
    catalog.update_destination(
        session, name=spec.name, data=DestinationUpdate.model_validate(changes), box=box
    )
    report.updated.append(label)


def _apply_alias(session: Session, spec: SiteAlias, report: ApplyReport) -> None:
    label = f"alias {spec.name}"
    current = catalog.find_alias(session, name=spec.name)
    if current is None:
        catalog.create_alias(session, data=AliasCreate.model_validate(spec.model_dump()))
        report.created.append(label)
        return
    have = catalog.alias_public(session, current).model_dump()
    changes = _differs(have, spec.model_dump(exclude_unset=True, exclude={"name"}))
    if not changes:
        report.unchanged.append(label)
        return
    catalog.update_alias(session, name=spec.name, data=AliasUpdate.model_validate(changes))
    report.updated.append(label)


def _apply_expected(session: Session, spec: SiteExpected, report: ApplyReport) -> None:
    label = f"expected {spec.name}"
    try:
        current = catalog.get_expected(session, name=spec.name)
    except NotFound:
        catalog.create_expected(
            session, data=ExpectedProductCreate.model_validate(spec.model_dump())
        )
        report.created.append(label)
        return
    changes = _differs(current.model_dump(), spec.model_dump(exclude_unset=True, exclude={"name"}))
    if not changes:
        report.unchanged.append(label)
        return
    catalog.update_expected(
        session, name=spec.name, data=ExpectedProductUpdate.model_validate(changes)
    )
    report.updated.append(label)


def _apply_user(session: Session, spec: SiteUser, report: ApplyReport) -> None:
    label = f"user {spec.name}"
    current = catalog.find_user(session, name=spec.name)
    if current is None:
        catalog.create_user(session, data=DataUserCreate.model_validate(spec.model_dump()))
        report.created.append(label)
        return
    have = catalog.user_public(session, current).model_dump()
    changes = _differs(have, spec.model_dump(exclude_unset=True, exclude={"name", "password"}))
    if sorted(changes.get("destinations", have["destinations"])) == have["destinations"]:
        changes.pop("destinations", None)
    if spec.password is not None and not verify_password(current.password_hash, spec.password):
        changes["password"] = spec.password
    if not changes:
        report.unchanged.append(label)
        return
    catalog.update_user(session, name=spec.name, data=DataUserUpdate.model_validate(changes))
    report.updated.append(label)
