"""The admin portal's pages: dashboard, shares, a share's timeline, revoke, resend, export."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from sqlalchemy.orm import Session

from zorgbericht.admin import chart, resend, service
from zorgbericht.admin.portal import Admin, AdminDep, AdminRoute, page, words
from zorgbericht.admin.words import mask_email, mask_phone
from zorgbericht.audit import service as audit
from zorgbericht.db import utcnow
from zorgbericht.deps import RuntimeDep, SessionDep
from zorgbericht.errors import Conflict, Invalid
from zorgbericht.runtime import Runtime
from zorgbericht.shares import service as shares
from zorgbericht.shares.models import LIVE_STATES, Share, ShareState
from zorgbericht.staff.routes import check_csrf, secret_key

router = APIRouter(prefix="/admin", include_in_schema=False, route_class=AdminRoute)

Format = Literal["csv", "jsonl"]
MEDIA = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}
DONE = ("revoked", "resent")
# Events about some of the share's studies: the timeline names them.
PER_STUDY = {
    audit.Ev.image_viewed.event_name,
    audit.Ev.report_viewed.event_name,
    audit.Ev.download_started.event_name,
    audit.Ev.download_refused.event_name,
}


@router.get("")
def dashboard(request: Request, admin: AdminDep, session: SessionDep) -> Response:
    now = utcnow()
    days = service.daily_activity(session=session, tenant_id=admin.tenant_id, now=now)
    return page(
        request,
        admin,
        "admin/dashboard.html",
        days=days,
        charts=[chart.bar_chart(key, days) for key in service.MEASURES],
        locked=service.locked_shares(session=session, tenant_id=admin.tenant_id, now=now),
        live=service.live_count(session=session, tenant_id=admin.tenant_id, now=now),
        today=service.amsterdam_day(now).isoformat(),
    )


@router.get("/shares")
def shares_page(request: Request, admin: AdminDep, session: SessionDep) -> Response:
    """The newest shares, unfiltered."""
    return _listing(request, admin, session, service.ShareFilter(), {})


@router.post("/shares")
def filter_shares(
    request: Request,
    admin: AdminDep,
    session: SessionDep,
    runtime: RuntimeDep,
    csrf: Annotated[str, Form()],
    state: Annotated[str, Form(max_length=16)] = "",
    patient_id: Annotated[str, Form(max_length=64)] = "",
    creator: Annotated[str, Form(max_length=64)] = "",
    created_from: Annotated[str, Form(max_length=10)] = "",
    created_to: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    """Filter the shares (a POST: a patient ID stays out of URLs and history)."""
    check_csrf(request, runtime, csrf)
    people = service.people(session=session, tenant_id=admin.tenant_id)
    errors: dict[str, str] = {}
    first, last = _day(created_from, "created_from", errors), _day(created_to, "created_to", errors)
    if first and last and first > last:
        errors["created_to"] = "admin_dates_order"
    filters = service.ShareFilter(
        state=ShareState(state) if state in ShareState.__members__ else None,
        patient_id=patient_id.strip() or None,
        creator=creator if creator in people else None,
        created_from=first,
        created_to=last,
    )
    return _listing(request, admin, session, filters, errors, people)


def _day(text: str, field: str, errors: dict[str, str]) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        errors[field] = "admin_date_invalid"
        return None


def _listing(
    request: Request,
    admin: Admin,
    session: Session,
    filters: service.ShareFilter,
    errors: dict[str, str],
    people: dict[str, tuple[str, str]] | None = None,
) -> Response:
    people = people or service.people(session=session, tenant_id=admin.tenant_id)
    rows: list[service.Row] = []
    capped, now = False, utcnow()
    if not errors:
        rows, capped = service.find_shares(
            session=session, tenant_id=admin.tenant_id, filters=filters, now=now
        )
    audit.record(
        session=session,
        event=audit.Ev.shares_listed,
        actor=admin.actor,
        tenant_id=admin.tenant_id,
        patient_id=filters.patient_id,
        details=_filter_details(filters, len(rows), capped),
    )
    return page(
        request,
        admin,
        "admin/shares.html",
        400 if errors else 200,
        w=words(request, people),
        rows=rows,
        capped=capped,
        filters=filters,
        errors=errors,
        people=people,
        states=list(ShareState),
        limit=service.LIST_LIMIT,
        now=now,
    )


def _filter_details(filters: service.ShareFilter, matches: int, capped: bool) -> dict[str, object]:
    """The filters for the trail; the patient ID has its own column (masked when a BSN)."""
    details: dict[str, object] = {"matches": matches, "capped": capped, "page": "admin"}
    for name in ("state", "creator", "created_from", "created_to"):
        value = getattr(filters, name)
        if value:
            details[name] = str(value)
    return details


@router.get("/shares/{share_id}")
def share_page(
    request: Request,
    share_id: int,
    admin: AdminDep,
    session: SessionDep,
    runtime: RuntimeDep,
    done: Annotated[str, Query(max_length=16)] = "",
) -> Response:
    share = shares.get_share(session=session, tenant_id=admin.tenant_id, share_id=share_id)
    now, settings = utcnow(), runtime.settings
    details = service.share_details(
        session=session,
        share=share,
        now=now,
        idle=settings.recipient_idle,
        max_age=settings.recipient_max_age,
    )
    events = service.timeline(session=session, tenant_id=admin.tenant_id, share_id=share.id)
    _record_view(session, admin, share, details, len(events))
    return page(
        request,
        admin,
        "admin/share.html",
        w=words(request, service.people(session=session, tenant_id=admin.tenant_id)),
        share=share,
        d=details,
        events=events,
        per_study=PER_STUDY,
        study_names={uid: (s.description or uid) if s else uid for uid, s in details.studies},
        email=mask_email(share.email),
        phone=mask_phone(share.phone),
        locked=share.locked_until is not None and share.locked_until > now,
        can_resend=resend.can_resend(share, now),
        daily_limit=settings.daily_download_limit,
        done=done if done in DONE else None,
    )


def _record_view(
    session: Session, admin: Admin, share: Share, details: service.Details, events: int
) -> None:
    """Who looked at this share's patient data and trail (after the purge: the trail's ID)."""
    audit.record(
        session=session,
        event=audit.Ev.share_viewed,
        actor=admin.actor,
        tenant_id=admin.tenant_id,
        patient_id=share.patient_id or details.trail_patient_id,
        share_id=share.id,
        study_uids=[s.study_uid for s in share.studies],
        details={"page": "admin", "events": events},
    )


def _confirm(
    request: Request, admin: Admin, session: Session, share: Share, action: str
) -> Response:
    now = utcnow()
    return page(
        request,
        admin,
        "admin/confirm.html",
        w=words(request, service.people(session=session, tenant_id=admin.tenant_id)),
        share=share,
        action=action,
        state=shares.effective_state(share, now),
        allowed=resend.can_resend(share, now)
        if action == "resend"
        else shares.effective_state(share, now) in LIVE_STATES,
        email=mask_email(share.email),
    )


@router.get("/shares/{share_id}/revoke")
def confirm_revoke(
    request: Request, share_id: int, admin: AdminDep, session: SessionDep
) -> Response:
    share = shares.get_share(session=session, tenant_id=admin.tenant_id, share_id=share_id)
    return _confirm(request, admin, session, share, "revoke")


@router.post("/shares/{share_id}/revoke")
def revoke(
    request: Request,
    share_id: int,
    admin: AdminDep,
    session: SessionDep,
    runtime: RuntimeDep,
    csrf: Annotated[str, Form()],
) -> Response:
    """Stop the share at once; a signed-in recipient's next request is refused."""
    check_csrf(request, runtime, csrf)
    share = shares.get_share(session=session, tenant_id=admin.tenant_id, share_id=share_id)
    now = utcnow()
    if shares.effective_state(share, now) not in LIVE_STATES:
        raise Conflict("this share has ended already")
    shares.revoke(session=session, share=share, actor=admin.actor, now=now)
    return RedirectResponse(f"/admin/shares/{share.id}?done=revoked", status_code=303)


@router.get("/shares/{share_id}/resend")
def confirm_resend(
    request: Request, share_id: int, admin: AdminDep, session: SessionDep
) -> Response:
    share = shares.get_share(session=session, tenant_id=admin.tenant_id, share_id=share_id)
    return _confirm(request, admin, session, share, "resend")


@router.post("/shares/{share_id}/resend")
def resend_email(
    request: Request,
    share_id: int,
    admin: AdminDep,
    session: SessionDep,
    runtime: RuntimeDep,
    csrf: Annotated[str, Form()],
) -> Response:
    """Mail the same address a new link; the old link stops working."""
    check_csrf(request, runtime, csrf)
    share = shares.get_share(session=session, tenant_id=admin.tenant_id, share_id=share_id)
    settings = runtime.settings
    resend.resend_share_email(
        session=session,
        share=share,
        tenant=admin.tenant,
        actor=admin.actor,
        secret=secret_key(runtime),
        public_url=settings.public_url,
        sender_domain=settings.mail_from.split("@")[-1],
        now=utcnow(),
    )
    return RedirectResponse(f"/admin/shares/{share.id}?done=resent", status_code=303)


@router.get("/export")
def export_trail(
    request: Request,
    admin: AdminDep,
    session: SessionDep,
    runtime: RuntimeDep,
    fmt: Annotated[Format, Query(alias="format")] = "csv",
    since: Annotated[str, Query(max_length=10)] = "",
) -> Response:
    """The tenant's trail from an Amsterdam date on (the form's empty date: all), as a download."""
    try:
        first = date.fromisoformat(since) if since else None
    except ValueError:
        raise Invalid("since must be a date like 2026-01-31") from None
    name = f"zorgbericht-audit-{admin.tenant.slug}-{first or 'all'}"
    return _export(session, runtime, admin, fmt, first, None, name)


@router.get("/shares/{share_id}/export")
def export_share(
    request: Request,
    share_id: int,
    admin: AdminDep,
    session: SessionDep,
    runtime: RuntimeDep,
    fmt: Annotated[Format, Query(alias="format")] = "csv",
) -> Response:
    """One share's timeline as a download."""
    share = shares.get_share(session=session, tenant_id=admin.tenant_id, share_id=share_id)
    name = f"zorgbericht-audit-{admin.tenant.slug}-share-{share.id}"
    return _export(session, runtime, admin, fmt, None, share, name)


def _export(
    session: Session,
    runtime: Runtime,
    admin: Admin,
    fmt: str,
    since: date | None,
    share: Share | None,
    name: str,
) -> Response:
    """Audit the export, then stream it (the request's commit comes before the first byte)."""
    audit.record(
        session=session,
        event=audit.Ev.audit_exported,
        actor=admin.actor,
        tenant_id=admin.tenant_id,
        share_id=share.id if share else None,
        patient_id=share.patient_id if share else None,
        details={"format": fmt, "since": since.isoformat() if since else None, "page": "admin"},
    )
    body = service.stream_export(
        sessions=runtime.sessions,
        tenant_id=admin.tenant_id,
        since=service.day_start(since) if since else None,
        fmt=fmt,
        share_id=share.id if share else None,
    )
    return StreamingResponse(
        body,
        media_type=MEDIA[fmt],
        headers={"Content-Disposition": f'attachment; filename="{name}.{fmt}"'},
    )
