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
    """Give the share a new link code and queue a mail with it to the same address."""
    # The code exists only as an HMAC and a sent mail's body is blanked: the first mail
    # cannot be sent again, so the old link is replaced and stops working at once.
    session.refresh(share, with_for_update=True)  # a revoke or expiry may be under way
    if not can_resend(share, now):
        raise Conflict("only a live share delivered by email can be sent again")
    code = codes.new_code()
    share.code_hmac = codes.code_hmac(code, secret)
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
            "unsent_mails_dropped": _drop_unsent_mails(session, share),
            "sessions_ended": _end_sessions_not_signed_in(session, share, now),
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


def _drop_unsent_mails(session: Session, share: Share) -> int:
    """Unsent mails carry the old link: they are given up, their text forgotten."""
    return _count(
        session,
        update(OutboxMessage)
        .where(
            OutboxMessage.share_id == share.id,
            OutboxMessage.channel == "email",
            OutboxMessage.state.in_((OutboxState.held, OutboxState.pending)),
        )
        .values(state=OutboxState.failed, last_error=SUPERSEDED, body_text=None, body_html=None),
    )


def _end_sessions_not_signed_in(session: Session, share: Share, now: datetime) -> int:
    """Browsers that opened the old link but did not sign in start again with the new one."""
    return _count(
        session,
        update(RecipientSession)
        .where(
            RecipientSession.share_id == share.id,
            RecipientSession.signed_in_at.is_(None),
            RecipientSession.ended_at.is_(None),
        )
        .values(ended_at=now),
    )
