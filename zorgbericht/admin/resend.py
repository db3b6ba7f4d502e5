"""Send a share's email again: with a new link, because the old one is kept nowhere."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Update, update
from sqlalchemy.orm import Session

from zorgbericht.audit import service as audit
from zorgbericht.delivery import service as delivery
from zorgbericht.delivery.models import OutboxMessage, OutboxState
from zorgbericht.errors import Conflict
from zorgbericht.recipients.models import RecipientSession
from zorgbericht.shares import codes
from zorgbericht.shares.models import LIVE_STATES, Share
from zorgbericht.shares.service import effective_state
from zorgbericht.tenants.models import Tenant

SUPERSEDED = "superseded by a renewed link"


def _count(session: Session, statement: Update) -> int:
    """Run an UPDATE; return how many rows it changed."""
    result = cast(CursorResult[Any], session.execute(statement))
    return int(result.rowcount)


def can_resend(share: Share, now: datetime) -> bool:
    """Only a live share delivered by email, with its address still known, is mailed again."""
    return (
        share.delivery == "email"
        and bool(share.email)
        and effective_state(share, now) in LIVE_STATES
    )


def resend_share_email(
    *,
    session: Session,
    share: Share,
    tenant: Tenant,
    actor: audit.Actor,
    secret: str,
    public_url: str,
    sender_domain: str,
    now: datetime,
) -> OutboxMessage:
    """Give the share a new link code and queue a mail with it to the same address.

    The link code exists only as an HMAC and a sent mail's body is blanked, so the first
    mail cannot be sent again. The old link stops working at once; browsers that opened it
    but have not signed in yet are ended, signed-in recipients carry on. Unsent mails with
    the old link are dropped. The new mail is held while the share is still pending.
    """
    session.refresh(share, with_for_update=True)  # a revoke or expiry may be under way
    if not can_resend(share, now):
        raise Conflict("only a live share delivered by email can be sent again")
    code = codes.new_code()
    share.code_hmac = codes.code_hmac(code, secret)
    dropped = _count(
        session,
        update(OutboxMessage)
        .where(
            OutboxMessage.share_id == share.id,
            OutboxMessage.channel == "email",
            OutboxMessage.state.in_((OutboxState.held, OutboxState.pending)),
        )
        .values(state=OutboxState.failed, last_error=SUPERSEDED, body_text=None, body_html=None),
    )
    ended = _count(
        session,
        update(RecipientSession)
        .where(
            RecipientSession.share_id == share.id,
            RecipientSession.signed_in_at.is_(None),
            RecipientSession.ended_at.is_(None),
        )
        .values(ended_at=now),
    )
    audit.record(
        session=session,
        event=audit.Ev.share_link_renewed,
        actor=actor,
        tenant_id=share.tenant_id,
        patient_id=share.patient_id,
        share_id=share.id,
        study_uids=[s.study_uid for s in share.studies],
        details={
            "reason": "email sent again",
            "unsent_mails_dropped": dropped,
            "sessions_ended": ended,
        },
    )
    return delivery.queue_share_email(
        session=session,
        share=share,
        tenant=tenant,
        url=codes.share_url(public_url, code),
        code=code,
        sender_domain=sender_domain,
        now=now,
    )
