"""Queries of the admin portal; every one is limited to the admin's own tenant."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from zorgbericht.audit import service as audit
from zorgbericht.audit.models import AuditEvent
from zorgbericht.bsn import is_valid_bsn, masked
from zorgbericht.delivery.models import OutboxMessage
from zorgbericht.delivery.service import AMSTERDAM
from zorgbericht.recipients.models import RecipientSession
from zorgbericht.recipients.service import downloads_today
from zorgbericht.shares.models import LIVE_STATES, Share, ShareState
from zorgbericht.shares.service import effective_state
from zorgbericht.staging.models import Study
from zorgbericht.tenants.models import ApiKey, StaffUser

LIST_LIMIT = 200
DAYS = 30
# What the dashboard counts, from the trail (it outlives the shares and their purge).
MEASURES: dict[str, tuple[str, ...]] = {
    "shares": (audit.Ev.share_created.event_name,),
    "sign_ins": (audit.Ev.code_right.event_name,),
    "downloads": (audit.Ev.download_started.event_name,),
    "lockouts": (audit.Ev.birth_date_locked.event_name, audit.Ev.code_locked.event_name),
}
CREATED = audit.Ev.share_created.event_name


def day_start(day: date) -> datetime:
    """Midnight of a Europe/Amsterdam calendar day, as an aware datetime."""
    return datetime.combine(day, time(0), AMSTERDAM)


def amsterdam_day(moment: datetime) -> date:
    return moment.astimezone(AMSTERDAM).date()


@dataclass(frozen=True)
class Day:
    day: date
    counts: dict[str, int]


def daily_activity(
    *, session: Session, tenant_id: int, now: datetime, days: int = DAYS
) -> list[Day]:
    """Per Amsterdam day, oldest first: shares made, sign-ins, downloads and lockouts."""
    today = amsterdam_day(now)
    first = today - timedelta(days=days - 1)
    measure_of = {event: measure for measure, events in MEASURES.items() for event in events}
    counts = {first + timedelta(days=i): dict.fromkeys(MEASURES, 0) for i in range(days)}
    rows = session.execute(
        select(AuditEvent.occurred_at, AuditEvent.event).where(
            AuditEvent.tenant_id == tenant_id,
            AuditEvent.occurred_at >= day_start(first),
            AuditEvent.occurred_at < day_start(today + timedelta(days=1)),
            AuditEvent.event.in_(list(measure_of)),
        )
    )
    for occurred_at, event in rows:
        day = amsterdam_day(occurred_at)
        if day in counts:
            counts[day][measure_of[event]] += 1
    return [Day(day, per_measure) for day, per_measure in counts.items()]


def locked_shares(*, session: Session, tenant_id: int, now: datetime) -> list[Share]:
    """Live shares locked right now by wrong birth dates or SMS codes."""
    return list(
        session.scalars(
            select(Share)
            .where(
                Share.tenant_id == tenant_id,
                Share.locked_until > now,
                Share.state.in_(LIVE_STATES),
                Share.expires_at > now,
            )
            .order_by(Share.locked_until.desc())
            .limit(LIST_LIMIT)
        )
    )


def live_count(*, session: Session, tenant_id: int, now: datetime) -> int:
    return int(
        session.scalar(
            select(func.count(Share.id)).where(
                Share.tenant_id == tenant_id,
                Share.state.in_(LIVE_STATES),
                Share.expires_at > now,
            )
        )
        or 0
    )


def people(*, session: Session, tenant_id: int) -> dict[str, tuple[str, str]]:
    """The tenant's staff and API keys by their audit id: ``"staff:3" -> ("staff", name)``."""
    found: dict[str, tuple[str, str]] = {}
    for user in session.scalars(
        select(StaffUser).where(StaffUser.tenant_id == tenant_id).order_by(StaffUser.name)
    ):
        found[f"staff:{user.id}"] = ("staff", user.name or user.email)
    for key in session.scalars(
        select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.id)
    ):
        found[f"apikey:{key.id}"] = ("apikey", key.label or f"#{key.id}")
    return found


@dataclass(frozen=True)
class ShareFilter:
    """The list's filters; dates are Europe/Amsterdam calendar days, both inclusive."""

    state: ShareState | None = None
    patient_id: str | None = None
    creator: str | None = None
    created_from: date | None = None
    created_to: date | None = None

    @property
    def active(self) -> bool:
        return any(vars(self).values())


@dataclass(frozen=True)
class Row:
    share: Share
    state: ShareState
    # What the trail kept of the patient ("BSN:******782" for a BSN): the share's own
    # patient ID is gone once it is purged.
    trail_patient_id: str | None

    @property
    def bsn_tail_only(self) -> bool:
        """Known only by the last digits of a BSN: the match may be another patient."""
        return self.share.patient_id is None and (self.trail_patient_id or "").startswith("BSN:")


def find_shares(
    *, session: Session, tenant_id: int, filters: ShareFilter, now: datetime
) -> tuple[list[Row], bool]:
    """The tenant's shares matching the filters, newest first; True when cut at the limit."""
    query = _by_state(select(Share).where(Share.tenant_id == tenant_id), filters.state, now)
    if filters.patient_id:
        query = query.where(_patient_match(tenant_id, filters.patient_id))
    if filters.creator:
        query = query.where(Share.created_by == filters.creator)
    if filters.created_from:
        query = query.where(Share.created_at >= day_start(filters.created_from))
    if filters.created_to:
        query = query.where(Share.created_at < day_start(filters.created_to + timedelta(days=1)))
    found = list(session.scalars(query.order_by(Share.id.desc()).limit(LIST_LIMIT + 1)))
    trail = trail_patients(session=session, tenant_id=tenant_id, share_ids=[s.id for s in found])
    rows = [Row(s, effective_state(s, now), trail.get(s.id)) for s in found[:LIST_LIMIT]]
    return rows, len(found) > LIST_LIMIT


def _by_state(query: Select[Share], state: str | None, now: datetime) -> Select[Share]:
    """Filter on the state a recipient would meet: a live share past its end is expired."""
    if state in LIVE_STATES:
        return query.where(Share.state == state, Share.expires_at > now)
    if state == ShareState.expired:
        overdue = and_(Share.state.in_(LIVE_STATES), Share.expires_at <= now)
        return query.where(or_(Share.state == ShareState.expired, overdue))
    if state:
        return query.where(Share.state == state)
    return query


def _patient_match(tenant_id: int, patient_id: str):  # type: ignore[no-untyped-def]
    """The share's own patient ID, or for a purged share the one its creation event kept."""
    forms = {patient_id}
    if is_valid_bsn(patient_id):  # the trail keeps a BSN-like patient ID masked
        forms.add("BSN:" + masked(patient_id))
    created = select(AuditEvent.share_id).where(
        AuditEvent.tenant_id == tenant_id,
        AuditEvent.event == CREATED,
        AuditEvent.patient_id.in_(forms),
    )
    return or_(
        Share.patient_id == patient_id,
        and_(Share.patient_id.is_(None), Share.id.in_(created)),
    )


def trail_patients(*, session: Session, tenant_id: int, share_ids: list[int]) -> dict[int, str]:
    """The patient ID each share's creation event recorded."""
    if not share_ids:
        return {}
    rows = session.execute(
        select(AuditEvent.share_id, AuditEvent.patient_id).where(
            AuditEvent.tenant_id == tenant_id,
            AuditEvent.event == CREATED,
            AuditEvent.share_id.in_(share_ids),
        )
    )
    return {int(share_id): patient for share_id, patient in rows if share_id and patient}


@dataclass(frozen=True)
class Details:
    """What the share page shows besides the share row itself."""

    state: ShareState
    trail_patient_id: str | None
    studies: list[tuple[str, Study | None]]
    downloads_today: int
    signed_in_now: int
    last_mail: OutboxMessage | None

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES


def share_details(
    *, session: Session, share: Share, now: datetime, idle: timedelta, max_age: timedelta
) -> Details:
    """Gather the share's studies, today's downloads, live sessions and its latest mail."""
    uids = [s.study_uid for s in share.studies]
    staged = {
        s.study_uid: s
        for s in session.scalars(
            select(Study).where(
                Study.tenant_id == share.tenant_id,
                Study.study_uid.in_(uids),
                Study.purged_at.is_(None),
            )
        )
    }
    signed_in = session.scalar(
        select(func.count(RecipientSession.id)).where(
            RecipientSession.share_id == share.id,
            RecipientSession.signed_in_at.is_not(None),
            RecipientSession.ended_at.is_(None),
            RecipientSession.last_seen_at > now - idle,
            RecipientSession.created_at > now - max_age,
        )
    )
    last_mail = session.scalar(
        select(OutboxMessage)
        .where(OutboxMessage.share_id == share.id, OutboxMessage.channel == "email")
        .order_by(OutboxMessage.id.desc())
        .limit(1)
    )
    trail = trail_patients(session=session, tenant_id=share.tenant_id, share_ids=[share.id])
    return Details(
        state=effective_state(share, now),
        trail_patient_id=trail.get(share.id),
        studies=[(uid, staged.get(uid)) for uid in uids],
        downloads_today=downloads_today(session, share.id, now),
        signed_in_now=int(signed_in or 0),
        last_mail=last_mail,
    )


def timeline(*, session: Session, tenant_id: int, share_id: int) -> list[AuditEvent]:
    """Every event of the trail about this share, oldest first."""
    return list(
        session.scalars(
            select(AuditEvent)
            .where(AuditEvent.tenant_id == tenant_id, AuditEvent.share_id == share_id)
            .order_by(AuditEvent.seq)
        )
    )


def stream_export(
    *,
    sessions: sessionmaker[Session],
    tenant_id: int,
    since: datetime | None,
    fmt: str,
    share_id: int | None = None,
) -> Iterator[bytes]:
    """The trail as it streams out, read page by page in sessions of its own."""
    for chunk in audit.export(
        sessions=sessions, tenant_id=tenant_id, since=since, fmt=fmt, share_id=share_id
    ):
        yield chunk.encode()
