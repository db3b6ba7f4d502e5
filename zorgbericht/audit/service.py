"""Record audit events in the caller's transaction, chained by hash; verify and export the chain."""

from __future__ import annotations

import csv
import enum
import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session, sessionmaker

from zorgbericht.audit.models import AuditEvent, AuditHead
from zorgbericht.bsn import is_valid_bsn, masked
from zorgbericht.db import read_only, utcnow

GENESIS = "0" * 64

# Keys that must never reach the trail: link codes, SMS codes, birth dates, session ids.
FORBIDDEN_DETAIL_KEYS = frozenset(
    {
        "code",
        "link_code",
        "sms_code",
        "birth_date",
        "dob",
        "session",
        "session_id",
        "password",
        "secret",
        "token",
        "bsn",
        "api_key",
    }
)


class Outcome(enum.IntEnum):
    """DICOM EventOutcomeIndicator."""

    success = 0
    minor_failure = 4
    serious_failure = 8
    major_failure = 12


class Ev(enum.Enum):
    """Event name, DICOM audit event id (DCM 1101xx) and EventActionCode."""

    association_accepted = ("dicom.association.accepted", "110114", "E")
    association_refused = ("dicom.association.refused", "110113", "E")
    instances_received = ("dicom.instances.received", "110104", "C")
    instances_refused = ("dicom.instances.refused", "110104", "C")
    study_imported = ("study.imported", "110107", "C")
    study_stable = ("study.stable", "110103", "U")
    study_purged = ("study.purged", "110105", "D")
    tenant_created = ("tenant.created", "110110", "C")
    staff_created = ("staff.created", "110110", "C")
    apikey_created = ("apikey.created", "110110", "C")
    studies_queried = ("studies.queried", "110112", "R")
    share_created = ("share.created", "110106", "C")
    share_refused = ("share.refused", "110106", "C")
    share_ready = ("share.ready", "110106", "U")
    share_failed = ("share.failed", "110106", "U")
    share_revoked = ("share.revoked", "110106", "D")
    share_expired = ("share.expired", "110106", "D")
    share_viewed = ("share.viewed", "110110", "R")
    shares_listed = ("shares.listed", "110112", "R")
    share_purged = ("share.purged", "110105", "D")
    share_link_renewed = ("share.link_renewed", "110106", "U")
    study_pulled = ("study.pulled", "110104", "C")
    pull_failed = ("study.pull_failed", "110104", "C")
    letter_downloaded = ("letter.downloaded", "110106", "R")
    mail_queued = ("mail.queued", "110106", "C")
    mail_sent = ("mail.sent", "110106", "E")
    mail_failed = ("mail.failed", "110106", "E")
    audit_exported = ("audit.exported", "110101", "R")
    audit_viewed = ("audit.viewed", "110101", "R")
    audit_pruned = ("audit.pruned", "110105", "D")
    staff_sign_in = ("staff.sign_in", "110114", "E")
    staff_launch = ("staff.pacs_launch", "110114", "E")
    link_opened = ("recipient.link_opened", "110114", "E")
    terms_accepted = ("recipient.terms_accepted", "110114", "E")
    birth_date_wrong = ("recipient.birth_date_wrong", "110114", "E")
    birth_date_right = ("recipient.birth_date_right", "110114", "E")
    birth_date_locked = ("recipient.birth_date_locked", "110113", "E")
    sms_sent = ("recipient.sms_sent", "110114", "E")
    sms_failed = ("recipient.sms_failed", "110114", "E")
    sms_refused = ("recipient.sms_refused", "110114", "E")
    code_wrong = ("recipient.code_wrong", "110114", "E")
    code_right = ("recipient.code_right", "110114", "E")
    code_locked = ("recipient.code_locked", "110113", "E")
    recipient_refused = ("recipient.refused", "110114", "E")
    recipient_throttled = ("recipient.throttled", "110113", "E")
    studies_listed = ("recipient.studies_listed", "110112", "R")
    image_viewed = ("recipient.image_viewed", "110103", "R")
    report_viewed = ("recipient.report_viewed", "110103", "R")
    download_started = ("recipient.download_started", "110106", "R")
    download_refused = ("recipient.download_refused", "110106", "R")
    recipient_logout = ("recipient.logout", "110114", "E")

    @property
    def event_name(self) -> str:
        return self.value[0]

    @property
    def code(self) -> str:
        return self.value[1]

    @property
    def action(self) -> str:
        return self.value[2]


@dataclass(frozen=True)
class Actor:
    """Who acted: kind (staff, recipient, system, dicom, apikey) and an opaque id."""

    kind: str
    id: str | None = None
    on_behalf_of: str | None = None
    ip: str | None = None
    user_agent: str | None = None


SYSTEM = Actor("system", "zorgbericht")

_HASHED_FIELDS = (
    "seq",
    "occurred_at",
    "tenant_id",
    "event",
    "event_code",
    "action",
    "outcome",
    "actor_kind",
    "actor_id",
    "on_behalf_of",
    "ip",
    "user_agent",
    "patient_id",
    "bsn_last3",
    "share_id",
    "study_uids",
    "details",
)


def record(
    *,
    session: Session,
    event: Ev,
    actor: Actor,
    tenant_id: int | None,
    outcome: Outcome = Outcome.success,
    patient_id: str | None = None,
    bsn: str | None = None,
    share_id: int | None = None,
    study_uids: Iterable[str] = (),
    details: dict[str, object] | None = None,
) -> AuditEvent:
    """Append one event to the chain inside the caller's transaction.

    The chain head row is updated first: that takes its row lock (PostgreSQL) or the
    write lock (SQLite), so concurrent writers queue and each sees the previous hash.
    The caller's commit makes the event and the action it records durable together.
    """
    details = dict(details or {})
    leaked = FORBIDDEN_DETAIL_KEYS.intersection(k.lower() for k in details)
    if leaked:
        raise ValueError(f"audit details may not carry {sorted(leaked)}")
    if patient_id and (is_valid_bsn(patient_id) or patient_id.strip().zfill(9) == bsn):
        # A patient ID that is (or may be) a BSN: the trail keeps only its last digits.
        patient_id = "BSN:" + masked(patient_id)
    row = AuditEvent(
        tenant_id=tenant_id,
        event=event.event_name,
        event_code=event.code,
        action=event.action,
        outcome=int(outcome),
        actor_kind=actor.kind,
        actor_id=actor.id,
        on_behalf_of=actor.on_behalf_of,
        ip=actor.ip,
        user_agent=(actor.user_agent or None) and actor.user_agent[:255],
        patient_id=patient_id,
        bsn_last3=bsn[-3:] if bsn else None,
        share_id=share_id,
        study_uids=sorted(set(study_uids)),
        details=details,
    )
    _append(session, row)
    return row


_HEAD, _EVENTS = AuditHead.__table__, AuditEvent.__table__
# Built once: audit writes are on every request's path, and rebuilding costs more than the SQL.
_NEXT = (
    update(_HEAD)
    .where(_HEAD.c.id == 1)
    .values(seq=_HEAD.c.seq + 1)
    .returning(_HEAD.c.seq, _HEAD.c.last_hash)
)
_INSERT = insert(_EVENTS)
_LAST = update(_HEAD).where(_HEAD.c.id == 1).values(last_hash=bindparam("chain_hash"))


def _append(session: Session, row: AuditEvent) -> None:
    """Chain the row under the head's lock and insert it."""
    head = session.execute(_NEXT).one()
    row.seq, row.prev_hash, row.occurred_at = head.seq, head.last_hash, utcnow()
    row.hash = row_hash(row)
    session.execute(_INSERT, {c.name: getattr(row, c.name) for c in _EVENTS.c})
    session.execute(_LAST, {"chain_hash": row.hash})


def _canonical(row: AuditEvent | Row[Any]) -> dict[str, object]:
    out: dict[str, object] = {}
    for name in _HASHED_FIELDS:
        value = getattr(row, name)
        if isinstance(value, datetime):
            value = value.isoformat(timespec="microseconds")
        out[name] = value
    return out


def row_hash(row: AuditEvent | Row[Any]) -> str:
    """Hash the row's content together with the previous row's hash."""
    payload = json.dumps(_canonical(row), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256((row.prev_hash + payload).encode()).hexdigest()


@dataclass(frozen=True)
class ChainReport:
    checked: int
    first_broken_seq: int | None
    reason: str | None

    @property
    def ok(self) -> bool:
        return self.first_broken_seq is None


def verify(*, session: Session, batch: int = 5000) -> ChainReport:
    """Walk the chain from its floor; report the first row whose hash, link or position is wrong.

    After the retention job the chain starts past the removed rows: at the head's floor,
    which the newest ``audit.pruned`` event in the chain must confirm.
    """
    read_only(session)  # one snapshot: writers meanwhile neither block nor confuse the walk
    head = session.execute(select(_HEAD).where(_HEAD.c.id == 1)).one_or_none()
    if head is None:
        return ChainReport(0, 1, "the chain's head row is missing")
    floor_seq, floor_hash = head.floor_seq, head.floor_hash
    expected_prev, expected_seq, checked = floor_hash, floor_seq + 1, 0
    for row in _iter_rows(session, batch, after=floor_seq, until=head.seq):
        if row.seq != expected_seq:
            return ChainReport(checked, expected_seq, f"row {expected_seq} is missing")
        if row.prev_hash != expected_prev:
            return ChainReport(checked, row.seq, "link to the previous row is broken")
        if row_hash(row) != row.hash:
            return ChainReport(checked, row.seq, "content does not match its hash")
        expected_prev, expected_seq, checked = row.hash, expected_seq + 1, checked + 1
    if head.seq != expected_seq - 1 or head.last_hash != expected_prev:
        return ChainReport(checked, expected_seq, "rows after this point were removed")
    if floor_seq and not _floor_confirmed(session, floor_seq, floor_hash):
        return ChainReport(
            checked, floor_seq + 1, "the chain's start moved without a retention record"
        )
    return ChainReport(checked, None, None)


def _floor_confirmed(session: Session, floor_seq: int, floor_hash: str) -> bool:
    """The newest retention event (itself in the verified chain) names this floor."""
    pruned = session.scalar(
        select(AuditEvent)
        .where(AuditEvent.event == Ev.audit_pruned.event_name)
        .order_by(AuditEvent.seq.desc())
        .limit(1)
    )
    return (
        pruned is not None
        and pruned.details.get("through_seq") == floor_seq
        and pruned.details.get("through_hash") == floor_hash
    )


def prune(*, session: Session, now: datetime, retention: timedelta, limit: int = 10_000) -> int:
    """Remove the oldest events past the retention period, at most ``limit``; audited.

    The head row is locked first, so one job prunes at a time and writers queue behind it.
    The floor moves before the delete: the database refuses deletes above the floor.
    """
    cutoff = min(now, utcnow()) - retention  # the database refuses younger rows anyway
    span = _prunable(session, cutoff, limit)
    if span is None:
        return 0
    floor, last = span
    through, removed, through_hash = last.seq, last.seq - floor, last.hash
    record(
        session=session,
        event=Ev.audit_pruned,
        actor=SYSTEM,
        tenant_id=None,
        details={
            "through_seq": through,
            "through_hash": through_hash,
            "removed": removed,
            "older_than": cutoff.isoformat(timespec="seconds"),
        },
    )
    session.execute(
        update(AuditHead)
        .where(AuditHead.id == 1)
        .values(floor_seq=through, floor_hash=through_hash)
    )
    session.execute(
        delete(AuditEvent)
        .where(AuditEvent.seq > floor, AuditEvent.seq <= through)
        .execution_options(synchronize_session=False)
    )
    return removed


def retention_due(*, session: Session, now: datetime, retention: timedelta) -> bool:
    """Whether the oldest event is past retention (two key lookups; no lock needed)."""
    cutoff = min(now, utcnow()) - retention
    floor = session.scalar(select(AuditHead.floor_seq).where(AuditHead.id == 1))
    oldest = session.scalar(
        select(AuditEvent.occurred_at).where(AuditEvent.seq == (floor or 0) + 1)
    )
    return oldest is not None and oldest < cutoff


def _prunable(session: Session, cutoff: datetime, limit: int) -> tuple[int, AuditEvent] | None:
    """The current floor and the last row to remove, under the chain's lock; None if none."""
    if not retention_due(session=session, now=cutoff, retention=timedelta(0)):
        return None  # the usual answer, found without taking the chain's lock
    head = session.scalar(select(AuditHead).where(AuditHead.id == 1).with_for_update())
    assert head is not None
    floor, end = head.floor_seq, head.seq
    young = session.scalar(
        select(func.min(AuditEvent.seq)).where(
            AuditEvent.seq > floor,
            AuditEvent.seq <= floor + limit,
            AuditEvent.occurred_at >= cutoff,
        )
    )
    through = min(floor + limit, end, (young or end + 1) - 1)
    if through <= floor:
        return None
    last = session.get(AuditEvent, through)
    assert last is not None, "verify the chain: a row below the head is missing"
    return floor, last


def _iter_rows(session: Session, batch: int, after: int, until: int) -> Iterator[Row[Any]]:
    """Rows in chain order, as plain rows (no ORM objects: verify reads millions)."""
    last = after
    while True:
        rows = session.execute(
            select(_EVENTS)
            .where(_EVENTS.c.seq > last, _EVENTS.c.seq <= until)
            .order_by(_EVENTS.c.seq)
            .limit(batch)
        ).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].seq


def export(
    *,
    sessions: sessionmaker[Session],
    tenant_id: int | None,
    since: datetime | None,
    fmt: str,
    share_id: int | None = None,
    page: int = 1000,
) -> Iterator[str]:
    """Yield the trail (or one share's part of it) as JSON lines or CSV text, oldest first.

    Read in pages, each in a short read-only transaction of its own: a slow download of a
    long trail never holds a transaction (or SQLite's lock) open while the client reads.
    """
    query = select(_EVENTS).order_by(_EVENTS.c.seq).limit(page)
    if tenant_id is not None:
        query = query.where(_EVENTS.c.tenant_id == tenant_id)
    if share_id is not None:
        query = query.where(_EVENTS.c.share_id == share_id)
    if since is not None:
        query = query.where(_EVENTS.c.occurred_at >= since)
    columns = [*_HASHED_FIELDS, "prev_hash", "hash"]
    if fmt == "csv":
        yield _csv_line(columns)
    last = 0
    while True:
        with sessions() as session:
            read_only(session)
            rows = session.execute(query.where(_EVENTS.c.seq > last)).all()
        if not rows:
            return
        for row in rows:
            data = {**_canonical(row), "prev_hash": row.prev_hash, "hash": row.hash}
            if fmt == "csv":
                yield _csv_line(
                    json.dumps(data[c]) if isinstance(data[c], list | dict) else data[c]
                    for c in columns
                )
            else:
                yield json.dumps(data, sort_keys=True, default=str) + "\n"
        last = rows[-1].seq


def _csv_line(values: Iterable[object]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(values)
    return buffer.getvalue()
