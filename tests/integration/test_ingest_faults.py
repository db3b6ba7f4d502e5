"""Faults in the ingest path: a dying stager, racing events, flaky stores, a BSN as patient ID."""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta
from pathlib import Path

import pytest
from pynetdicom import AE
from sqlalchemy import func, select

from dicom_ingest.meta import read_meta
from dicom_ingest.pipeline import Pipeline, StorageDown
from dicom_ingest.synthetic import write_study
from tests.conftest import Node
from tests.dicom_client import load, store, wait_until
from zorgbericht import worker
from zorgbericht.audit import service as audit
from zorgbericht.audit.models import AuditEvent
from zorgbericht.db import transaction
from zorgbericht.runtime import Runtime
from zorgbericht.staging import service as staging
from zorgbericht.staging.models import Instance, Study

pytestmark = pytest.mark.peers


def _count(rt: Runtime, model: type) -> int:
    with rt.sessions() as db:
        return int(db.scalar(select(func.count()).select_from(model)) or 0)


def _study(rt: Runtime, uid: str) -> Study | None:
    with rt.sessions() as db:
        return db.scalar(select(Study).where(Study.study_uid == uid))


def _stable(rt: Runtime, uid: str) -> Study | None:
    worker.run_once(rt)
    study = _study(rt, uid)
    return study if study is not None and study.state == "stable" else None


def test_a_killed_stager_is_restarted_and_nothing_acknowledged_is_lost(
    node: Node, tmp_path: Path
) -> None:
    uid = write_study(tmp_path / "s", series=1, slices=4, size=32)
    files = sorted((tmp_path / "s").iterdir())
    assert store(node.port, load(files[:2])) == [0, 0]
    node.pipeline.drain()
    os.kill(node.pipeline._process.pid, signal.SIGKILL)  # type: ignore[attr-defined]
    node.pipeline._process.join(10)  # type: ignore[attr-defined]
    assert store(node.port, load(files[2:])) == [0, 0]
    assert node.pipeline.drain(60)
    study = wait_until(lambda: (s := _study(node.runtime, uid)) and s.instance_count == 4 and s)
    assert study.instance_count == 4


def test_an_instance_racing_the_end_of_its_association_is_refused_not_lost(
    node: Node, tmp_path: Path
) -> None:
    write_study(tmp_path / "s", series=1, slices=1, size=32)
    data = b"\0" * 128 + next((tmp_path / "s").iterdir()).read_bytes()[128:]
    meta = read_meta(data)
    batch = node.pipeline.open_batch(
        tenant_id=node.tenant_id, actor=audit.Actor("dicom", "TESTSCU")
    )
    node.pipeline.end_batch(batch, aborted=True)
    node.pipeline.end_batch(batch, aborted=False)  # connection-closed after abort: ignored
    assert batch.ended == "aborted"
    with pytest.raises(StorageDown, match="ended"):
        node.pipeline.accept(batch, meta, data)
    assert not list(node.settings.spool_dir.rglob("*.dcm"))


def test_a_study_whose_association_is_still_open_never_becomes_stable(
    node: Node, tmp_path: Path
) -> None:
    uid = write_study(tmp_path / "s", series=1, slices=3, size=32)
    datasets = load(sorted((tmp_path / "s").iterdir()))
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(datasets[0].SOPClassUID, datasets[0].file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="ZORGBERICHT")
    try:
        assert [int(assoc.send_c_store(ds).Status) for ds in datasets[:2]] == [0, 0]
        node.pipeline.drain()
        time.sleep(node.settings.study_quiet_seconds + 0.5)
        with transaction(node.runtime.sessions) as db:  # long past any quiet period
            staging.settle_studies(session=db, quiet=timedelta(0))
        study = _study(node.runtime, uid)
        assert study.state == "receiving" and study.interrupted
        assert int(assoc.send_c_store(datasets[2]).Status) == 0
    finally:
        assoc.release()
    worker.run_once(node.runtime)
    study = wait_until(lambda: _stable(node.runtime, uid))
    assert study.instance_count == 3 and not study.interrupted


class FlakyStore:
    """Wraps a real store; the first uploads fail with an error that is not 'unavailable'."""

    def __init__(self, inner, failures: int) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.failures = inner, failures

    def put_file(self, key: str, path: Path, content_type: str = "") -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("S3UploadFailedError: SlowDown")
        self.inner.put_file(key, path, content_type)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.inner, name)


def test_upload_threads_survive_unexpected_store_errors(
    runtime: Runtime, tenant_id: int, tmp_path: Path
) -> None:
    uid = write_study(tmp_path / "s", series=1, slices=6, size=32)
    flaky = FlakyStore(runtime.store, failures=runtime.settings.upload_threads + 2)
    pipeline = Pipeline(settings=runtime.settings, store=flaky, sessions=runtime.sessions)
    pipeline.start()
    try:
        batch = pipeline.open_batch(tenant_id=tenant_id, actor=audit.Actor("dicom", "TESTSCU"))
        for path in sorted((tmp_path / "s").iterdir()):
            data = b"\0" * 128 + path.read_bytes()[128:]
            pipeline.accept(batch, read_meta(data), data)
        pipeline.end_batch(batch, aborted=False)
        assert pipeline.drain(60)
    finally:
        pipeline.close()
    assert flaky.failures == 0
    assert _study(runtime, uid).instance_count == 6
    assert _count(runtime, Instance) == 6


def test_a_bsn_used_as_patient_id_never_reaches_the_audit_trail(node: Node, tmp_path: Path) -> None:
    uid = write_study(
        tmp_path / "s",
        series=1,
        slices=2,
        size=32,
        patient={
            "PatientName": "X^Y",
            "PatientID": "111222333",
            "PatientBirthDate": "19600101",
            "IssuerOfPatientID": "NLMINBIZA",
        },
    )
    assert store(node.port, load(sorted((tmp_path / "s").iterdir()))) == [0, 0]
    wait_until(lambda: _stable(node.runtime, uid))
    with node.runtime.sessions() as db:
        rows = db.scalars(select(AuditEvent)).all()
    assert rows and any(r.patient_id == "BSN:******333" for r in rows)
    for row in rows:
        assert "111222333" not in f"{row.patient_id} {row.details} {row.study_uids}"


def test_a_spooled_instance_with_an_unreadable_header_is_moved_aside(
    runtime: Runtime, tenant_id: int
) -> None:
    folder = runtime.settings.spool_dir / str(tenant_id)
    folder.mkdir(parents=True)
    (folder / "garbage.dcm").write_bytes(b"\0" * 128 + b"DICMnot really")
    pipeline = Pipeline(settings=runtime.settings, store=runtime.store, sessions=runtime.sessions)
    pipeline.start()
    pipeline.close()
    assert (folder / "garbage.bad").exists() and _count(runtime, Study) == 0
