"""Index staged instances, track when a study is stable, list what is staged."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session

from zorgbericht.audit import service as audit
from zorgbericht.db import utcnow
from zorgbericht.sqlutil import insert_ignore, upsert
from zorgbericht.staging.models import Instance, PreviewState, Series, Study, StudyState
from zorgbericht.staging.schemas import StoredInstance, StudyOut


def _h(uid: str) -> str:
    return hashlib.sha256(uid.encode()).hexdigest()[:32]


def study_prefix(tenant_id: int, study_uid: str) -> str:
    """Every object of one staged study lives under this key prefix (no UIDs in clear)."""
    return f"studies/{tenant_id}/{_h(study_uid)}/"


def instance_key(tenant_id: int, study_uid: str, sop_uid: str) -> str:
    return f"{study_prefix(tenant_id, study_uid)}{_h(sop_uid)}.dcm"


def preview_key(object_key: str, kind: str, frame: int = 0) -> str:
    """Key of a rendered JPEG: ``kind`` is ``thumb`` or ``preview``; frames count from 0."""
    return f"{object_key.removesuffix('.dcm')}/{kind}-{frame:05d}.jpg"


def index_instances(
    *, session: Session, tenant_id: int, items: Sequence[StoredInstance], now: datetime
) -> dict[str, int]:
    """Upsert the study, series and instance rows; return SOP UID -> id of those to preview.

    Re-sending an instance overwrites its row, so counts never double. A stable study that
    receives a new instance goes back to ``receiving``.
    """
    if not items:
        return {}
    study_ids = _upsert_studies(session, tenant_id, items, now)
    series_ids = _upsert_series(session, items, study_ids)
    rows = [
        {
            "series_id": series_ids[(it.meta.study_uid, it.meta.series_uid)],
            "sop_uid": it.meta.sop_uid,
            "sop_class_uid": it.meta.sop_class_uid,
            "transfer_syntax_uid": it.meta.transfer_syntax_uid,
            "number": it.meta.instance_number,
            "frames": it.meta.frames,
            "bytes": it.bytes,
            "sha256": it.sha256,
            "object_key": it.object_key,
            "preview_state": PreviewState.pending if it.meta.has_pixels else PreviewState.none,
            "preview_error": None,
            "received_at": now,
            "dir_record": it.meta.dir_record,
        }
        for it in items
    ]
    upsert(
        session,
        Instance.__table__,
        rows,
        keys=["series_id", "sop_uid"],
        update=[c for c in rows[0] if c not in ("series_id", "sop_uid")],
    )
    _recount(session, set(study_ids.values()))
    pending = {
        (r["series_id"], r["sop_uid"]) for r in rows if r["preview_state"] == PreviewState.pending
    }
    if not pending:
        return {}
    found = session.execute(
        select(Instance.id, Instance.series_id, Instance.sop_uid).where(
            Instance.series_id.in_({s for s, _ in pending}),
            Instance.sop_uid.in_({u for _, u in pending}),
        )
    ).all()
    return {row.sop_uid: row.id for row in found if (row.series_id, row.sop_uid) in pending}


def _upsert_studies(
    session: Session, tenant_id: int, items: Sequence[StoredInstance], now: datetime
) -> dict[str, int]:
    first = {}
    for it in items:
        first.setdefault(it.meta.study_uid, it.meta)
    insert_ignore(
        session,
        Study.__table__,
        [
            {
                "tenant_id": tenant_id,
                "study_uid": m.study_uid,
                "patient_id": m.patient_id,
                "issuer_of_patient_id": m.issuer_of_patient_id,
                "patient_name": m.patient_name,
                "birth_date": m.birth_date,
                "bsn": m.bsn,
                "description": m.study_description,
                "study_date": m.study_date,
                "accession_number": m.accession_number,
                "modalities": "",
                "series_count": 0,
                "instance_count": 0,
                "bytes": 0,
                "state": StudyState.receiving,
                "interrupted": False,
                "first_received_at": now,
                "last_activity_at": now,
            }
            for m in first.values()
        ],
    )
    ids = dict(
        session.execute(
            select(Study.study_uid, Study.id).where(
                Study.tenant_id == tenant_id, Study.study_uid.in_(first)
            )
        ).all()
    )
    session.execute(
        update(Study)
        .where(Study.id.in_(ids.values()))
        .values(state=StudyState.receiving, stable_at=None, purged_at=None, last_activity_at=now)
    )
    return ids


def _upsert_series(
    session: Session, items: Sequence[StoredInstance], study_ids: dict[str, int]
) -> dict[tuple[str, str], int]:
    first = {}
    for it in items:
        first.setdefault((it.meta.study_uid, it.meta.series_uid), it.meta)
    insert_ignore(
        session,
        Series.__table__,
        [
            {
                "study_id": study_ids[m.study_uid],
                "series_uid": m.series_uid,
                "modality": m.modality,
                "description": m.series_description,
                "number": m.series_number,
                "instance_count": 0,
            }
            for m in first.values()
        ],
    )
    by_study = {v: k for k, v in study_ids.items()}
    found = session.execute(
        select(Series.study_id, Series.series_uid, Series.id).where(
            Series.study_id.in_(study_ids.values()), Series.series_uid.in_({s for _, s in first})
        )
    ).all()
    return {(by_study[r.study_id], r.series_uid): r.id for r in found}


def _recount(session: Session, study_ids: set[int]) -> None:
    """Derive the series and study counters from the instance rows."""
    per_series = (
        select(func.count(Instance.id)).where(Instance.series_id == Series.id).scalar_subquery()
    )
    session.execute(
        update(Series).where(Series.study_id.in_(study_ids)).values(instance_count=per_series)
    )
    for study_id in study_ids:
        series = session.execute(
            select(Series.modality, Series.instance_count).where(Series.study_id == study_id)
        ).all()
        total_bytes = session.scalar(
            select(func.coalesce(func.sum(Instance.bytes), 0))
            .join(Series, Instance.series_id == Series.id)
            .where(Series.study_id == study_id)
        )
        session.execute(
            update(Study)
            .where(Study.id == study_id)
            .values(
                series_count=len(series),
                instance_count=sum(s.instance_count for s in series),
                bytes=total_bytes,
                modalities="\\".join(sorted({s.modality for s in series if s.modality})),
            )
        )


def touch_studies(
    *, session: Session, tenant_id: int, study_uids: Iterable[str], now: datetime
) -> None:
    """Note that instances of these studies are still arriving (keeps them from going stable)."""
    uids = set(study_uids)
    if uids:
        session.execute(
            update(Study)
            .where(Study.tenant_id == tenant_id, Study.study_uid.in_(uids))
            .values(last_activity_at=now, state=StudyState.receiving, stable_at=None)
        )


def set_interrupted(
    *, session: Session, tenant_id: int, study_uids: Iterable[str], interrupted: bool
) -> None:
    """Flag studies whose sending association was aborted (never stable until resent)."""
    uids = set(study_uids)
    if uids:
        session.execute(
            update(Study)
            .where(Study.tenant_id == tenant_id, Study.study_uid.in_(uids))
            .values(interrupted=interrupted)
        )


def settle_studies(
    *,
    session: Session,
    quiet: timedelta,
    now: datetime | None = None,
    force_uids: Iterable[tuple[int, str]] = (),
) -> list[Study]:
    """Mark studies stable that had no instance for ``quiet`` and have all previews rendered.

    ``force_uids`` (tenant id, study uid) skips the quiet period, for imports that know
    they are complete. An interrupted study never becomes stable here.
    """
    now = now or utcnow()
    pending_preview = exists(
        select(Instance.id)
        .join(Series, Instance.series_id == Series.id)
        .where(Series.study_id == Study.id, Instance.preview_state == PreviewState.pending)
    )
    forced = set(force_uids)
    candidates = session.scalars(
        select(Study)
        .where(
            Study.state == StudyState.receiving,
            Study.interrupted.is_(False),
            Study.purged_at.is_(None),
            Study.instance_count > 0,
            ~pending_preview,
        )
        .with_for_update(skip_locked=True)
    ).all()
    settled = []
    for study in candidates:
        if not (
            study.last_activity_at <= now - quiet or (study.tenant_id, study.study_uid) in forced
        ):
            continue
        study.state, study.stable_at = StudyState.stable, now
        audit.record(
            session=session,
            event=audit.Ev.study_stable,
            actor=audit.SYSTEM,
            tenant_id=study.tenant_id,
            patient_id=study.patient_id,
            bsn=study.bsn,
            study_uids=[study.study_uid],
            details={
                "series": study.series_count,
                "instances": study.instance_count,
                "bytes": study.bytes,
            },
        )
        settled.append(study)
    session.flush()
    return settled


def mark_previews(
    *, session: Session, results: Sequence[tuple[int, PreviewState, str | None]]
) -> None:
    """Store the outcome of preview rendering per instance id."""
    for instance_id, state, error in results:
        session.execute(
            update(Instance)
            .where(Instance.id == instance_id)
            .values(preview_state=state, preview_error=(error or None) and error[:255])
        )


def stale_pending_previews(
    *, session: Session, older_than: datetime, limit: int = 500
) -> list[int]:
    """Instances whose preview is still pending long after they arrived (crash, other node)."""
    return list(
        session.scalars(
            select(Instance.id)
            .where(
                Instance.preview_state == PreviewState.pending, Instance.received_at < older_than
            )
            .order_by(Instance.id)
            .limit(limit)
        )
    )


def list_studies(
    *, session: Session, tenant_id: int | None, patient_id: str | None = None
) -> list[StudyOut]:
    """Staged studies, newest activity first, optionally for one patient."""
    query = select(Study).where(Study.purged_at.is_(None)).order_by(Study.last_activity_at.desc())
    if tenant_id is not None:
        query = query.where(Study.tenant_id == tenant_id)
    if patient_id is not None:
        query = query.where(Study.patient_id == patient_id)
    return [
        StudyOut(
            study_uid=s.study_uid,
            patient_id=s.patient_id,
            patient_name=s.patient_name,
            birth_date=s.birth_date,
            description=s.description,
            study_date=s.study_date,
            modalities=[m for m in s.modalities.split("\\") if m],
            series_count=s.series_count,
            instance_count=s.instance_count,
            bytes=s.bytes,
            state=s.state,
            last_activity_at=s.last_activity_at,
        )
        for s in session.scalars(query)
    ]
