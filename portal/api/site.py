"""Apply a whole site description (the JSON form of site.toml) in one transaction."""

from __future__ import annotations

from fastapi import APIRouter

from ecpds.core.site import ApplyReport, SiteSpec, apply_site
from ecpds.portal.api.deps import AdminDep, SessionDep, StateDep

router = APIRouter(tags=["site"])


@router.post("/apply")
def apply(
    spec: SiteSpec, session: SessionDep, state: StateDep, _: AdminDep, dry_run: bool = False
) -> ApplyReport:
    report = apply_site(session, state.box, spec, dry_run=dry_run)
    session.commit()
    return report
