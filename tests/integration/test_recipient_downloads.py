"""Recipient downloads over HTTP: DICOM and JPEG ZIPs, exact sizes, the daily cap."""

from __future__ import annotations

import contextlib
import hashlib
import io
import subprocess
import threading
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.fileset import FileSet
from sqlalchemy import select, update

from tests.integration.recipient_flow import Link, browser, create_link, sign_in
from tests.integration.test_shares import PATIENT, stage
from zorgbericht import worker
from zorgbericht.app import create_app
from zorgbericht.audit.models import AuditEvent
from zorgbericht.db import transaction, utcnow
from zorgbericht.recipients import service as recipients
from zorgbericht.recipients.models import Download
from zorgbericht.runtime import Runtime
from zorgbericht.staging.models import Instance
from zorgbericht.tenants import service as tenants

pytestmark = pytest.mark.peers
R = "/api/v1/recipient"


@pytest.fixture
def app(runtime: Runtime) -> Iterator[FastAPI]:
    runtime.settings.public_url = "http://zb.test"
    made = create_app(runtime=runtime)
    with TestClient(made):
        yield made


@pytest.fixture
def two_studies(runtime: Runtime, app: FastAPI, tenant_id: int, tmp_path: Path) -> Link:
    with transaction(runtime.sessions) as db:
        key = tenants.create_api_key(
            session=db, tenant=tenants.get_tenant(session=db, slug="acme"), label="pacs"
        )[0]
    uids = [stage(runtime, tenant_id, tmp_path / name, patient=PATIENT) for name in ("a", "b")]
    with TestClient(app) as api:
        api.headers["Authorization"] = f"Bearer {key}"
        link = create_link(api, uids)
    worker.run_once(runtime)
    return link


def _signed_in(runtime: Runtime, app: FastAPI, link: Link) -> TestClient:
    client = browser(runtime, app)
    sign_in(client, runtime, link.code)
    return client


def _originals(runtime: Runtime) -> dict[str, str]:
    with runtime.sessions() as db:
        return {
            uid: digest for uid, digest in db.execute(select(Instance.sop_uid, Instance.sha256))
        }


def test_dicom_zip_holds_a_dicomdir_and_every_instance_byte_for_byte(
    runtime: Runtime, app: FastAPI, two_studies: Link, tmp_path: Path
) -> None:
    client = _signed_in(runtime, app, two_studies)
    answer = client.get(f"{R}/download", params={"format": "dicom", "study": "all"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/zip"
    assert int(answer.headers["content-length"]) == len(answer.content)
    assert "attachment" in answer.headers["content-disposition"]
    folder = tmp_path / "unzipped"
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        assert archive.testzip() is None
        archive.extractall(folder)
    assert {"DICOMDIR", "README.TXT", "INDEX.HTM"} <= {p.name for p in folder.iterdir()}
    fileset = FileSet(pydicom.dcmread(folder / "DICOMDIR"))
    found = {}
    for instance in fileset:
        path = Path(instance.path)
        assert len(path.relative_to(folder).parts) <= 8
        found[instance.SOPInstanceUID] = hashlib.sha256(path.read_bytes()).hexdigest()
    assert found == _originals(runtime)
    assert len({i.StudyInstanceUID for i in fileset}) == 2
    dump = subprocess.run(
        ["dcmdump", "-q", str(folder / "DICOMDIR")], capture_output=True, text=True
    )
    assert dump.returncode == 0 and dump.stderr == ""
    assert "DirectoryRecordSequence" in dump.stdout


def test_dicom_zip_of_one_study_holds_only_that_study(
    runtime: Runtime, app: FastAPI, two_studies: Link
) -> None:
    client = _signed_in(runtime, app, two_studies)
    answer = client.get(f"{R}/download", params={"format": "dicom", "study": two_studies.study_uid})
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        members = [
            n for n in archive.namelist() if n not in ("DICOMDIR", "README.TXT", "INDEX.HTM")
        ]
        studies = {
            pydicom.dcmread(io.BytesIO(archive.read(n)), stop_before_pixels=True).StudyInstanceUID
            for n in members
        }
    assert studies == {two_studies.study_uid}
    other = client.get(f"{R}/download", params={"format": "dicom", "study": "1.2.3.4"})
    assert other.status_code == 404


def test_jpeg_zip_has_readable_names_and_real_jpegs(
    runtime: Runtime, app: FastAPI, two_studies: Link
) -> None:
    client = _signed_in(runtime, app, two_studies)
    answer = client.get(f"{R}/download", params={"format": "jpeg", "study": "all"})
    assert int(answer.headers["content-length"]) == len(answer.content)
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        pictures = [n for n in archive.namelist() if n.lower().endswith(".jpg")]
        assert len(pictures) == 4
        for name in pictures:
            assert "/" in name and not any(c in name for c in '\\:*?"<>|')
            with Image.open(io.BytesIO(archive.read(name))) as image:
                assert image.format == "JPEG"


@pytest.mark.parametrize("storage", ["file"], indirect=True)
def test_eleventh_download_of_the_day_is_refused_kindly(
    runtime: Runtime, app: FastAPI, two_studies: Link
) -> None:
    client = _signed_in(runtime, app, two_studies)
    for _ in range(10):
        answer = client.get(f"{R}/download", params={"format": "jpeg", "study": "all"})
        assert answer.status_code == 200
    assert client.get(f"{R}/studies").json()["downloads_left"] == 0
    refused = client.get(f"{R}/download", params={"format": "dicom", "study": "all"})
    assert refused.status_code == 429 and "10" in refused.json()["detail"]
    page = client.get(f"{R}/download", params={"format": "dicom"}, headers={"Accept": "text/html"})
    assert page.status_code == 429 and page.headers["content-type"].startswith("text/html")
    assert "<html" in page.text
    with runtime.sessions() as db:
        refusals = db.scalars(
            select(AuditEvent).where(AuditEvent.event == "recipient.download_refused")
        ).all()
        starts = db.scalars(
            select(AuditEvent).where(AuditEvent.event == "recipient.download_started")
        ).all()
    assert len(refusals) == 2 and len(starts) == 10
    assert all(e.event_code == "110106" for e in starts)
    with transaction(runtime.sessions) as db:  # yesterday's downloads don't count today
        db.execute(update(Download).values(day=utcnow().date() - timedelta(days=1)))
    assert client.get(f"{R}/download", params={"format": "jpeg"}).status_code == 200


@pytest.mark.parametrize("storage", ["file"], indirect=True)
def test_parallel_downloads_cannot_get_past_the_cap(
    runtime: Runtime, app: FastAPI, two_studies: Link, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime.settings.daily_download_limit = 3
    client = _signed_in(runtime, app, two_studies)
    cookies = dict(client.cookies)
    # Every request counts today's downloads at the same moment: only the row lock (or
    # SQLite's single writer) keeps them from all seeing room for one more.
    barrier = threading.Barrier(8, timeout=2)
    counted = recipients.downloads_today

    def count_together(*args: object) -> int:
        done = counted(*args)  # type: ignore[arg-type]
        # Broken when serialised by the lock: the others cannot get here meanwhile.
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait()
        return done

    monkeypatch.setattr(recipients, "downloads_today", count_together)

    def one(_: int) -> int:
        with browser(runtime, app) as other:
            for name, value in cookies.items():
                other.cookies.set(name, value, domain="zb.test")
            return other.get(f"{R}/download", params={"format": "jpeg"}).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = sorted(pool.map(one, range(8)))
    assert statuses == [200] * 3 + [429] * 5
    with runtime.sessions() as db:
        assert len(db.scalars(select(Download)).all()) == 3
