"""pynetdicom event handlers. Collaborators arrive through the event binding's arguments."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pynetdicom import evt
from sqlalchemy.orm import Session, sessionmaker

from dicom_ingest.meta import StudyRef, UndecodableInstance, read_meta, study_ref
from dicom_ingest.pipeline import Batch, Pipeline, StorageDown
from dicom_ingest.stager import StagerProcess
from zorgbericht.audit import service as audit
from zorgbericht.db import transaction
from zorgbericht.tenants import service as tenants

if TYPE_CHECKING:
    from pynetdicom.events import Event

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC210
MISSING_IDENTIFIER = 0xC211


def _actor(event: Event) -> audit.Actor:
    requestor = event.assoc.requestor
    return audit.Actor("dicom", requestor.ae_title.strip(), ip=requestor.address)


def handle_requested(event: Event, sessions: sessionmaker[Session]) -> None:
    """Reject the association unless the calling AE title belongs to a tenant.

    Unknown caller: rejected permanently, source "service user", reason "calling AE title
    not recognised" (PS3.8 9.3.4), audited as a security alert. When the tenant list cannot
    be read (database down) the association is rejected as transient congestion, so the
    sender tries again later instead of sending into a node that cannot stage.
    """
    calling = event.assoc.requestor.primitive.calling_ae_title.strip()
    try:
        with transaction(sessions) as session:
            tenant = tenants.tenant_for_ae(session=session, ae_title=calling)
            if tenant is None:
                audit.record(
                    session=session,
                    event=audit.Ev.association_refused,
                    actor=audit.Actor("dicom", calling, ip=event.assoc.requestor.address),
                    tenant_id=None,
                    outcome=audit.Outcome.minor_failure,
                    details={"reason": "calling AE title not recognised"},
                )
    except Exception as exc:
        log.error(
            "cannot check calling AE title (%s): association refused for now", type(exc).__name__
        )
        _reject(event, 0x02, 0x03, 0x01)
        return
    if tenant is None:
        log.warning("association from unknown AE title %r refused", calling)
        _reject(event, 0x01, 0x01, 0x03)
        return
    event.assoc.zb_tenant_id = tenant.id  # type: ignore[attr-defined]


def _reject(event: Event, result: int, source: int, reason: int) -> None:
    event.assoc.acse.send_reject(result, source, reason)
    event.assoc.is_rejected = True
    event.assoc.kill()


def handle_accepted(
    event: Event, sessions: sessionmaker[Session], pipeline: Pipeline | StagerProcess
) -> None:
    """Open the association's batch and audit the accepted association."""
    tenant_id = event.assoc.zb_tenant_id
    actor = _actor(event)
    event.assoc.zb_batch = pipeline.open_batch(tenant_id=tenant_id, actor=actor)
    with transaction(sessions) as session:
        audit.record(
            session=session,
            event=audit.Ev.association_accepted,
            actor=actor,
            tenant_id=tenant_id,
            details={"called_ae": event.assoc.acceptor.ae_title.strip()},
        )


def handle_store(event: Event, pipeline: Pipeline | StagerProcess) -> int:
    """Stage one C-STORE request exactly as received.

    The encoded data set is written with a zeroed preamble and the file meta built from
    the negotiated transfer syntax; it is never decoded and re-encoded. Success is
    answered only once the spool file is durable. Statuses: ``0xA700`` when the object
    store or the spool cannot take it, ``0xC210`` when the data set cannot be parsed,
    ``0xC211`` when a UID is missing, ``0xA900`` when it does not match the request.
    Every refusal, an unexpected failure of ours included, is counted in the association's
    batch (per study, when its header names one); the batch's audit summary carries them.
    """
    batch: Batch = event.assoc.zb_batch
    try:
        status, ref = _store(event, batch, pipeline)
    except Exception as exc:  # a failure of ours, not of the data: the sender may retry
        log.error("C-STORE failed unexpectedly (%s); answered out of resources", type(exc).__name__)
        status, ref = OUT_OF_RESOURCES, None
    if status != SUCCESS:
        _count_refusal(event, batch, pipeline, status, ref)
    return status


def _store(
    event: Event, batch: Batch, pipeline: Pipeline | StagerProcess
) -> tuple[int, StudyRef | None]:
    """Stage one instance; return its status and, when refused, the study it names."""
    try:
        if batch.pending == 0:
            pipeline.check_storage()
        data = event.encoded_dataset(include_meta=True)
        meta = read_meta(data)
    except StorageDown as exc:
        log.warning("refusing instance: storage unavailable (%s)", exc)
        return OUT_OF_RESOURCES, None
    except UndecodableInstance as exc:
        log.warning("refusing instance from %s: %s", batch.actor.id, exc)
        return (MISSING_IDENTIFIER if "identifier" in str(exc) else CANNOT_UNDERSTAND), None
    request = event.request
    if (
        meta.sop_uid != request.AffectedSOPInstanceUID
        or meta.sop_class_uid != request.AffectedSOPClassUID
    ):
        log.warning(
            "refusing instance from %s: data set does not match the request", batch.actor.id
        )
        return DATASET_MISMATCH, StudyRef.of(meta)
    try:
        pipeline.accept(batch, meta, data)
    except StorageDown as exc:
        log.warning("refusing instance: storage unavailable (%s)", exc)
        return OUT_OF_RESOURCES, StudyRef.of(meta)
    return SUCCESS, None


def _count_refusal(
    event: Event,
    batch: Batch,
    pipeline: Pipeline | StagerProcess,
    status: int,
    ref: StudyRef | None,
) -> None:
    """Count a refused instance for the audit; read its study from the header when not known."""
    try:
        if ref is None:
            ref = study_ref(event.encoded_dataset(include_meta=True))
        sop_class = str(event.request.AffectedSOPClassUID or "") or None
        pipeline.refuse(batch, status=status, ref=ref, sop_class_uid=sop_class)
    except Exception as exc:  # counting must never change the answer the sender gets
        log.error("refused instance not counted for the audit (%s)", type(exc).__name__)


def handle_released(event: Event, pipeline: Pipeline | StagerProcess) -> None:
    batch: Batch | None = getattr(event.assoc, "zb_batch", None)
    if batch is not None:
        pipeline.end_batch(batch, aborted=False)


def handle_aborted(event: Event, pipeline: Pipeline | StagerProcess) -> None:
    """An aborted association marks its studies interrupted: never stable until resent."""
    batch: Batch | None = getattr(event.assoc, "zb_batch", None)
    if batch is not None and batch.ended is None:
        pipeline.end_batch(batch, aborted=True)


def handle_closed(event: Event, pipeline: Pipeline | StagerProcess) -> None:
    """A connection that dropped without release or abort counts as aborted."""
    batch: Batch | None = getattr(event.assoc, "zb_batch", None)
    if batch is not None and batch.ended is None:
        pipeline.end_batch(batch, aborted=True)


def bindings(sessions: sessionmaker[Session], pipeline: Pipeline | StagerProcess) -> list:  # type: ignore[type-arg]
    return [
        (evt.EVT_REQUESTED, handle_requested, [sessions]),
        (evt.EVT_ACCEPTED, handle_accepted, [sessions, pipeline]),
        (evt.EVT_C_STORE, handle_store, [pipeline]),
        (evt.EVT_RELEASED, handle_released, [pipeline]),
        (evt.EVT_ABORTED, handle_aborted, [pipeline]),
        (evt.EVT_CONN_CLOSE, handle_closed, [pipeline]),
    ]
