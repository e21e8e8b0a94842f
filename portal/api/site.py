"""Apply a whole site description (the JSON form of site.toml) in one transaction."""

from __future__ import annotations

from fastapi import APIRouter

from ecpds.core.site import ApplyReport, SiteSpec, apply_site
from ecpds.portal.api.acquisition import schedules_before, sync_schedules
from ecpds.portal.api.deps import AdminDep, SessionDep, StateDep
from ecpds.portal.api.errors import refusals

router = APIRouter(tags=["site"])


@router.post("/apply", responses=refusals(409))
def apply(
    spec: SiteSpec, session: SessionDep, state: StateDep, _: AdminDep, dry_run: bool = False
) -> ApplyReport:
    before = schedules_before(state)
    report = apply_site(session, state.box, spec, dry_run=dry_run)
    session.commit()
    if not dry_run:
        sync_schedules(state, before)
    return report
