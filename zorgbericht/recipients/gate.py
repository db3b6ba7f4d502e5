"""The recipient gate: link code, terms, birth date, SMS code (DESIGN §5).

Counters live on the share, never only on a browser or an address: 5 wrong birth dates
or 5 wrong SMS codes lock the share for a day. A code that matches no share gets a
``CodeProbe`` row counted the same way, so unknown, ended and valid codes answer alike
until the birth date step.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import NoReturn

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from zorgbericht.audit import service as audit
from zorgbericht.delivery.service import AMSTERDAM
from zorgbericht.delivery.sms import SmsRejected, SmsSender, SmsUnavailable, render_sms
from zorgbericht.errors import (
    Conflict,
    Gone,
    Invalid,
    Locked,
    TooMany,
    Unauthorized,
    Unavailable,
    WrongAnswer,
)
from zorgbericht.recipients import sessions, throttle
from zorgbericht.recipients.models import CodeProbe, RecipientSession, SmsChallenge
from zorgbericht.settings import Settings
from zorgbericht.shares import codes
from zorgbericht.shares.models import Share, ShareState
from zorgbericht.shares.service import effective_state
from zorgbericht.sqlutil import insert
from zorgbericht.tenants.models import Tenant

ENDED_MESSAGE = "this link no longer works; ask the institution for a new one"
MAX_FAILURES = 5
CHECKS_PER_CODE = 5
ENDED = (ShareState.expired, ShareState.revoked, ShareState.failed)
FAILURE_WINDOW = timedelta(hours=24)


def amsterdam_day(now: datetime) -> date:
    return now.astimezone(AMSTERDAM).date()


def day_start(now: datetime) -> datetime:
    """The start of ``now``'s Europe/Amsterdam calendar day, as an aware datetime."""
    return datetime.combine(amsterdam_day(now), time(0), AMSTERDAM)


@dataclass(frozen=True)
class Gate:
    """What every gate step needs besides the database session."""

    settings: Settings
    actor: audit.Actor
    now: datetime

    @property
    def secret(self) -> str:
        return self.settings.secret_key.get_secret_value()


def record_share_event(
    session: Session,
    actor: audit.Actor,
    event: audit.Ev,
    share: Share | None,
    outcome: audit.Outcome = audit.Outcome.success,
    study_uids: list[str] | None = None,
    **details: object,
) -> None:
    """Audit a recipient event with the share's patient and studies (when there is a share)."""
    if study_uids is None:
        study_uids = [s.study_uid for s in share.studies] if share else []
    audit.record(
        session=session,
        event=event,
        actor=actor,
        tenant_id=share.tenant_id if share else None,
        outcome=outcome,
        patient_id=share.patient_id if share else None,
        bsn=share.bsn_last3 if share else None,
        share_id=share.id if share else None,
        study_uids=study_uids,
        details=details,
    )


def _event(
    session: Session,
    gate: Gate,
    event: audit.Ev,
    share: Share | None,
    outcome: audit.Outcome = audit.Outcome.success,
    **details: object,
) -> None:
    record_share_event(session, gate.actor, event, share, outcome, **details)


def open_link(
    *, session: Session, gate: Gate, code: str, previous: RecipientSession | None
) -> tuple[RecipientSession, str]:
    """Exchange a well-formed link code for a new session; return it and its cookie token."""
    canonical = codes.normalise(code)
    if canonical is None:
        raise Invalid("the code has 12 letters and digits, like ABCD-EFGH-JKMN")
    digest = codes.code_hmac(canonical, gate.secret)
    share = session.scalar(select(Share).where(Share.code_hmac == digest))
    if previous is not None:
        previous.ended_at = gate.now
    token = sessions.new_token()
    row = RecipientSession(
        token_hash=sessions.token_hash(token),
        code_hmac=digest,
        share_id=share.id if share else None,
        created_at=gate.now,
        last_seen_at=gate.now,
    )
    session.add(row)
    session.flush()
    outcome = audit.Outcome.success if share else audit.Outcome.minor_failure
    _event(session, _as(gate, row, share), audit.Ev.link_opened, share, outcome)
    return row, token


def _as(gate: Gate, row: RecipientSession, share: Share | None) -> Gate:
    """The gate with the audit actor naming this session and on whose behalf it acts."""
    actor = audit.Actor(
        gate.actor.kind,
        f"recipient-session:{row.id}",
        on_behalf_of=share.recipient if share else None,
        ip=gate.actor.ip,
        user_agent=gate.actor.user_agent,
    )
    return Gate(gate.settings, actor, gate.now)


def accept_terms(*, session: Session, gate: Gate, row: RecipientSession) -> None:
    """Record that the terms of use were accepted in this session."""
    if row.terms_accepted_at is None:
        row.terms_accepted_at = gate.now
        share = session.get(Share, row.share_id) if row.share_id else None
        _event(session, _as(gate, row, share), audit.Ev.terms_accepted, share)


def _locked_share(session: Session, row: RecipientSession) -> Share | None:
    """The session's share under a row lock: counters and SMS quota change one at a time.

    A session opened with a link code that has since been renewed (an admin resent the
    mail) goes no further: before the birth date it becomes a session of an unknown code,
    after it the link has ended. Renewing ends such sessions too; this closes the race
    with a session opened while the renewal was being committed.
    """
    if row.share_id is None:
        return None
    share = session.scalar(select(Share).where(Share.id == row.share_id).with_for_update())
    if share is not None and row.signed_in_at is None and share.code_hmac != row.code_hmac:
        if row.birth_date_ok_at is None:
            row.share_id = None
            return None
        raise Gone(ENDED_MESSAGE, reason="renewed")
    return share


def _count_failure(count: int, last: datetime | None, now: datetime) -> int:
    """One more failure in the rolling day that began with the failures before it."""
    return 1 if last is None or now - last > FAILURE_WINDOW else count + 1


def _refuse_ended_or_locked(session: Session, gate: Gate, share: Share) -> None:
    state = effective_state(share, gate.now)
    if state in ENDED:
        _event(
            session,
            gate,
            audit.Ev.recipient_refused,
            share,
            audit.Outcome.minor_failure,
            reason=state.value,
        )
        # Said before the birth date is checked, so it does not name the institution.
        raise Gone(ENDED_MESSAGE, reason=state.value)
    if share.locked_until is not None and share.locked_until > gate.now:
        raise _locked(share.locked_until)


def _locked(until: datetime) -> Locked:
    return Locked(
        "too many wrong attempts: this link is locked for 24 hours",
        locked_until=until.isoformat(),
    )


def check_birth_date(
    *, session: Session, gate: Gate, row: RecipientSession, birth_date: date, sms: SmsSender
) -> dict[str, object]:
    """Check the patient's birth date; when right, send the SMS code."""
    if row.terms_accepted_at is None:
        raise Conflict("accept the terms of use first")
    share = _locked_share(session, row)
    gate = _as(gate, row, share)
    if share is None:
        return _probe_birth_date(session, gate, row)
    _refuse_ended_or_locked(session, gate, share)
    if share.birth_date is None or not hmac.compare_digest(
        share.birth_date.isoformat(), birth_date.isoformat()
    ):
        _fail(session, gate, share, WRONG_BIRTH_DATE)
    row.birth_date_ok_at = gate.now
    # The SMS goes out before the event is written: writing it takes the audit chain's
    # lock, which must not wait on the SMS provider.
    try:
        send_code(session=session, gate=gate, row=row, share=share, sms=sms)
    finally:
        _event(session, gate, audit.Ev.birth_date_right, share)
    tenant = session.get(Tenant, share.tenant_id)
    return {
        "sms_sent": True,
        "step": "sms",
        "phone_hint": phone_hint(share),
        "institution": tenant.name if tenant else None,
    }


def _probe_birth_date(session: Session, gate: Gate, row: RecipientSession) -> dict[str, object]:
    """A code that matches no share: wrong every time, locked after 5, like a real one."""
    session.execute(  # parallel first tries: one row, then a row lock like a share's
        insert(session, CodeProbe)
        .values(code_hmac=row.code_hmac, dob_failures=0, updated_at=gate.now)
        .on_conflict_do_nothing()
    )
    probe = session.scalar(
        select(CodeProbe).where(CodeProbe.code_hmac == row.code_hmac).with_for_update()
    )
    assert probe is not None
    if probe.locked_until is not None and probe.locked_until > gate.now:
        raise _locked(probe.locked_until)
    last = probe.updated_at if probe.dob_failures else None
    probe.dob_failures = _count_failure(probe.dob_failures, last, gate.now)
    probe.updated_at = gate.now
    _event(
        session,
        gate,
        audit.Ev.birth_date_wrong,
        None,
        audit.Outcome.minor_failure,
        failures=probe.dob_failures,
        unknown_code=True,
    )
    if probe.dob_failures >= MAX_FAILURES:
        probe.locked_until = gate.now + gate.settings.recipient_lock
        probe.dob_failures = 0
        raise _locked(probe.locked_until)
    raise WrongAnswer(
        "the date of birth is not right", attempts_left=MAX_FAILURES - probe.dob_failures
    )


def phone_hint(share: Share) -> str | None:
    return f"•• {share.phone[-2:]}" if share.phone else None


def _code_hmac(challenge_id: int, code: str, secret: str) -> str:
    key = hashlib.sha256(b"zorgbericht sms code\0" + secret.encode()).digest()
    return hmac.new(key, f"{challenge_id}\0{code}".encode(), hashlib.sha256).hexdigest()


def send_code(
    *, session: Session, gate: Gate, row: RecipientSession, share: Share, sms: SmsSender
) -> None:
    """Make a new 6-digit code (older ones stop working) and text it to the share's phone."""
    sent_today = session.scalar(
        select(func.count())
        .select_from(SmsChallenge)
        .where(SmsChallenge.share_id == share.id, SmsChallenge.created_at >= day_start(gate.now))
    )
    if (sent_today or 0) >= gate.settings.sms_per_day or not share.phone:
        _event(
            session,
            gate,
            audit.Ev.sms_refused,
            share,
            audit.Outcome.minor_failure,
            sent_today=sent_today,
        )
        raise TooMany(
            "no more SMS codes can be sent for this link today; try again tomorrow",
            reason="sms_limit",
        )
    code = f"{secrets.randbelow(10**6):06d}"
    ttl = gate.settings.sms_code_ttl
    challenge = SmsChallenge(
        share_id=share.id,
        session_id=row.id,
        code_hmac="",
        created_at=gate.now,
        expires_at=gate.now + ttl,
    )
    session.add(challenge)
    session.flush()
    challenge.code_hmac = _code_hmac(challenge.id, code, gate.secret)
    body = render_sms(language=share.language, code=code, minutes=int(ttl.total_seconds() // 60))
    try:
        sms.send(to=share.phone, body=body)
    except (SmsUnavailable, SmsRejected) as exc:
        # Never delivered: it neither counts towards the day's SMS nor can be checked.
        session.delete(challenge)
        _event(
            session,
            gate,
            audit.Ev.sms_failed,
            share,
            audit.Outcome.serious_failure,
            reason=type(exc).__name__,
        )
        raise Unavailable("the SMS code could not be sent; try again in a few minutes") from None
    session.execute(  # only now: a failed send leaves the code the recipient has working
        update(SmsChallenge)
        .where(
            SmsChallenge.share_id == share.id,
            SmsChallenge.used_at.is_(None),
            SmsChallenge.id != challenge.id,
        )
        .values(superseded=True)
    )
    _event(session, gate, audit.Ev.sms_sent, share, sent_today=(sent_today or 0) + 1)


def resend_code(*, session: Session, gate: Gate, row: RecipientSession, sms: SmsSender) -> None:
    """Send a new code; the failure count of the share stays as it is."""
    if row.birth_date_ok_at is None or row.share_id is None:
        raise Conflict("enter the date of birth first")
    share = _locked_share(session, row)
    assert share is not None
    gate = _as(gate, row, share)
    _refuse_ended_or_locked(session, gate, share)
    send_code(session=session, gate=gate, row=row, share=share, sms=sms)


def check_code(
    *, session: Session, gate: Gate, row: RecipientSession, code: str
) -> RecipientSession:
    """Check the SMS code; when right the session is signed in (and gets a new id)."""
    if row.birth_date_ok_at is None or row.share_id is None:
        raise Conflict("enter the date of birth first")
    share = _locked_share(session, row)
    assert share is not None
    gate = _as(gate, row, share)
    _refuse_ended_or_locked(session, gate, share)
    challenge = session.scalar(
        select(SmsChallenge)
        .where(SmsChallenge.session_id == row.id, SmsChallenge.share_id == share.id)
        .order_by(SmsChallenge.id.desc())
        .limit(1)
    )
    if (
        challenge is None
        or challenge.superseded
        or challenge.used_at is not None
        or challenge.expires_at <= gate.now
        or challenge.checks >= CHECKS_PER_CODE
    ):
        _event(session, gate, audit.Ev.code_wrong, share, audit.Outcome.minor_failure, expired=True)
        raise WrongAnswer(
            "this code has expired; ask for a new one",
            expired=True,
            attempts_left=MAX_FAILURES - share.sms_failures,
        )
    challenge.checks += 1
    given = code.strip()
    if not (given.isdigit() and len(given) == 6) or not hmac.compare_digest(
        challenge.code_hmac, _code_hmac(challenge.id, given, gate.secret)
    ):
        _fail(session, gate, share, WRONG_CODE)
    challenge.used_at = gate.now
    row.signed_in_at = gate.now
    _event(session, gate, audit.Ev.code_right, share)
    return row


@dataclass(frozen=True)
class _Step:
    """A gate step whose failures the share counts: its columns, events and message."""

    counter: str
    last_failed: str
    wrong: audit.Ev
    locked: audit.Ev
    message: str


WRONG_BIRTH_DATE = _Step(
    "dob_failures",
    "dob_failed_at",
    audit.Ev.birth_date_wrong,
    audit.Ev.birth_date_locked,
    "the date of birth is not right",
)
WRONG_CODE = _Step(
    "sms_failures",
    "sms_failed_at",
    audit.Ev.code_wrong,
    audit.Ev.code_locked,
    "the code is not right",
)


def _fail(session: Session, gate: Gate, share: Share, step: _Step) -> NoReturn:
    """Count a wrong answer; the fifth in a day locks the share for everyone."""
    count = _count_failure(getattr(share, step.counter), getattr(share, step.last_failed), gate.now)
    setattr(share, step.counter, count)
    setattr(share, step.last_failed, gate.now)
    _event(session, gate, step.wrong, share, audit.Outcome.minor_failure, failures=count)
    if count >= MAX_FAILURES:
        share.locked_until = gate.now + gate.settings.recipient_lock
        setattr(share, step.counter, 0)
        _event(session, gate, step.locked, share, audit.Outcome.serious_failure)
        raise _locked(share.locked_until)
    raise WrongAnswer(step.message, attempts_left=MAX_FAILURES - count)


def require_signed_in(row: RecipientSession | None) -> RecipientSession:
    if row is None or row.signed_in_at is None or row.share_id is None:
        raise Unauthorized("sign in with the link, the date of birth and the SMS code")
    return row


def rotate(row: RecipientSession) -> str:
    """Give a session a new cookie id (after sign-in), so an id seen before is worthless."""
    token = sessions.new_token()
    row.token_hash = sessions.token_hash(token)
    return token


def log_out(*, session: Session, gate: Gate, row: RecipientSession) -> None:
    row.ended_at = gate.now
    share = session.get(Share, row.share_id) if row.share_id else None
    _event(session, _as(gate, row, share), audit.Ev.recipient_logout, share)


def forget_stale(*, session: Session, now: datetime, max_age: timedelta) -> None:
    """Drop gate bookkeeping nobody can need any more: old windows, probes and codes."""
    day_ago = now - timedelta(days=1)
    throttle.forget_before(session=session, moment=day_ago)
    session.execute(
        delete(CodeProbe).where(
            CodeProbe.updated_at < day_ago,
            or_(CodeProbe.locked_until.is_(None), CodeProbe.locked_until < now),
        )
    )
    # Challenges make the day's SMS count: keep them past the Amsterdam day they belong to.
    session.execute(
        delete(SmsChallenge).where(SmsChallenge.created_at < day_start(now) - timedelta(days=1))
    )
    # Sessions past their absolute timeout are dead; the trail names them by id only.
    session.execute(
        delete(RecipientSession).where(
            RecipientSession.created_at < now - max_age - timedelta(days=1)
        )
    )
