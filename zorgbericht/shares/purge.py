"""Expire shares at their end and destroy what no live share needs; idempotent, audited."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, exists, select
from sqlalchemy.orm import Session

from zorgbericht.audit import service as audit
from zorgbericht.delivery.models import OutboxMessage
from zorgbericht.delivery.service import letter_key
from zorgbericht.settings import Settings
from zorgbericht.shares import service as shares
from zorgbericht.shares.models import LIVE_STATES, Share, ShareState, ShareStudy
from zorgbericht.staging import service as staging
from zorgbericht.staging.models import Study
from zorgbericht.storage import ObjectStore


@dataclass
class PurgeReport:
    expired: int = 0
    shares_purged: int = 0
    studies_purged: int = 0
    objects_deleted: int = 0


def expire_due(*, session: Session, now: datetime) -> int:
    """End every live share whose time is up."""
    due = session.scalars(
        select(Share)
        .where(Share.state.in_(LIVE_STATES), Share.expires_at <= now)
        .with_for_update(skip_locked=True)
    ).all()
    for share in due:
        shares._end(session, share, ShareState.expired, now)
    return len(due)


def purge(
    *, session: Session, store: ObjectStore, settings: Settings, now: datetime
) -> PurgeReport:
    """Expire what is due, then remove patient data of ended shares and unneeded studies."""
    report = PurgeReport(expired=expire_due(session=session, now=now))
    ended = session.scalars(
        select(Share)
        .where(Share.state.notin_(LIVE_STATES), Share.purged_at.is_(None))
        .with_for_update(skip_locked=True)
    ).all()
    for share in ended:
        report.objects_deleted += _purge_share(session, store, share, now)
        report.shares_purged += 1
    needed = exists(
        select(ShareStudy.share_id)
        .join(Share)
        .where(
            ShareStudy.study_uid == Study.study_uid,
            Share.tenant_id == Study.tenant_id,
            Share.state.in_(LIVE_STATES),
        )
    )
    # Shared before and ended since its last instance arrived: nobody needs it any more. A
    # study sent again after its share ended waits the retention period, like a new one.
    done_with = exists(
        select(ShareStudy.share_id)
        .join(Share)
        .where(
            ShareStudy.study_uid == Study.study_uid,
            Share.tenant_id == Study.tenant_id,
            Share.ended_at >= Study.last_activity_at,
        )
    )
    unneeded = session.scalars(
        select(Study)
        .where(~needed)
        .where(done_with | (Study.last_activity_at <= now - settings.unshared_retention))
        .with_for_update(skip_locked=True)
    ).all()
    for study in unneeded:
        report.objects_deleted += _purge_study(session, store, study)
        report.studies_purged += 1
    session.flush()
    return report


def _purge_share(session: Session, store: ObjectStore, share: Share, now: datetime) -> int:
    deleted = 0
    if share.delivery == "letter":
        store.delete(letter_key(share))
        deleted = 1
    session.execute(delete(OutboxMessage).where(OutboxMessage.share_id == share.id))
    audit.record(
        session=session,
        event=audit.Ev.share_purged,
        actor=audit.SYSTEM,
        tenant_id=share.tenant_id,
        patient_id=share.patient_id,
        share_id=share.id,
        study_uids=[s.study_uid for s in share.studies],
    )
    share.email = share.phone = share.patient_id = share.issuer_of_patient_id = None
    share.birth_date, share.bsn_last3, share.purged_at = None, None, now
    return deleted


def _purge_study(session: Session, store: ObjectStore, study: Study) -> int:
    deleted = store.delete_prefix(staging.study_prefix(study.tenant_id, study.study_uid))
    audit.record(
        session=session,
        event=audit.Ev.study_purged,
        actor=audit.SYSTEM,
        tenant_id=study.tenant_id,
        patient_id=study.patient_id,
        bsn=study.bsn,
        study_uids=[study.study_uid],
        details={"objects": deleted, "instances": study.instance_count},
    )
    session.delete(study)  # series and instances go with it
    return deleted
