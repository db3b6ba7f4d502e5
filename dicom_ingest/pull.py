"""Pull studies from a tenant's PACS: C-FIND to learn the patient, C-MOVE to our own AE.

The instances arrive through our own C-STORE receiver (the PACS calls us with its AE
title, which must be in the tenant's list), so they are staged like any pushed study.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from zorgbericht.audit import service as audit
from zorgbericht.db import transaction, utcnow
from zorgbericht.settings import Settings
from zorgbericht.shares.models import PullJob, PullState
from zorgbericht.shares.pacs import PacsUnavailable, RemoteStudy
from zorgbericht.tenants.models import Tenant

log = logging.getLogger(__name__)
PENDING = (0xFF00, 0xFF01)
STALE_RUNNING = timedelta(minutes=30)


@dataclass(frozen=True)
class MoveResult:
    status: int | None
    completed: int
    failed: int

    @property
    def ok(self) -> bool:
        return self.status in (0x0000, 0xB000) and self.failed == 0 and self.completed > 0

    def reason(self) -> str:
        if self.status is None:
            return "the PACS did not answer the C-MOVE"
        return (
            f"C-MOVE status 0x{self.status:04X}, {self.completed} instances sent, "
            f"{self.failed} failed"
        )


class PacsClient:
    """Query/retrieve (study root) against a PACS, calling as our own AE title."""

    def __init__(self, ae_title: str, timeout: float = 30.0) -> None:
        self.ae_title = ae_title
        self.timeout = timeout

    def _associate(self, ae_title: str, host: str, port: int):  # type: ignore[no-untyped-def]
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        try:
            assoc = ae.associate(host, port, ae_title=ae_title)
        except (OSError, ValueError, RuntimeError) as exc:
            raise PacsUnavailable(f"cannot reach {ae_title}: {type(exc).__name__}") from None
        if not assoc.is_established:
            raise PacsUnavailable(f"association with {ae_title} refused or not answered")
        return assoc

    def find_study(
        self, *, ae_title: str, host: str, port: int, study_uid: str
    ) -> RemoteStudy | None:
        """C-FIND one study; None when the PACS does not have it."""
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study_uid
        for keyword in (
            "PatientID",
            "IssuerOfPatientID",
            "PatientBirthDate",
            "NumberOfStudyRelatedInstances",
        ):
            setattr(query, keyword, "")
        assoc = self._associate(ae_title, host, port)
        try:
            matches, final = _collect_find(assoc, query)
        except (ValueError, RuntimeError) as exc:  # e.g. no query context accepted
            raise PacsUnavailable(f"C-FIND failed: {type(exc).__name__}") from None
        finally:
            assoc.release()
        if final not in (0x0000, None):
            raise PacsUnavailable(f"C-FIND status 0x{final:04X}")
        found = [m for m in matches if m.get("StudyInstanceUID") == study_uid]
        return _remote(found[0], study_uid) if found else None

    def move_study(
        self, *, ae_title: str, host: str, port: int, study_uid: str, destination: str
    ) -> MoveResult:
        """C-MOVE one study to ``destination`` and wait for the final status."""
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study_uid
        assoc = self._associate(ae_title, host, port)
        result = MoveResult(None, 0, 0)
        try:
            for status, _ in assoc.send_c_move(
                query, destination, StudyRootQueryRetrieveInformationModelMove
            ):
                if status and status.Status not in PENDING:
                    result = MoveResult(
                        int(status.Status),
                        int(status.get("NumberOfCompletedSuboperations", 0) or 0),
                        int(status.get("NumberOfFailedSuboperations", 0) or 0),
                    )
        except (ValueError, RuntimeError) as exc:
            raise PacsUnavailable(f"C-MOVE failed: {type(exc).__name__}") from None
        finally:
            assoc.release()
        return result


def _collect_find(assoc, query: Dataset) -> tuple[list[Dataset], int | None]:  # type: ignore[no-untyped-def]
    matches, final = [], None
    for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
        if not status:
            raise PacsUnavailable("the PACS stopped answering the C-FIND")
        if status.Status in PENDING and identifier is not None:
            matches.append(identifier)
        else:
            final = int(status.Status)
    return matches, final


def _remote(identifier: Dataset, study_uid: str) -> RemoteStudy:
    text = str(identifier.get("PatientBirthDate", "") or "")
    birth = None
    if len(text) == 8 and text.isdigit():
        try:
            birth = date(int(text[:4]), int(text[4:6]), int(text[6:]))
        except ValueError:
            birth = None
    count = identifier.get("NumberOfStudyRelatedInstances")
    return RemoteStudy(
        study_uid=study_uid,
        patient_id=str(identifier.get("PatientID", "") or "").strip() or None,
        issuer_of_patient_id=str(identifier.get("IssuerOfPatientID", "") or "").strip() or None,
        birth_date=birth,
        instance_count=int(count) if count not in (None, "") else None,
    )


class Puller:
    """Claims due pull jobs from the database and retrieves them, one at a time per node."""

    def __init__(
        self, *, settings: Settings, sessions: sessionmaker[Session], client: PacsClient
    ) -> None:
        self.settings, self.sessions, self.client = settings, sessions, client
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="zb-puller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            try:
                while not self._stop.is_set() and self.run_one():
                    pass
            except Exception:
                log.exception("pull failed unexpectedly; retrying")

    def run_one(self, now: datetime | None = None) -> bool:
        """Retrieve one due study; return False when nothing was due."""
        claimed = self._claim(now or utcnow())
        if claimed is None:
            return False
        job_id, tenant_id, study_uid, pacs = claimed
        try:
            result = self.client.move_study(
                ae_title=pacs[0],
                host=pacs[1],
                port=pacs[2],
                study_uid=study_uid,
                destination=self.settings.dicom_ae_title,
            )
            reason = None if result.ok else result.reason()
        except PacsUnavailable as exc:
            reason = str(exc)
        self._finish(job_id, reason, utcnow())
        return True

    def _claim(self, now: datetime) -> tuple[int, int, str, tuple[str, str, int]] | None:
        with transaction(self.sessions) as session:
            job = session.scalar(
                select(PullJob)
                .where(
                    ((PullJob.state == PullState.pending) & (PullJob.next_attempt_at <= now))
                    | (
                        (PullJob.state == PullState.running)
                        & (PullJob.next_attempt_at <= now - STALE_RUNNING)
                    )
                )
                .order_by(PullJob.next_attempt_at)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            if job is None:
                return None
            tenant = session.get(Tenant, job.tenant_id)
            assert tenant is not None
            job.state, job.attempts, job.next_attempt_at = PullState.running, job.attempts + 1, now
            if not (tenant.pacs_ae_title and tenant.pacs_host and tenant.pacs_port):
                job.state, job.error = PullState.failed, "no PACS configured"
                return None
            return (
                job.id,
                job.tenant_id,
                job.study_uid,
                (tenant.pacs_ae_title, tenant.pacs_host, tenant.pacs_port),
            )

    def _finish(self, job_id: int, reason: str | None, now: datetime) -> None:
        with transaction(self.sessions) as session:
            job = session.get(PullJob, job_id)
            assert job is not None
            if reason is None:
                job.state, job.error, job.finished_at = PullState.done, None, now
                event, outcome = audit.Ev.study_pulled, audit.Outcome.success
            elif job.attempts >= self.settings.pull_attempts:
                job.state, job.error, job.finished_at = PullState.failed, reason[:255], now
                event, outcome = audit.Ev.pull_failed, audit.Outcome.serious_failure
            else:
                delay = self.settings.pull_retry_seconds * 2 ** (job.attempts - 1)
                job.state, job.error = PullState.pending, reason[:255]
                job.next_attempt_at = now + timedelta(seconds=delay)
                log.warning(
                    "pull of a study failed (%s); attempt %d, retry in %.0fs",
                    reason,
                    job.attempts,
                    delay,
                )
                return
            audit.record(
                session=session,
                event=event,
                actor=audit.SYSTEM,
                tenant_id=job.tenant_id,
                outcome=outcome,
                study_uids=[job.study_uid],
                details={"attempts": job.attempts, "reason": reason},
            )
