"""Shares of studies that are only in the PACS: C-FIND, C-MOVE from a real Orthanc."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from dicom_ingest.pull import PacsClient, Puller
from dicom_ingest.synthetic import write_study
from infra.peers import Orthanc
from tests.conftest import Node, start_node, stop_node
from tests.dicom_client import wait_until
from zorgbericht import worker
from zorgbericht.app import create_app
from zorgbericht.audit.models import AuditEvent
from zorgbericht.db import transaction
from zorgbericht.runtime import Runtime
from zorgbericht.shares.models import PullJob
from zorgbericht.staging.models import Study
from zorgbericht.tenants import service as tenants

pytestmark = pytest.mark.peers
PATIENT = {"PatientName": "PACS^ONLY", "PatientID": "PACS-7", "PatientBirthDate": "19820606"}


@dataclass
class Site:
    node: Node
    pacs: Orthanc
    puller: Puller
    api: TestClient


@pytest.fixture
def site(runtime: Runtime) -> Iterator[Site]:
    runtime.settings.pull_attempts, runtime.settings.pull_retry_seconds = 2, 30
    ours = ("ZORGBERICHT", "127.0.0.1", runtime.settings.dicom_port)
    with Orthanc(modalities={"zorgbericht": ours}, plugins=False) as pacs:
        with transaction(runtime.sessions) as db:
            tenant = tenants.create_tenant(
                session=db,
                slug="acme",
                name="Acme Ziekenhuis",
                ae_titles=["ORTHANC", "TESTSCU"],
                pacs=f"ORTHANC@127.0.0.1:{pacs.dicom_port}",
            )
            key = tenants.create_api_key(session=db, tenant=tenant)[0]
            tenant_id = tenant.id
        runtime.pacs = PacsClient("ZORGBERICHT", timeout=10)
        node = start_node(runtime, tenant_id)
        puller = Puller(
            settings=runtime.settings, sessions=runtime.sessions, client=runtime.pacs
        )  # driven by the tests, one job at a time
        try:
            with TestClient(create_app(runtime=runtime)) as api:
                api.headers["Authorization"] = f"Bearer {key}"
                yield Site(node, pacs, puller, api)
        finally:
            stop_node(node)


def upload(pacs: Orthanc, folder: Path) -> list[Path]:
    files = sorted(folder.iterdir())
    for file in files:
        pacs.rest("POST", "/instances", file.read_bytes(), "application/dicom")
    return files


def share_body(uid: str) -> dict[str, object]:
    return {
        "study_uids": [uid],
        "recipient": "provider",
        "delivery": "url",
        "phone": "+31612345678",
    }


def test_a_study_only_in_the_pacs_is_pulled_and_the_share_becomes_ready(
    site: Site, runtime: Runtime, tmp_path: Path
) -> None:
    uid = write_study(tmp_path / "p", series=2, slices=3, size=32, patient=PATIENT)
    upload(site.pacs, tmp_path / "p")
    created = site.api.post("/api/v1/shares", json=share_body(uid))
    assert created.status_code == 201, created.text
    share = created.json()
    assert share["state"] == "pending"
    assert site.puller.run_one()  # C-MOVE: Orthanc stores into our node
    site.node.pipeline.drain(60)

    def ready() -> bool:
        worker.run_once(runtime)
        return site.api.get(f"/api/v1/shares/{share['id']}").json()["state"] == "ready"

    wait_until(ready, timeout=60, interval=0.3)
    with runtime.sessions() as db:
        study = db.scalar(select(Study).where(Study.study_uid == uid))
        events = [e.event for e in db.scalars(select(AuditEvent).order_by(AuditEvent.seq))]
    assert study.instance_count == 6 and study.patient_id == "PACS-7"
    assert "study.pulled" in events and "dicom.instances.received" in events


def test_unknown_study_and_other_patient_are_refused_by_the_pacs_check(
    site: Site, tmp_path: Path
) -> None:
    unknown = site.api.post("/api/v1/shares", json=share_body("1.2.826.0.1.99.1"))
    assert unknown.status_code == 422
    assert "the PACS does not know it" in unknown.json()["detail"]
    first = write_study(tmp_path / "a", series=1, slices=1, size=32, patient=PATIENT)
    other = write_study(
        tmp_path / "b", series=1, slices=1, size=32, patient={**PATIENT, "PatientID": "PACS-8"}
    )
    upload(site.pacs, tmp_path / "a")
    upload(site.pacs, tmp_path / "b")
    mixed = site.api.post(
        "/api/v1/shares", json={**share_body(first), "study_uids": [first, other]}
    )
    assert mixed.status_code == 422 and "different patients" in mixed.json()["detail"]


def test_a_pull_that_keeps_failing_fails_the_share_with_a_reason(
    site: Site, runtime: Runtime, tmp_path: Path
) -> None:
    uid = write_study(tmp_path / "p", series=1, slices=2, size=32, patient=PATIENT)
    upload(site.pacs, tmp_path / "p")
    share = site.api.post("/api/v1/shares", json=share_body(uid)).json()
    [found] = site.pacs.rest("POST", "/tools/lookup", uid.encode(), "text/plain")
    site.pacs.rest("DELETE", f"/studies/{found['ID']}")  # gone before we retrieve it
    assert site.puller.run_one()
    with runtime.sessions() as db:
        job = db.scalar(select(PullJob))
    assert job.state == "pending" and job.attempts == 1 and "0xC000" in job.error
    assert not site.puller.run_one(now=job.next_attempt_at - timedelta(seconds=1))  # not due
    assert site.puller.run_one(now=job.next_attempt_at)
    worker.run_once(runtime)
    failed = site.api.get(f"/api/v1/shares/{share['id']}").json()
    assert failed["state"] == "failed"
    assert "retrieving from the PACS failed" in failed["failed_reason"]
    trail = [e["event"] for e in site.api.get(f"/api/v1/shares/{share['id']}/audit").json()]
    assert "share.failed" in trail
