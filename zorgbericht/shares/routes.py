"""Share API (DESIGN §8): create, read, list, letter, revoke, audit."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel

from zorgbericht.audit import service as audit
from zorgbericht.audit.models import AuditEvent
from zorgbericht.db import utcnow
from zorgbericht.delivery import service as delivery
from zorgbericht.deps import ApiClientDep, RuntimeDep, SessionDep, StoreDep, api_actor
from zorgbericht.errors import DomainError
from zorgbericht.recipients import service as recipients
from zorgbericht.runtime import Runtime
from zorgbericht.shares import service as shares
from zorgbericht.shares.schemas import ShareIn, ShareOut
from zorgbericht.tenants import service as tenants
from zorgbericht.web.pages import pdf_response

router = APIRouter(prefix="/api/v1/shares", tags=["shares"])
_REFUSALS = {
    422: {"description": "the request cannot be shared; `detail` says what to fix"},
    401: {"description": "no or unknown API key"},
}


@router.post("", status_code=201, response_model=ShareOut, responses=_REFUSALS)
def create_share(
    request: Request,
    share_in: ShareIn,
    client: ApiClientDep,
    session: SessionDep,
    runtime: RuntimeDep,
    store: StoreDep,
) -> ShareOut:
    """Share one patient's studies; studies not staged are retrieved from the PACS."""
    tenant, key = client
    actor, now, settings, tenant_id = api_actor(request, key), utcnow(), runtime.settings, tenant.id
    try:
        created = shares.create_share(
            session=session,
            tenant=tenant,
            actor=actor,
            share_in=share_in,
            settings=settings,
            pacs=runtime.pacs,
            now=now,
        )
    except DomainError as exc:
        session.rollback()  # SQLite allows one writer: undo the request's work first
        shares.record_refusal(
            sessions=runtime.sessions,
            tenant_id=tenant_id,
            actor=actor,
            study_uids=share_in.study_uids,
            reason=exc.detail,
        )
        raise
    share = created.share
    delivery.deliver_new_share(
        session=session,
        store=store,
        share=share,
        tenant=tenant,
        url=created.url,
        code=created.code,
        sender_domain=settings.mail_from.split("@")[-1],
        now=now,
    )
    shown = created.url if share.delivery in ("url", "letter") else None
    return shares.to_out(share, now, url=shown, letter_url=_letter_url(request, share))


def _letter_url(request: Request, share) -> str | None:  # type: ignore[no-untyped-def]
    if share.delivery != "letter":
        return None
    return str(request.url_for("share_letter", share_id=share.id))


@router.get("/{share_id}", response_model=ShareOut, responses={404: {}})
def get_share(
    request: Request, share_id: int, client: ApiClientDep, session: SessionDep
) -> ShareOut:
    tenant, key = client
    share = shares.get_share(session=session, tenant_id=tenant.id, share_id=share_id)
    audit.record(
        session=session,
        event=audit.Ev.share_viewed,
        actor=api_actor(request, key),
        tenant_id=tenant.id,
        share_id=share.id,
        patient_id=share.patient_id,
    )
    now = utcnow()
    counts = recipients.downloads_by_share(session=session, share_ids=[share.id], now=now)
    return shares.to_out(
        share, now, letter_url=_letter_url(request, share), downloads_today=counts.get(share.id, 0)
    )


@router.get("", response_model=list[ShareOut])
def list_shares(
    request: Request,
    client: ApiClientDep,
    session: SessionDep,
    state: Literal["pending", "ready", "expired", "revoked", "failed"] | None = None,
    patient_id: str | None = Query(None, max_length=64),
) -> list[ShareOut]:
    """The tenant's shares, newest first."""
    tenant, key = client
    found = shares.list_shares(
        session=session, tenant_id=tenant.id, state=state, patient_id=patient_id
    )
    audit.record(
        session=session,
        event=audit.Ev.shares_listed,
        actor=api_actor(request, key),
        tenant_id=tenant.id,
        patient_id=patient_id,
        details={"matches": len(found)},
    )
    now = utcnow()
    counts = recipients.downloads_by_share(
        session=session, share_ids=[s.id for s in found], now=now
    )
    return [
        shares.to_out(
            s, now, letter_url=_letter_url(request, s), downloads_today=counts.get(s.id, 0)
        )
        for s in found
    ]


@router.get(
    "/{share_id}/letter.pdf",
    name="share_letter",
    responses={200: {"content": {"application/pdf": {}}}, 404: {}},
)
def share_letter(
    request: Request, share_id: int, client: ApiClientDep, session: SessionDep, store: StoreDep
) -> Response:
    """The printable letter for the patient (delivery `letter` only)."""
    tenant, key = client
    share = shares.get_share(session=session, tenant_id=tenant.id, share_id=share_id)
    pdf = delivery.read_letter(
        session=session, store=store, share=share, actor=api_actor(request, key)
    )
    return pdf_response(pdf, f"zorgbericht-{share.id}.pdf")


@router.delete("/{share_id}", status_code=204, responses={404: {}})
def revoke_share(
    request: Request, share_id: int, client: ApiClientDep, session: SessionDep
) -> Response:
    """Stop the share at once."""
    tenant, key = client
    share = shares.get_share(session=session, tenant_id=tenant.id, share_id=share_id)
    shares.revoke(session=session, share=share, actor=api_actor(request, key), now=utcnow())
    return Response(status_code=204)


class AuditOut(BaseModel):
    seq: int
    occurred_at: str
    event: str
    event_code: str
    outcome: int
    actor_kind: str
    actor_id: str | None
    ip: str | None
    details: dict[str, object]


@router.get("/{share_id}/audit", response_model=list[AuditOut], responses={404: {}})
def share_audit(
    request: Request, share_id: int, client: ApiClientDep, session: SessionDep
) -> list[AuditOut]:
    """Everything that happened to this share, oldest first."""
    tenant, key = client
    share = shares.get_share(session=session, tenant_id=tenant.id, share_id=share_id)
    from sqlalchemy import select

    rows = session.scalars(
        select(AuditEvent)
        .where(AuditEvent.share_id == share.id, AuditEvent.tenant_id == tenant.id)
        .order_by(AuditEvent.seq)
    ).all()
    out = [
        AuditOut(
            seq=r.seq,
            occurred_at=r.occurred_at.isoformat(),
            event=r.event,
            event_code=r.event_code,
            outcome=r.outcome,
            actor_kind=r.actor_kind,
            actor_id=r.actor_id,
            ip=r.ip,
            details=r.details,
        )
        for r in rows
    ]
    audit.record(
        session=session,
        event=audit.Ev.audit_viewed,
        actor=api_actor(request, key),
        tenant_id=tenant.id,
        share_id=share.id,
        patient_id=share.patient_id,
    )
    return out


def record_invalid_request(request: Request, runtime: Runtime, detail: str, body: object) -> None:
    """A share request refused by validation (bad phone, email, ...) is audited too."""
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("bearer "):
        return
    with runtime.sessions() as session:
        found = tenants.tenant_for_api_key(session=session, key=header[7:].strip())
        if found is None:
            return
        tenant_id, actor = found[0].id, api_actor(request, found[1])
    uids = body.get("study_uids") if isinstance(body, dict) else None
    uids = (
        [u for u in uids if isinstance(u, str) and len(u) <= 64] if isinstance(uids, list) else []
    )
    shares.record_refusal(
        sessions=runtime.sessions,
        tenant_id=tenant_id,
        actor=actor,
        study_uids=uids[:100],
        reason=detail[:500],
    )
