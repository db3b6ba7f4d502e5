"""What a signed-in recipient sees and downloads: only its own share's studies."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from zorgbericht.audit import service as audit
from zorgbericht.errors import Conflict, Gone, Invalid, NotFound, TooMany
from zorgbericht.recipients.gate import ENDED, ENDED_MESSAGE, amsterdam_day, record_share_event
from zorgbericht.recipients.models import Download, RecipientSession, SeriesView
from zorgbericht.recipients.reports import is_report
from zorgbericht.shares.models import Share, ShareState
from zorgbericht.shares.service import effective_state
from zorgbericht.sqlutil import insert
from zorgbericht.staging.models import Instance, PreviewState, Series, Study
from zorgbericht.tenants.models import Tenant

API = "/api/v1/recipient"
FORMATS = ("dicom", "jpeg")


def live_share(
    *, session: Session, row: RecipientSession, actor: audit.Actor, now: datetime
) -> Share:
    """The signed-in session's share; ``Gone`` once it has ended (revoked counts at once)."""
    share = session.get(Share, row.share_id)
    if share is None:
        raise Gone(ENDED_MESSAGE, reason="expired")
    state = effective_state(share, now)
    if state in ENDED:
        tenant = session.get(Tenant, share.tenant_id)
        record_share_event(
            session,
            actor,
            audit.Ev.recipient_refused,
            share,
            audit.Outcome.minor_failure,
            reason=state.value,
        )
        raise Gone(
            ENDED_MESSAGE,
            reason=state.value,
            institution=tenant.name if tenant else None,
        )
    return share


def shared_studies(session: Session, share: Share) -> list[Study]:
    """The share's staged studies in the order staff chose them, series and instances loaded."""
    order = {s.study_uid: s.position for s in share.studies}
    studies = session.scalars(
        select(Study)
        .where(
            Study.tenant_id == share.tenant_id,
            Study.study_uid.in_(order),
            Study.purged_at.is_(None),
        )
        .options(selectinload(Study.series).selectinload(Series.instances))
    ).all()
    return sorted(studies, key=lambda s: order[s.study_uid])


def downloads_today(session: Session, share_id: int, now: datetime) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(Download)
            .where(Download.share_id == share_id, Download.day == amsterdam_day(now))
        )
        or 0
    )


def downloads_by_share(*, session: Session, share_ids: list[int], now: datetime) -> dict[int, int]:
    """Downloads of today (Europe/Amsterdam) per share."""
    if not share_ids:
        return {}
    rows = session.execute(
        select(Download.share_id, func.count())
        .where(Download.share_id.in_(share_ids), Download.day == amsterdam_day(now))
        .group_by(Download.share_id)
    ).all()
    return {share_id: int(count) for share_id, count in rows}


def list_studies(
    *, session: Session, share: Share, actor: audit.Actor, limit: int, now: datetime
) -> dict[str, object]:
    """The study list of DESIGN §8, or ``pending`` while the share is being prepared."""
    tenant = session.get(Tenant, share.tenant_id)
    out: dict[str, object] = {
        "state": "ready" if share.state == ShareState.ready else "pending",
        "institution": tenant.name if tenant else None,
        "expires_at": share.expires_at.isoformat(),
        "daily_limit": limit,
        "downloads_left": max(0, limit - downloads_today(session, share.id, now)),
        "studies": [],
    }
    if share.state == ShareState.ready:
        out["studies"] = [_study_out(study) for study in shared_studies(session, share)]
        record_share_event(session, actor, audit.Ev.studies_listed, share)
    return out


def _study_out(study: Study) -> dict[str, object]:
    reports = [
        {"id": i.id, "kind": kind, "url": f"{API}/reports/{i.id}"}
        for series in study.series
        for i in series.instances
        if (kind := is_report(i.sop_class_uid))
    ]
    series_out = []
    for series in study.series:
        images = [
            {
                "id": i.id,
                "number": i.number,
                "frames": i.frames,
                "preview_url": f"{API}/images/{i.id}/preview",
                "thumbnail_url": f"{API}/images/{i.id}/thumbnail",
            }
            for i in series.instances
            if i.preview_state == PreviewState.done
        ]
        if images:
            series_out.append(
                {
                    "series_uid": series.series_uid,
                    "description": series.description,
                    "modality": series.modality,
                    "number": series.number,
                    "images": images,
                }
            )
    return {
        "study_uid": study.study_uid,
        "description": study.description,
        "study_date": study.study_date.isoformat() if study.study_date else None,
        "modalities": [m for m in study.modalities.split("\\") if m],
        "report_url": reports[0]["url"] if reports else None,
        "reports": reports,
        "series": series_out,
    }


def shared_instance(*, session: Session, share: Share, instance_id: int) -> Instance:
    """An instance of one of the share's studies; anything else is not found."""
    if share.state != ShareState.ready:
        raise NotFound("no such image")
    instance = session.scalar(
        select(Instance)
        .join(Series, Instance.series_id == Series.id)
        .join(Study, Series.study_id == Study.id)
        .where(
            Instance.id == instance_id,
            Study.tenant_id == share.tenant_id,
            Study.study_uid.in_([s.study_uid for s in share.studies]),
            Study.purged_at.is_(None),
        )
    )
    if instance is None:
        raise NotFound("no such image")
    return instance


def note_view(
    *,
    session: Session,
    share: Share,
    row: RecipientSession,
    instance: Instance,
    actor: audit.Actor,
    now: datetime,
) -> None:
    """Audit the first look at a series in this session (not every image paged through)."""
    inserted = session.execute(
        insert(session, SeriesView)
        .values(session_id=row.id, series_id=instance.series_id, viewed_at=now)
        .on_conflict_do_nothing()
        .returning(SeriesView.id)
    ).scalar()
    if inserted is not None:
        study_uid = session.scalar(
            select(Study.study_uid).join(Series).where(Series.id == instance.series_id)
        )
        record_share_event(
            session,
            actor,
            audit.Ev.image_viewed,
            share,
            study_uids=[study_uid or ""],
            series=instance.series_id,
        )


def note_report(*, session: Session, share: Share, instance: Instance, actor: audit.Actor) -> None:
    study_uid = session.scalar(
        select(Study.study_uid).join(Series).where(Series.id == instance.series_id)
    )
    record_share_event(session, actor, audit.Ev.report_viewed, share, study_uids=[study_uid or ""])


@dataclass(frozen=True)
class DownloadRequest:
    format: str
    study: str  # a study UID of the share, or "all"

    def study_ids(self, session: Session, share: Share) -> list[int]:
        """The index ids of the studies asked for; checks format and scope."""
        if self.format not in FORMATS:
            raise Invalid("format must be dicom or jpeg")
        if share.state != ShareState.ready:
            raise Conflict("the images are still being prepared")
        studies = shared_studies(session, share)
        if self.study != "all":
            studies = [s for s in studies if s.study_uid == self.study]
            if not studies:
                raise NotFound("no such study in this share")
        return [s.id for s in studies]


def refuse_when_spent(
    *,
    session: Session,
    share: Share,
    request: DownloadRequest,
    study_uids: list[str],
    limit: int,
    actor: audit.Actor,
    now: datetime,
) -> None:
    """``TooMany`` (and an audit event) once the share's downloads of today reach the cap."""
    done = downloads_today(session, share.id, now)
    if done < limit:
        return
    record_share_event(
        session,
        actor,
        audit.Ev.download_refused,
        share,
        audit.Outcome.minor_failure,
        study_uids=study_uids,
        format=request.format,
        downloads_today=done,
    )
    raise TooMany(
        f"this link has been downloaded {limit} times today, the most allowed; try again tomorrow",
        headers={"Retry-After": "3600"},
    )


def reserve_download(
    *,
    session: Session,
    row: RecipientSession,
    request: DownloadRequest,
    size: int,
    study_uids: list[str],
    limit: int,
    actor: audit.Actor,
    now: datetime,
) -> None:
    """Count one download against the day's cap, atomically; ``TooMany`` past it."""
    share = session.scalar(select(Share).where(Share.id == row.share_id).with_for_update())
    assert share is not None
    live_share(session=session, row=row, actor=actor, now=now)  # revoked meanwhile?
    refuse_when_spent(
        session=session,
        share=share,
        request=request,
        study_uids=study_uids,
        limit=limit,
        actor=actor,
        now=now,
    )
    session.add(
        Download(
            share_id=share.id,
            session_id=row.id,
            format=request.format,
            scope="all" if request.study == "all" else "study",
            study_count=len(study_uids),
            bytes=size,
            day=amsterdam_day(now),
            created_at=now,
        )
    )
    record_share_event(
        session,
        actor,
        audit.Ev.download_started,
        share,
        study_uids=study_uids,
        format=request.format,
        bytes=size,
    )
