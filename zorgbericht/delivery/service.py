"""Queue share emails in the outbox and send what is due, with retries and backoff."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import formataddr, make_msgid
from zoneinfo import ZoneInfo

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from zorgbericht.audit import service as audit
from zorgbericht.db import transaction
from zorgbericht.delivery import templates
from zorgbericht.delivery.mailer import Mailer, MailerUnavailable
from zorgbericht.delivery.models import OutboxMessage, OutboxState
from zorgbericht.errors import NotFound
from zorgbericht.shares.models import Share, ShareState
from zorgbericht.shares.service import effective_state
from zorgbericht.storage import ObjectStore
from zorgbericht.tenants.models import Tenant

log = logging.getLogger(__name__)
AMSTERDAM = ZoneInfo("Europe/Amsterdam")
# No attempt limit: a mail is tried (backoff up to an hour) for as long as its share lives;
# once the share has ended it is given up (the code in it is never kept anywhere else).
MONTHS = {
    "nl": [
        "januari",
        "februari",
        "maart",
        "april",
        "mei",
        "juni",
        "juli",
        "augustus",
        "september",
        "oktober",
        "november",
        "december",
    ],
    "en": [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ],
}


def format_moment(moment: datetime, language: str) -> str:
    """A date and time as people in the Netherlands read it, in Amsterdam time."""
    local = moment.astimezone(AMSTERDAM)
    return f"{local.day} {MONTHS[language][local.month - 1]} {local.year}, {local:%H:%M}"


def share_email_context(*, share: Share, tenant: Tenant, url: str, code: str) -> dict[str, object]:
    return {
        "institution": tenant.name,
        "url": url,
        "code": code,
        "expires": format_moment(share.expires_at, share.language),
        "bsn_last3": share.bsn_last3 or templates.UNKNOWN[share.language],
        "phone_hint": (share.phone or "")[-2:],
    }


def queue_share_email(
    *,
    session: Session,
    share: Share,
    tenant: Tenant,
    url: str,
    code: str,
    sender_domain: str,
    now: datetime,
) -> OutboxMessage:
    """Render the share's email now (the code is known only now); send once it is ready."""
    name = "share_patient" if share.recipient == "patient" else "share_provider"
    rendered = templates.render(
        name, share.language, **share_email_context(share=share, tenant=tenant, url=url, code=code)
    )
    message = OutboxMessage(
        tenant_id=tenant.id,
        share_id=share.id,
        channel="email",
        template=name,
        recipient=share.email,
        subject=rendered.subject,
        body_text=rendered.text,
        body_html=rendered.html,
        message_id=make_msgid(uuid.uuid4().hex, domain=sender_domain),
        state=OutboxState.pending if share.state == ShareState.ready else OutboxState.held,
        next_attempt_at=now,
        created_at=now,
    )
    session.add(message)
    session.flush()
    audit.record(
        session=session,
        event=audit.Ev.mail_queued,
        actor=audit.SYSTEM,
        tenant_id=tenant.id,
        patient_id=share.patient_id,
        share_id=share.id,
        details={"outbox_id": message.id, "template": name, "held": message.state},
    )
    return message


def letter_key(share: Share) -> str:
    return f"shares/{share.tenant_id}/{share.id}/letter.pdf"


def deliver_new_share(
    *,
    session: Session,
    store: ObjectStore,
    share: Share,
    tenant: Tenant,
    url: str,
    code: str,
    sender_domain: str,
    now: datetime,
) -> None:
    """Email: queue it (held until ready). Letter: render and keep the PDF now. URL: nothing."""
    if share.delivery == "email":
        queue_share_email(
            session=session,
            share=share,
            tenant=tenant,
            url=url,
            code=code,
            sender_domain=sender_domain,
            now=now,
        )
    elif share.delivery == "letter":
        from zorgbericht.delivery.letter import render_letter

        pdf = render_letter(
            institution=tenant.name,
            url=url,
            code=code,
            language=share.language,
            expires_at=share.expires_at,
            bsn_last3=share.bsn_last3,
        )
        store.put_bytes(letter_key(share), pdf, "application/pdf")


def read_letter(*, session: Session, store: ObjectStore, share: Share, actor: audit.Actor) -> bytes:
    """The share's letter PDF, audited as downloaded; NotFound when it has none (any more)."""
    if share.delivery != "letter" or share.purged_at is not None:
        raise NotFound("this share has no letter")
    try:
        pdf = store.get_bytes(letter_key(share))
    except KeyError:
        raise NotFound("this share has no letter") from None
    audit.record(
        session=session,
        event=audit.Ev.letter_downloaded,
        actor=actor,
        tenant_id=share.tenant_id,
        share_id=share.id,
        patient_id=share.patient_id,
    )
    return pdf


def release_held(*, session: Session, share: Share, now: datetime) -> None:
    """The share is ready: its held messages may go out."""
    session.execute(
        update(OutboxMessage)
        .where(
            OutboxMessage.share_id == share.id,
            OutboxMessage.state == OutboxState.held,
        )
        .values(state=OutboxState.pending, next_attempt_at=now)
    )


def send_due(
    *, sessions: sessionmaker[Session], mailer: Mailer, sender: str, now: datetime, limit: int = 100
) -> int:
    """Send due messages one transaction each (a crash never doubles a sent mail's record)."""
    sent = 0
    for _ in range(limit):
        with transaction(sessions) as session:
            message = session.scalar(
                select(OutboxMessage)
                .where(
                    OutboxMessage.channel == "email",
                    OutboxMessage.state == OutboxState.pending,
                    OutboxMessage.next_attempt_at <= now,
                )
                .order_by(OutboxMessage.next_attempt_at, OutboxMessage.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            if message is None:
                return sent
            sent += _send_one(session, message, mailer, sender, now)
    return sent


def _send_one(
    session: Session, message: OutboxMessage, mailer: Mailer, sender: str, now: datetime
) -> int:
    share = session.get(Share, message.share_id) if message.share_id else None
    state = effective_state(share, now) if share is not None else ShareState.ready
    if state != ShareState.ready:
        message.state, message.last_error = OutboxState.failed, f"share is {state}"
        _blank(message)
        _record_failure(session, message)
        return 0
    tenant = session.get(Tenant, message.tenant_id)
    assert tenant is not None
    try:
        mailer.send(_email(message, formataddr((tenant.name, sender))))
    except MailerUnavailable as exc:
        _retry_later(session, message, str(exc), now)
        return 0
    except Exception as exc:  # a broken message or folder must not block the others
        log.exception("mail %d could not be handed over", message.id)
        _retry_later(session, message, type(exc).__name__, now)
        return 0
    message.state, message.sent_at, message.attempts = OutboxState.sent, now, message.attempts + 1
    _blank(message)
    audit.record(
        session=session,
        event=audit.Ev.mail_sent,
        actor=audit.SYSTEM,
        tenant_id=message.tenant_id,
        share_id=message.share_id,
        patient_id=share.patient_id if share else None,
        details={"outbox_id": message.id, "attempts": message.attempts},
    )
    return 1


def _retry_later(session: Session, message: OutboxMessage, reason: str, now: datetime) -> None:
    """Keep the message for a later attempt; the failed attempt is in the trail."""
    message.attempts += 1
    message.last_error = reason[:255]
    delay = min(30 * 2 ** (message.attempts - 1), 3600)
    message.next_attempt_at = now + timedelta(seconds=delay)
    _record_failure(
        session, message, retry_at=message.next_attempt_at.isoformat(timespec="seconds")
    )
    log.warning(
        "mail %d not sent (%s); attempt %d, next in %ds",
        message.id,
        reason,
        message.attempts,
        delay,
    )


def _record_failure(session: Session, message: OutboxMessage, **details: object) -> None:
    """Audit a mail that did not go out (given up, or to be tried again at ``retry_at``)."""
    audit.record(
        session=session,
        event=audit.Ev.mail_failed,
        actor=audit.SYSTEM,
        tenant_id=message.tenant_id,
        share_id=message.share_id,
        outcome=audit.Outcome.minor_failure,
        details={
            "outbox_id": message.id,
            "attempts": message.attempts,
            "reason": message.last_error,
            **details,
        },
    )


def _blank(message: OutboxMessage) -> None:
    """Forget the rendered message: it carries the link."""
    message.body_text = message.body_html = None


def _email(message: OutboxMessage, sender: str) -> EmailMessage:
    email = EmailMessage()
    email["From"] = sender
    email["To"] = message.recipient
    email["Subject"] = message.subject
    email["Message-ID"] = message.message_id
    email["Auto-Submitted"] = "auto-generated"
    email.set_content(message.body_text or "")
    email.add_alternative(message.body_html or "", subtype="html")
    return email
