"""The DICOM node against a real modality (dcmtk storescu, pynetdicom SCU), on every backend."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from PIL import Image
from sqlalchemy import func, select

from infra.peers import StoreSCP
from tests.conftest import Node, start_node, stop_node
from tests.dicom_client import echo, load, store, store_files, wait_until
from tests.samples import dataset_bytes, mixed_study, relabel, storescu_config
from zorgbericht import worker
from zorgbericht.audit.models import AuditEvent
from zorgbericht.db import transaction
from zorgbericht.staging import service as staging
from zorgbericht.staging.models import Instance, PreviewState, Series, Study

pytestmark = pytest.mark.peers


def _study(node: Node, study_uid: str) -> Study | None:
    with node.runtime.sessions() as db:
        return db.scalar(select(Study).where(Study.study_uid == study_uid))


def _stable(node: Node, study_uid: str) -> Study | None:
    worker.run_once(node.runtime)
    study = _study(node, study_uid)
    return study if study is not None and study.state == "stable" else None


def _instances(node: Node, study_uid: str) -> list[Instance]:
    with node.runtime.sessions() as db:
        return list(
            db.scalars(
                select(Instance).join(Series).join(Study).where(Study.study_uid == study_uid)
            )
        )


def _storescu(port: int, ae_title: str, config: Path, files: list[Path]) -> None:
    sent = subprocess.run(
        [
            "storescu",
            "-aet",
            "TESTSCU",
            "-aec",
            ae_title,
            "-xf",
            str(config),
            "Mixed",
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "TCP_NODELAY": "1"},
        timeout=120,
    )
    assert sent.returncode == 0, sent.stderr


def _check_previews(node: Node, instance: Instance) -> None:
    assert instance.preview_state == PreviewState.done, instance.preview_error
    thumb = Image.open(
        io.BytesIO(node.runtime.store.get_bytes(staging.preview_key(instance.object_key, "thumb")))
    )
    assert max(thumb.size) <= 256
    last = staging.preview_key(instance.object_key, "preview", instance.frames - 1)
    assert Image.open(io.BytesIO(node.runtime.store.get_bytes(last))).format == "JPEG"


def test_storescu_mixed_syntax_study_arrives_as_dcmtk_receives_it_indexed_and_previewed(
    node: Node, tmp_path: Path
) -> None:
    study_uid, files = mixed_study(tmp_path / "in")
    config = storescu_config(files, tmp_path / "scu.cfg")
    _storescu(node.port, "ZORGBERICHT", config, files)
    with StoreSCP() as reference:  # dcmtk, bit-preserving: what storescu put on the wire
        # storescp +xa does not accept JPEG lossless process 14: the reference gets the rest.
        _storescu(
            reference.port,
            reference.ae_title,
            config,
            [f for f in files if "process14" not in f.name],
        )
        wire = {
            pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: dataset_bytes(p)
            for p in (reference.dir / "out").iterdir()
        }

    study = wait_until(lambda: _stable(node, study_uid), timeout=60)
    assert study.instance_count == study.series_count == len(files)
    assert study.patient_id == "MIX0001"
    assert study.birth_date.isoformat() == "1980-02-29"
    assert set(study.modalities.split("\\")) >= {"CT", "MR", "OT"}

    by_sop = {i.sop_uid: i for i in _instances(node, study_uid)}
    compared = 0
    for path in files:
        original = pydicom.dcmread(path, stop_before_pixels=True)
        instance = by_sop[original.SOPInstanceUID]
        stored = tmp_path / "stored.dcm"
        stored.write_bytes(node.runtime.store.get_bytes(instance.object_key))
        assert stored.read_bytes()[:132] == bytes(128) + b"DICM"
        kept = pydicom.dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID
        assert kept == original.file_meta.TransferSyntaxUID == instance.transfer_syntax_uid
        if original.SOPInstanceUID in wire:
            assert dataset_bytes(stored) == wire[original.SOPInstanceUID], path.name
            compared += 1
        _check_previews(node, instance)
    assert compared == len(files) - 1


def test_instances_are_stored_byte_for_byte_as_sent(node: Node, tmp_path: Path) -> None:
    study_uid, files = mixed_study(tmp_path / "in")
    assert store_files(node.port, files) == [0] * len(files)
    wait_until(lambda: _stable(node, study_uid), timeout=60)
    by_sop = {i.sop_uid: i for i in _instances(node, study_uid)}
    for path in files:
        instance = by_sop[pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID]
        stored = tmp_path / "stored.dcm"
        stored.write_bytes(node.runtime.store.get_bytes(instance.object_key))
        assert dataset_bytes(stored) == dataset_bytes(path), path.name
        assert instance.sha256 == hashlib.sha256(stored.read_bytes()).hexdigest()
        assert instance.bytes == stored.stat().st_size


def test_unknown_calling_ae_is_refused_at_association(node: Node) -> None:
    assert echo(node.port, calling="TESTSCU")
    assert not echo(node.port, calling="INTRUDER")
    result = subprocess.run(
        ["echoscu", "-aet", "INTRUDER", "-aec", "ZORGBERICHT", "127.0.0.1", str(node.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stderr + result.stdout
    with node.runtime.sessions() as db:
        refused = db.scalars(
            select(AuditEvent).where(AuditEvent.event == "dicom.association.refused")
        ).all()
    assert len(refused) == 2 and {r.actor_id for r in refused} == {"INTRUDER"}
    assert all(r.event_code == "110113" and r.outcome == 4 for r in refused)


def test_resending_a_study_is_idempotent(node: Node, tmp_path: Path) -> None:
    study_uid, files = mixed_study(tmp_path / "in", with_process14=False)
    datasets = load(files[:4])
    assert store(node.port, datasets) == [0] * 4
    assert store(node.port, datasets) == [0] * 4
    study = wait_until(lambda: _stable(node, study_uid))
    assert study.instance_count == 4
    with node.runtime.sessions() as db:
        assert db.scalar(select(func.count(Instance.id))) == 4


def test_aborted_association_never_lists_the_study_as_stable(node: Node, tmp_path: Path) -> None:
    study_uid, files = mixed_study(tmp_path / "in", with_process14=False)
    datasets = load(files[:6])
    assert store(node.port, datasets, abort_after=3) == [0, 0, 0]
    node.pipeline.drain()
    study = wait_until(
        lambda: (s := _study(node, study_uid)) and s.instance_count == 3 and s.interrupted and s
    )
    with transaction(node.runtime.sessions) as db:
        assert staging.settle_studies(session=db, quiet=timedelta(0)) == []
    assert _study(node, study_uid).state == "receiving"
    # The modality sends the whole study again: now it completes.
    assert store(node.port, datasets) == [0] * 6
    study = wait_until(lambda: _stable(node, study_uid))
    assert study.instance_count == 6 and not study.interrupted


def test_missing_identifier_is_refused_with_c211_and_not_indexed(
    node: Node, tmp_path: Path
) -> None:
    _, files = mixed_study(tmp_path / "in", with_process14=False)
    ds = pydicom.dcmread(files[0])
    del ds.StudyInstanceUID
    assert store(node.port, [ds]) == [0xC211]
    node.pipeline.drain()
    with node.runtime.sessions() as db:
        assert db.scalar(select(func.count(Study.id))) == 0


def test_unreachable_object_store_answers_a700_and_indexes_nothing(
    runtime, tenant_id: int, tmp_path: Path, database_url: str
) -> None:
    from infra.peers import free_port
    from tests.conftest import make_settings
    from zorgbericht.runtime import build_runtime

    dead = {
        "storage_url": "s3://zb-test/x",
        "s3_endpoint_url": f"http://127.0.0.1:{free_port()}",
        "s3_access_key": "k",
        "s3_secret_key": "s",
    }
    broken = build_runtime(make_settings(tmp_path, database_url, dead), run_migrations=False)
    node = start_node(broken, tenant_id)
    try:
        _, files = mixed_study(tmp_path / "in", with_process14=False)
        assert store(node.port, load(files[:2])) == [0xA700, 0xA700]
        node.pipeline.drain(timeout=5)
        with broken.sessions() as db:
            assert db.scalar(select(func.count(Study.id))) == 0
            assert db.scalar(select(func.count(Instance.id))) == 0
        assert not any((broken.settings.spool_dir).rglob("*.dcm"))
    finally:
        stop_node(node)
        broken.close()


def test_bsn_from_other_patient_ids_is_indexed_and_only_its_last_digits_audited(
    node: Node, tmp_path: Path
) -> None:
    from dicom_ingest.synthetic import write_study

    study_uid = write_study(tmp_path / "bsn", series=1, slices=3, size=64, bsn="123456782")
    assert store(node.port, load(sorted((tmp_path / "bsn").iterdir()))) == [0, 0, 0]
    study = wait_until(lambda: _stable(node, study_uid))
    assert study.bsn == "123456782"
    with node.runtime.sessions() as db:
        events = db.scalars(select(AuditEvent).where(AuditEvent.study_uids.isnot(None))).all()
    received = [e for e in events if e.event == "dicom.instances.received"]
    assert received and all(e.bsn_last3 == "782" for e in received)
    for event in events:
        assert "123456782" not in str(event.details) and event.patient_id != "123456782"


def test_spool_left_by_a_crash_is_staged_on_start(runtime, tenant_id: int, tmp_path: Path) -> None:
    _, files = mixed_study(tmp_path / "in", with_process14=False)
    ds = pydicom.dcmread(files[1])
    relabel(ds, "1.2.3.4.5.6.7", "1.2.3.4.5.6.7.1", 1)
    folder = runtime.settings.spool_dir / str(tenant_id)
    folder.mkdir(parents=True)
    ds.save_as(folder / "left-behind.dcm", enforce_file_format=True)
    (folder / "half.part").write_bytes(b"never acknowledged")
    (folder / "0123abcd.999999.dcm").write_bytes(b"\0" * 128 + b"DICM cut short by a crash")
    node = start_node(runtime, tenant_id)
    try:
        study = wait_until(lambda: _stable(node, "1.2.3.4.5.6.7"))
        assert study.instance_count == 1
        assert not any(folder.iterdir())
    finally:
        stop_node(node)
