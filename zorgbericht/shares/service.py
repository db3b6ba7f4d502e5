"""Create, find, revoke and advance shares; each step audited in the caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from zorgbericht.audit import service as audit
from zorgbericht.db import transaction
from zorgbericht.errors import Invalid, NotFound
from zorgbericht.settings import Settings
from zorgbericht.shares import codes
from zorgbericht.shares.models import LIVE_STATES, PullJob, PullState, Share, ShareState, ShareStudy
from zorgbericht.shares.pacs import PacsFinder, PacsUnavailable, RemoteStudy
from zorgbericht.shares.schemas import ShareIn, ShareOut
from zorgbericht.staging.models import Study, StudyState
from zorgbericht.tenants.models import Tenant


@dataclass(frozen=True)
class Created:
    share: Share
    code: str
    url: str


@dataclass(frozen=True)
class _Patient:
    patient_id: str | None
    issuer: str | None
    birth_date: date | None
    bsn: str | None = None


def create_share(
    *,
    session: Session,
    tenant: Tenant,
    actor: audit.Actor,
    share_in: ShareIn,
    settings: Settings,
    pacs: PacsFinder | None,
    now: datetime,
) -> Created:
    """Check the studies are one patient's, then create the share (pending or ready)."""
    staged = {
        s.study_uid: s
        for s in session.scalars(
            select(Study)
            .where(
                Study.tenant_id == tenant.id,
                Study.study_uid.in_(share_in.study_uids),
                Study.purged_at.is_(None),
            )
            # FOR SHARE: a purge running now skips these rows instead of deleting them
            # under the share being made (PostgreSQL; SQLite has one writer anyway).
            .with_for_update(read=True)
        )
    }
    missing = [uid for uid in share_in.study_uids if uid not in staged]
    remote = _find_remote(tenant, missing, pacs)
    patient = _one_patient(list(staged.values()), remote, share_in.birth_date)
    code = codes.new_code()
    share = Share(
        tenant_id=tenant.id,
        created_by=actor.id or actor.kind,
        recipient=share_in.recipient,
        delivery=share_in.delivery,
        language=share_in.language or tenant.default_language,
        state=ShareState.pending,
        code_hmac=codes.code_hmac(code, settings.secret_key.get_secret_value()),
        email=share_in.email,
        phone=share_in.phone,
        patient_id=patient.patient_id,
        issuer_of_patient_id=patient.issuer,
        birth_date=patient.birth_date,
        bsn_last3=patient.bsn[-3:] if patient.bsn else None,
        created_at=now,
        expires_at=now + settings.share_ttl,
        studies=[
            ShareStudy(study_uid=uid, position=i) for i, uid in enumerate(share_in.study_uids)
        ],
    )
    session.add(share)
    session.flush()
    for study in remote:
        _request_pull(session, tenant.id, study)
    audit.record(
        session=session,
        event=audit.Ev.share_created,
        actor=actor,
        tenant_id=tenant.id,
        patient_id=patient.patient_id,
        bsn=patient.bsn,
        share_id=share.id,
        study_uids=share_in.study_uids,
        details={
            "recipient": share.recipient,
            "delivery": share.delivery,
            "language": share.language,
            "pulled": len(remote),
            "expires_at": share.expires_at.isoformat(),
        },
    )
    advance(session=session, share=share, now=now)
    return Created(share, code, codes.share_url(settings.public_url, code))


def record_refusal(
    *,
    sessions: sessionmaker[Session],
    tenant_id: int,
    actor: audit.Actor,
    study_uids: list[str],
    reason: str,
) -> None:
    """Keep a refused share in the trail, in its own transaction (the request's is undone)."""
    with transaction(sessions) as session:
        audit.record(
            session=session,
            event=audit.Ev.share_refused,
            actor=actor,
            tenant_id=tenant_id,
            outcome=audit.Outcome.minor_failure,
            study_uids=study_uids,
            details={"reason": reason},
        )


def _find_remote(tenant: Tenant, missing: list[str], pacs: PacsFinder | None) -> list[RemoteStudy]:
    if not missing:
        return []
    if pacs is None or not (tenant.pacs_ae_title and tenant.pacs_host and tenant.pacs_port):
        raise Invalid(
            f"study {missing[0]} is not staged here and no PACS is configured to "
            "retrieve it from; send it to us first"
        )
    found = []
    for uid in missing:
        try:
            study = pacs.find_study(
                ae_title=tenant.pacs_ae_title,
                host=tenant.pacs_host,
                port=tenant.pacs_port,
                study_uid=uid,
            )
        except PacsUnavailable as exc:
            raise Invalid(
                f"study {uid} is not staged and the PACS could not be asked ({exc}); "
                "try again later"
            ) from None
        if study is None:
            raise Invalid(f"study {uid} is not staged here and the PACS does not know it")
        found.append(study)
    return found


def _one_patient(
    staged: Sequence[Study], remote: Sequence[RemoteStudy], given: date | None
) -> _Patient:
    patients = {_Patient(s.patient_id, s.issuer_of_patient_id, s.birth_date) for s in staged}
    patients |= {_Patient(r.patient_id, r.issuer_of_patient_id, r.birth_date) for r in remote}
    if len(patients) > 1:
        raise Invalid(
            f"these studies belong to {len(patients)} different patients (patient ID, "
            "issuer or date of birth differ); a share holds one patient's studies"
        )
    patient = patients.pop()
    if given is not None and patient.birth_date is not None and given != patient.birth_date:
        raise Invalid("birth_date does not match the date of birth in the studies")
    birth_date = patient.birth_date or given
    if birth_date is None:
        raise Invalid(
            "the studies carry no date of birth; give birth_date, the recipient needs it to sign in"
        )
    bsn = next((s.bsn for s in staged if s.bsn), None)
    return _Patient(patient.patient_id, patient.issuer, birth_date, bsn)


def _request_pull(session: Session, tenant_id: int, study: RemoteStudy) -> None:
    job = session.scalar(
        select(PullJob).where(PullJob.tenant_id == tenant_id, PullJob.study_uid == study.study_uid)
    )
    if job is None:
        session.add(
            PullJob(
                tenant_id=tenant_id,
                study_uid=study.study_uid,
                expected_instances=study.instance_count,
            )
        )
    elif job.state in (PullState.done, PullState.failed):
        job.state, job.attempts, job.error = PullState.pending, 0, None
        job.expected_instances = study.instance_count


def advance(*, session: Session, share: Share, now: datetime) -> None:
    """Move a pending share on: ready when every study is complete, failed when a pull failed.

    A study is complete when it is stable and, if it is being pulled, its retrieval is done
    with at least the number of instances the PACS reported: a C-MOVE that stalls or stops
    halfway is not mistaken for a finished study by the quiet period alone.
    """
    if share.state != ShareState.pending:
        return
    uids = [s.study_uid for s in share.studies]
    stable = dict(
        session.execute(
            select(Study.study_uid, Study.instance_count).where(
                Study.tenant_id == share.tenant_id,
                Study.study_uid.in_(uids),
                Study.state == StudyState.stable,
                Study.purged_at.is_(None),
            )
        ).all()
    )
    jobs = {
        j.study_uid: j
        for j in session.scalars(
            select(PullJob).where(PullJob.tenant_id == share.tenant_id, PullJob.study_uid.in_(uids))
        )
    }
    failed = [j for uid, j in jobs.items() if j.state == PullState.failed and uid not in stable]
    if failed:
        _end(
            session,
            share,
            ShareState.failed,
            now,
            f"retrieving from the PACS failed: {failed[0].error}",
        )
        return
    if all(_complete(uid, stable, jobs.get(uid)) for uid in uids):
        share.state, share.ready_at = ShareState.ready, now
        from zorgbericht.delivery import service as delivery

        delivery.release_held(session=session, share=share, now=now)
        audit.record(
            session=session,
            event=audit.Ev.share_ready,
            actor=audit.SYSTEM,
            tenant_id=share.tenant_id,
            patient_id=share.patient_id,
            share_id=share.id,
            study_uids=uids,
        )


def _complete(uid: str, stable: dict[str, int], job: PullJob | None) -> bool:
    if uid not in stable:
        return False
    if job is None or job.state == PullState.failed:  # a failed job of an earlier share
        return True
    return job.state == PullState.done and stable[uid] >= (job.expected_instances or 0)


def _end(
    session: Session, share: Share, state: ShareState, now: datetime, reason: str | None = None
) -> None:
    share.state, share.ended_at, share.failed_reason = state, now, reason
    event = {
        ShareState.failed: audit.Ev.share_failed,
        ShareState.revoked: audit.Ev.share_revoked,
        ShareState.expired: audit.Ev.share_expired,
    }[state]
    audit.record(
        session=session,
        event=event,
        actor=audit.SYSTEM,
        tenant_id=share.tenant_id,
        patient_id=share.patient_id,
        share_id=share.id,
        study_uids=[s.study_uid for s in share.studies],
        details={"reason": reason} if reason else {},
    )


def get_share(*, session: Session, tenant_id: int, share_id: int) -> Share:
    """A share of this tenant; another tenant's share is simply not found."""
    share = session.scalar(select(Share).where(Share.id == share_id, Share.tenant_id == tenant_id))
    if share is None:
        raise NotFound(f"no share {share_id}")
    return share


def list_shares(
    *,
    session: Session,
    tenant_id: int,
    state: str | None = None,
    patient_id: str | None = None,
    limit: int = 500,
) -> list[Share]:
    query = select(Share).where(Share.tenant_id == tenant_id).order_by(Share.id.desc()).limit(limit)
    if state:
        query = query.where(Share.state == state)
    if patient_id:
        query = query.where(Share.patient_id == patient_id)
    return list(session.scalars(query))


def revoke(*, session: Session, share: Share, actor: audit.Actor, now: datetime) -> None:
    """Stop a share at once (idempotent for a share that has ended already)."""
    session.refresh(share, with_for_update=True)  # a worker may be expiring it right now
    if share.state in LIVE_STATES:
        share.state, share.ended_at = ShareState.revoked, now
        audit.record(
            session=session,
            event=audit.Ev.share_revoked,
            actor=actor,
            tenant_id=share.tenant_id,
            patient_id=share.patient_id,
            share_id=share.id,
            study_uids=[s.study_uid for s in share.studies],
        )


def effective_state(share: Share, now: datetime) -> ShareState:
    """The state a request sees: a live share past its end is expired, job or no job."""
    if share.state in LIVE_STATES and share.expires_at <= now:
        return ShareState.expired
    return ShareState(share.state)


def to_out(
    share: Share,
    now: datetime,
    *,
    url: str | None = None,
    letter_url: str | None = None,
    downloads_today: int = 0,
) -> ShareOut:
    return ShareOut(
        id=share.id,
        state=effective_state(share, now),
        recipient=share.recipient,
        delivery=share.delivery,
        language=share.language,
        study_uids=[s.study_uid for s in share.studies],
        created_at=share.created_at,
        ready_at=share.ready_at,
        expires_at=share.expires_at,
        failed_reason=share.failed_reason,
        url=url,
        letter_url=letter_url,
        downloads_today=downloads_today,
    )
