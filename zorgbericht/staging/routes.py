"""Share API: what is staged for the API key's tenant."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request

from zorgbericht.audit import service as audit
from zorgbericht.deps import ApiClientDep, SessionDep
from zorgbericht.staging import service as staging
from zorgbericht.staging.schemas import StudyOut

router = APIRouter(prefix="/api/v1", tags=["studies"])


@router.get("/studies", response_model=list[StudyOut])
def list_studies(
    request: Request,
    session: SessionDep,
    client: ApiClientDep,
    patient_id: str | None = Query(None, max_length=64, description="only this patient's studies"),
) -> list[StudyOut]:
    """Staged studies of the key's tenant, newest first; `state` is receiving or stable."""
    tenant, key = client
    studies = staging.list_studies(session=session, tenant_id=tenant.id, patient_id=patient_id)
    audit.record(
        session=session,
        event=audit.Ev.studies_queried,
        tenant_id=tenant.id,
        actor=audit.Actor(
            "apikey",
            f"apikey:{key.id}",
            ip=request.client and request.client.host,
            user_agent=request.headers.get("user-agent"),
        ),
        patient_id=patient_id,
        study_uids=[s.study_uid for s in studies],
        details={"matches": len(studies)},
    )
    return studies
