"""Refused C-STORE instances reach the audit trail as one summary per study and association.

A real pynetdicom SCU sends to the node over the network; the node runs with the stager in
its own process (as deployed) and with the pipeline in process, on every backend.
"""

from __future__ import annotations

import io
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from pynetdicom.association import Association
from sqlalchemy import select

from dicom_ingest.pipeline import Pipeline
from dicom_ingest.server import start_dicom_server
from dicom_ingest.stager import StagerProcess
from dicom_ingest.synthetic import write_study
from tests.dicom_client import wait_until
from zorgbericht.audit import service as audit
from zorgbericht.audit.models import AuditEvent
from zorgbericht.runtime import Runtime
from zorgbericht.staging.models import Study
from zorgbericht.storage import StorageUnavailable

pytestmark = pytest.mark.peers

BSN = "123456782"
PATIENT = {"PatientName": "REFUSED^TEST", "PatientID": "REF0001", "PatientBirthDate": "19750315"}


class SwitchableStore:
    """Wraps the real store; its health check raises ``down`` while that is set."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner = inner
        self.down: Exception | None = None

    def check(self) -> None:
        if self.down is not None:
            raise self.down
        self.inner.check()

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.inner, name)


@dataclass
class Receiver:
    runtime: Runtime
    pipeline: Pipeline | StagerProcess
    store: SwitchableStore
    port: int


@pytest.fixture(params=["stager", "in_process"])
def receiver(
    request: pytest.FixtureRequest, runtime: Runtime, tenant_id: int
) -> Iterator[Receiver]:
    store = SwitchableStore(runtime.store)
    pipeline: Pipeline | StagerProcess
    if request.param == "stager":
        pipeline = StagerProcess(settings=runtime.settings, store=store)  # type: ignore[arg-type]
    else:
        pipeline = Pipeline(settings=runtime.settings, store=store, sessions=runtime.sessions)  # type: ignore[arg-type]
    pipeline.start()
    server = start_dicom_server(
        settings=runtime.settings, sessions=runtime.sessions, pipeline=pipeline
    )
    yield Receiver(runtime, pipeline, store, runtime.settings.dicom_port)
    server.shutdown()
    pipeline.close()


def _part10(path: Path, body: bytes, sop_uid: str | None = None) -> Path:
    """Write a Part 10 file with a valid CT file meta and exactly ``body`` as its data set."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    buffer.write(bytes(128) + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    path.write_bytes(buffer.getvalue() + body)
    return path


def _data_set(path: Path) -> bytes:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return path.read_bytes()[132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength) :]


def _undecodable(folder: Path) -> Path:
    """A data set pydicom cannot parse: a sequence whose first item has no item tag (0xC210)."""
    broken = b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff" + b"\x12\x34\x56\x78\x00\x00\x00\x00"
    return _part10(folder / "undecodable.dcm", broken)


def _mismatched(source: Path) -> Path:
    """The instance's own data set under another SOP Instance UID in the request (0xA900)."""
    return _part10(source.with_name("mismatched.dcm"), _data_set(source))


def _without_sop_uid(source: Path) -> Path:
    """The instance without its SOP Instance UID; the study is still readable (0xC211)."""
    ds = pydicom.dcmread(source)
    del ds.SOPInstanceUID  # the file meta keeps it: the request still names the instance
    target = source.with_name("no-sop-uid.dcm")
    ds.save_as(target, enforce_file_format=True)
    return target


def _associate(port: int) -> Association:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="ZORGBERICHT")
    assert assoc.is_established
    return assoc


def _send(assoc: Association, path: Path) -> int:
    """Send a file's data set as its bytes are on disk, under its file meta's UIDs."""
    previous, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        return int(assoc.send_c_store(path).Status)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def _events(rt: Runtime, name: str) -> list[AuditEvent]:
    with rt.sessions() as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.event == name)))


def _refused(rt: Runtime, count: int) -> list[AuditEvent]:
    """Wait for ``count`` refused summaries; return them, the unreadable study's last."""
    events = wait_until(
        lambda: len(found := _events(rt, "dicom.instances.refused")) >= count and found
    )
    assert len(events) == count
    return sorted(events, key=lambda e: not e.study_uids)


def _study(rt: Runtime, uid: str) -> Study | None:
    with rt.sessions() as db:
        return db.scalar(select(Study).where(Study.study_uid == uid))


def _assert_no_patient_data(events: list[AuditEvent]) -> None:
    for event in events:
        text = f"{event.patient_id} {event.details}"
        assert BSN not in text and "REFUSED" not in text and "1975" not in text


def test_refused_instances_are_audited_per_study_beside_the_received_ones(
    receiver: Receiver, tmp_path: Path
) -> None:
    study_uid = write_study(tmp_path / "s", series=1, slices=3, size=32, patient=PATIENT, bsn=BSN)
    files = sorted((tmp_path / "s").iterdir())
    assoc = _associate(receiver.port)
    try:
        receiver.store.down = StorageUnavailable("object store unreachable")
        statuses = [_send(assoc, files[0])]
        receiver.store.down = None
        statuses += [_send(assoc, p) for p in (files[1], files[2], _mismatched(files[0]))]
        statuses.append(_send(assoc, _undecodable(tmp_path)))
    finally:
        assoc.release()
    assert statuses == [0xA700, 0, 0, 0xA900, 0xC210]

    in_study, unreadable = _refused(receiver.runtime, 2)
    assert in_study.study_uids == [study_uid] and unreadable.study_uids == []
    assert in_study.details["refused"] == 2
    assert in_study.details["statuses"] == {"A700": 1, "A900": 1}
    assert in_study.details["sop_classes"] == {CTImageStorage: 2}
    assert in_study.patient_id == "REF0001" and in_study.bsn_last3 == "782"
    assert unreadable.details["refused"] == 1 and unreadable.details["statuses"] == {"C210": 1}
    assert unreadable.patient_id is None and unreadable.bsn_last3 is None
    for event in (in_study, unreadable):
        assert (event.event_code, event.action, event.outcome) == ("110104", "C", 8)
        assert event.actor_id == "TESTSCU" and event.details["ended"] == "released"
    (received,) = _events(receiver.runtime, "dicom.instances.received")
    assert received.study_uids == [study_uid] and received.details["instances"] == 2
    assert received.outcome == 0 and received.details["batch"] == in_study.details["batch"]
    assert unreadable.details["batch"] == in_study.details["batch"]
    assert _study(receiver.runtime, study_uid).instance_count == 2
    _assert_no_patient_data([in_study, unreadable])
    with receiver.runtime.sessions() as db:
        assert audit.verify(session=db).ok


def test_an_association_whose_every_instance_was_refused_is_still_audited(
    receiver: Receiver, tmp_path: Path
) -> None:
    study_uid = write_study(tmp_path / "s", series=1, slices=2, size=32, patient=PATIENT, bsn=BSN)
    files = sorted((tmp_path / "s").iterdir())
    assoc = _associate(receiver.port)
    try:
        receiver.store.down = RuntimeError("a bug of ours, not the data's")  # unexpected path
        statuses = [_send(assoc, files[0])]
        receiver.store.down = None
        statuses += [_send(assoc, _without_sop_uid(files[1])), _send(assoc, _mismatched(files[1]))]
        statuses.append(_send(assoc, _undecodable(tmp_path)))
    finally:
        assoc.release()
    assert statuses == [0xA700, 0xC211, 0xA900, 0xC210]

    in_study, unreadable = _refused(receiver.runtime, 2)
    assert in_study.study_uids == [study_uid] and in_study.details["refused"] == 3
    assert in_study.details["statuses"] == {"A700": 1, "A900": 1, "C211": 1}
    assert in_study.patient_id == "REF0001" and in_study.bsn_last3 == "782"
    assert unreadable.details["statuses"] == {"C210": 1} and unreadable.outcome == 8
    assert _events(receiver.runtime, "dicom.instances.received") == []
    assert _study(receiver.runtime, study_uid) is None
    _assert_no_patient_data([in_study, unreadable])


def test_refusals_reach_the_trail_when_the_stager_died_before_the_association_ended(
    runtime: Runtime, tenant_id: int, tmp_path: Path
) -> None:
    stager = StagerProcess(settings=runtime.settings, store=runtime.store)
    stager.start()
    server = start_dicom_server(
        settings=runtime.settings, sessions=runtime.sessions, pipeline=stager
    )
    try:
        os.kill(stager._process.pid, signal.SIGKILL)  # type: ignore[arg-type]
        stager._process.join(10)
        assoc = _associate(runtime.settings.dicom_port)
        try:
            assert _send(assoc, _undecodable(tmp_path)) == 0xC210
        finally:
            assoc.release()
        (event,) = _refused(runtime, 1)
        assert event.details["statuses"] == {"C210": 1} and event.study_uids == []
    finally:
        server.shutdown()
        stager.close()
