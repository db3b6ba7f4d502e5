"""Share API: creation, refusals, delivery by email / letter / URL, revoke, expiry and purge."""

from __future__ import annotations

import email
import email.policy
import re
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from dicom_ingest.importer import import_path
from dicom_ingest.pipeline import Pipeline
from dicom_ingest.synthetic import write_study
from zorgbericht import worker
from zorgbericht.app import create_app
from zorgbericht.audit import service as audit
from zorgbericht.audit.models import AuditEvent
from zorgbericht.db import transaction, utcnow
from zorgbericht.delivery.models import OutboxMessage
from zorgbericht.runtime import Runtime
from zorgbericht.shares.models import PullJob, PullState, Share
from zorgbericht.staging import service as staging
from zorgbericht.staging.models import Study
from zorgbericht.tenants import service as tenants

pytestmark = pytest.mark.peers
CODE_URL = re.compile(r"^http://zb\.test/\?code=([0-9A-HJKMNP-TV-Z]{4}-){2}[0-9A-HJKMNP-TV-Z]{4}$")
PATIENT = {"PatientName": "JANSEN^PIETER", "PatientID": "PAT-0042", "PatientBirthDate": "19750312"}


@pytest.fixture
def rt(runtime: Runtime) -> Runtime:
    runtime.settings.public_url = "http://zb.test"
    return runtime


@pytest.fixture
def key(rt: Runtime, tenant_id: int) -> str:
    with transaction(rt.sessions) as db:
        tenant = tenants.get_tenant(session=db, slug="acme")
        return tenants.create_api_key(session=db, tenant=tenant, label="pacs")[0]


@pytest.fixture
def api(rt: Runtime, key: str) -> Iterator[TestClient]:
    with TestClient(create_app(runtime=rt)) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        yield client


def stage(
    rt: Runtime,
    tenant_id: int,
    folder: Path,
    *,
    settle: bool = True,
    patient: dict[str, str] | None = None,
    bsn: str | None = "123456782",
) -> str:
    uid = write_study(folder, series=1, slices=2, size=32, patient=patient or PATIENT, bsn=bsn)
    pipeline = Pipeline(settings=rt.settings, store=rt.store, sessions=rt.sessions)
    pipeline.start()
    try:
        import_path(
            path=folder, tenant_id=tenant_id, pipeline=pipeline, actor=audit.Actor("cli", "test")
        )
    finally:
        pipeline.close()
    if settle:
        with transaction(rt.sessions) as db:
            staging.settle_studies(session=db, quiet=timedelta(0), force_uids=[(tenant_id, uid)])
    return uid


def body(uids: list[str], **overrides: object) -> dict[str, object]:
    return {
        "study_uids": uids,
        "recipient": "patient",
        "delivery": "url",
        "phone": "0612345678",
        "language": "nl",
        **overrides,
    }


def events(rt: Runtime, share_id: int | None = None) -> list[AuditEvent]:
    with rt.sessions() as db:
        query = select(AuditEvent).order_by(AuditEvent.seq)
        if share_id is not None:
            query = query.where(AuditEvent.share_id == share_id)
        return list(db.scalars(query))


def test_a_share_without_language_takes_the_institutions(
    api: TestClient, rt: Runtime, tenant_id: int, tmp_path: Path
) -> None:
    uid = stage(rt, tenant_id, tmp_path / "s")
    with transaction(rt.sessions) as db:
        tenants.get_tenant(session=db, slug="acme").default_language = "en"
    request = body([uid])
    del request["language"]
    assert api.post("/api/v1/shares", json=request).json()["language"] == "en"


def test_url_share_of_a_stable_study_is_ready_with_a_code_link(
    api: TestClient, rt: Runtime, tenant_id: int, tmp_path: Path
) -> None:
    uid = stage(rt, tenant_id, tmp_path / "s")
    answer = api.post("/api/v1/shares", json=body([uid]))
    assert answer.status_code == 201, answer.text
    share = answer.json()
    assert share["state"] == "ready" and CODE_URL.match(share["url"])
    assert share["study_uids"] == [uid] and share["letter_url"] is None
    code = share["url"].split("=")[1]
    with rt.sessions() as db:
        row = db.get(Share, share["id"])
        assert row.phone == "+31612345678" and row.bsn_last3 == "782"
        assert code not in str(vars(row)) and row.code_hmac != code
        assert row.expires_at - row.created_at == timedelta(days=14)
    again = api.get(f"/api/v1/shares/{share['id']}").json()
    assert again["url"] is None and again["state"] == "ready"
    assert [e.event for e in events(rt, share["id"])][:2] == ["share.created", "share.ready"]


def test_email_share_sends_one_mail_without_patient_data_once_ready(
    api: TestClient, rt: Runtime, tenant_id: int, tmp_path: Path
) -> None:
    uid = stage(rt, tenant_id, tmp_path / "s", settle=False)
    created = api.post(
        "/api/v1/shares",
        json=body(
            [uid],
            delivery="email",
            email="Dr.Visser@Example.NL",
            recipient="provider",
            language="en",
        ),
    ).json()
    assert created["state"] == "pending" and created["url"] is None
    mail_dir = rt.settings.data_dir / "mail"
    with rt.sessions() as db:
        arrived = db.scalar(select(Study.last_activity_at).where(Study.study_uid == uid))
    worker.run_once(rt, now=arrived)  # the study is not quiet yet: nothing goes out
    assert not mail_dir.exists() or not list(mail_dir.glob("*.eml"))
    worker.run_once(rt, now=utcnow() + timedelta(minutes=5))
    assert api.get(f"/api/v1/shares/{created['id']}").json()["state"] == "ready"
    worker.run_once(rt, now=utcnow() + timedelta(minutes=10))
    [eml] = mail_dir.glob("*.eml")
    message = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    assert message["To"] == "Dr.Visser@example.nl"
    assert message["From"].addresses[0].display_name == "Acme Ziekenhuis"
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    for part in (text, html):
        assert "Acme Ziekenhuis" in part and "782" in part and "14 days" in part
        assert re.search(r"http://zb\.test/\?code=\w{4}-\w{4}-\w{4}", part)
        assert "confidential" in part and "date of birth" in part
        for secret in ("JANSEN", "PIETER", "PAT-0042", "1975", "123456782", "12-03"):
            assert secret not in part
    with rt.sessions() as db:
        sent = db.scalar(select(OutboxMessage))
        assert sent.state == "sent" and sent.body_text is None and sent.body_html is None
    assert "mail.sent" in [e.event for e in events(rt, created["id"])]


def test_letter_is_available_at_once_and_its_qr_code_is_the_link(
    api: TestClient, rt: Runtime, tenant_id: int, tmp_path: Path
) -> None:
    uid = stage(rt, tenant_id, tmp_path / "s", settle=False)
    created = api.post("/api/v1/shares", json=body([uid], delivery="letter")).json()
    assert created["state"] == "pending" and CODE_URL.match(created["url"])
    letter = api.get(created["letter_url"])
    assert letter.status_code == 200 and letter.content.startswith(b"%PDF")
    pdf = tmp_path / "letter.pdf"
    pdf.write_bytes(letter.content)
    subprocess.run(["pdftoppm", "-png", "-r", "150", str(pdf), str(tmp_path / "page")], check=True)
    scanned = subprocess.run(
        ["zbarimg", "-q", "--raw", str(tmp_path / "page-1.png")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert scanned == created["url"]
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True).stdout
    assert "Acme Ziekenhuis" in text and "782" in text and "14 dagen" in text
    assert "JANSEN" not in text and "PAT-0042" not in text


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"phone": "0470123456"}, "country code"),
        ({"phone": "+14155552671"}, "EU or EEA"),
        ({"phone": "0201234567"}, "not a mobile number"),
        ({"delivery": "email"}, "needs an email address"),
        ({"delivery": "email", "email": "not-an-address"}, "not a valid email address"),
        ({"recipient": "neighbour"}, "recipient"),
        ({"birth_date": "1999-01-01"}, "does not match"),
        ({"study_uids": []}, "study_uids"),
    ],
)
def test_bad_requests_get_a_422_that_says_what_to_fix(
    api: TestClient, rt: Runtime, tenant_id: int, tmp_path: Path, overrides: dict, words: str
) -> None:
    uid = stage(rt, tenant_id, tmp_path / "s")
    answer = api.post("/api/v1/shares", json=body([uid], **overrides))
    assert answer.status_code == 422
    assert words in answer.json()["detail"], answer.json()
    assert "0470123456" not in answer.text and "PAT-0042" not in answer.text
    [refused] = [e for e in events(rt) if e.event == "share.refused"]
    assert words in refused.details["reason"] and refused.outcome == 4


def test_studies_of_two_patients_are_refused_and_the_refusal_audited(
    api: TestClient, rt: Runtime, tenant_id: int, tmp_path: Path
) -> None:
    first = stage(rt, tenant_id, tmp_path / "a")
    other = stage(rt, tenant_id, tmp_path / "b", patient={**PATIENT, "PatientID": "PAT-0043"})
    answer = api.post("/api/v1/shares", json=body([first, other]))
    assert answer.status_code == 422 and "2 different patients" in answer.json()["detail"]
    unknown = api.post("/api/v1/shares", json=body(["1.2.3.999"]))
    assert unknown.status_code == 422 and "no PACS is configured" in unknown.json()["detail"]
    refused = [e for e in events(rt) if e.event == "share.refused"]
    assert len(refused) == 2 and all(e.outcome == 4 for e in refused)
    with rt.sessions() as db:
        assert db.scalar(select(Share.id)) is None


def test_no_key_is_401_and_another_tenants_share_is_404(
    api: TestClient, rt: Runtime, tenant_id: int, tmp_path: Path
) -> None:
    uid = stage(rt, tenant_id, tmp_path / "s")
    share = api.post("/api/v1/shares", json=body([uid], delivery="letter")).json()
    with transaction(rt.sessions) as db:
        other = tenants.create_tenant(session=db, slug="other", name="Other", ae_titles=["OTH"])
        other_key = tenants.create_api_key(session=db, tenant=other)[0]
    assert api.get("/api/v1/shares", headers={"Authorization": ""}).status_code == 401
    foreign = {"Authorization": f"Bearer {other_key}"}
    for method, path in [("GET", ""), ("GET", "/letter.pdf"), ("GET", "/audit"), ("DELETE", "")]:
        answer = api.request(method, f"/api/v1/shares/{share['id']}{path}", headers=foreign)
        assert answer.status_code == 404, (method, path)
    assert api.get("/api/v1/shares", headers=foreign).json() == []
    assert api.get("/api/v1/studies", headers=foreign).json() == []
    assert api.get(f"/api/v1/shares/{share['id']}").json()["state"] == "ready"


def test_revoke_stops_the_share_at_once(
    api: TestClient, rt: Runtime, tenant_id: int, tmp_path: Path
) -> None:
    uid = stage(rt, tenant_id, tmp_path / "s")
    share = api.post("/api/v1/shares", json=body([uid])).json()
    assert api.delete(f"/api/v1/shares/{share['id']}").status_code == 204
    assert api.delete(f"/api/v1/shares/{share['id']}").status_code == 204
    assert api.get(f"/api/v1/shares/{share['id']}").json()["state"] == "revoked"
    assert [s["id"] for s in api.get("/api/v1/shares", params={"state": "revoked"}).json()] == [
        share["id"]
    ]
    trail = api.get(f"/api/v1/shares/{share['id']}/audit").json()
    assert [e["event"] for e in trail].count("share.revoked") == 1


def test_expiry_and_purge_destroy_patient_data_but_keep_the_trail(
    api: TestClient, rt: Runtime, tenant_id: int, tmp_path: Path
) -> None:
    uid = stage(rt, tenant_id, tmp_path / "s")
    first = api.post("/api/v1/shares", json=body([uid], delivery="letter")).json()
    later = utcnow() + timedelta(days=7)
    with transaction(rt.sessions) as db:  # the same study shared again, a week later
        second = db.get(Share, api.post("/api/v1/shares", json=body([uid])).json()["id"])
        second.expires_at = later + timedelta(days=14)
    prefix = staging.study_prefix(tenant_id, uid)
    worker.run_once(rt, now=utcnow() + timedelta(days=14, seconds=1))
    assert api.get(f"/api/v1/shares/{first['id']}").json()["state"] == "expired"
    assert api.get(first["letter_url"]).status_code == 404
    with rt.sessions() as db:
        assert db.scalar(select(Study).where(Study.study_uid == uid)) is not None  # still needed
        gone = db.get(Share, first["id"])
        assert gone.phone is None and gone.birth_date is None and gone.patient_id is None
    worker.run_once(rt, now=later + timedelta(days=14, seconds=1))
    with rt.sessions() as db:
        assert db.scalar(select(Study).where(Study.study_uid == uid)) is None
    assert not any(True for _ in _listing(rt, prefix))
    trail = [e.event for e in events(rt)]
    assert trail.count("share.expired") == 2 and trail.count("study.purged") == 1
    worker.run_once(rt, now=later + timedelta(days=15))  # idempotent
    assert [e.event for e in events(rt)].count("study.purged") == 1
    with rt.sessions() as db:
        assert audit.verify(session=db).ok


def test_expired_share_is_expired_before_any_job_runs(
    api: TestClient, rt: Runtime, tenant_id: int, tmp_path: Path
) -> None:
    uid = stage(rt, tenant_id, tmp_path / "s")
    share = api.post("/api/v1/shares", json=body([uid])).json()
    with transaction(rt.sessions) as db:
        db.get(Share, share["id"]).expires_at = utcnow() - timedelta(seconds=1)
    assert api.get(f"/api/v1/shares/{share['id']}").json()["state"] == "expired"


def _listing(rt: Runtime, prefix: str) -> list[str]:
    root = getattr(rt.store, "root", None)
    if root is not None:
        folder = root / prefix
        return [str(p) for p in folder.rglob("*")] if folder.exists() else []
    client, bucket = rt.store.client, rt.store.bucket  # type: ignore[attr-defined]
    found = client.list_objects_v2(Bucket=bucket, Prefix=rt.store.prefix + prefix)  # type: ignore[attr-defined]
    return [o["Key"] for o in found.get("Contents", [])]


def _settle(rt: Runtime, tenant_id: int, uid: str) -> None:
    with transaction(rt.sessions) as db:
        staging.settle_studies(session=db, quiet=timedelta(0), force_uids=[(tenant_id, uid)])


def test_a_share_waits_for_its_pull_to_finish_with_every_instance(
    api: TestClient, rt: Runtime, tenant_id: int, tmp_path: Path
) -> None:
    uid = stage(rt, tenant_id, tmp_path / "s", settle=False)  # 2 instances arrived so far
    share = api.post("/api/v1/shares", json=body([uid])).json()
    with transaction(rt.sessions) as db:
        db.add(
            PullJob(
                tenant_id=tenant_id, study_uid=uid, expected_instances=5, state=PullState.pending
            )
        )
    _settle(rt, tenant_id, uid)  # quiet for a while: "stable", but the pull is not done
    worker.run_once(rt)
    assert api.get(f"/api/v1/shares/{share['id']}").json()["state"] == "pending"
    with transaction(rt.sessions) as db:
        db.scalar(select(PullJob)).state = PullState.done  # done, yet 2 of 5 instances
    worker.run_once(rt)
    assert api.get(f"/api/v1/shares/{share['id']}").json()["state"] == "pending"
    with transaction(rt.sessions) as db:
        db.scalar(select(PullJob)).expected_instances = 2
    worker.run_once(rt)
    assert api.get(f"/api/v1/shares/{share['id']}").json()["state"] == "ready"


def test_an_old_failed_pull_does_not_fail_a_share_of_the_study_sent_since(
    api: TestClient, rt: Runtime, tenant_id: int, tmp_path: Path
) -> None:
    uid = stage(rt, tenant_id, tmp_path / "s")
    with transaction(rt.sessions) as db:
        db.add(
            PullJob(
                tenant_id=tenant_id,
                study_uid=uid,
                state=PullState.failed,
                error="C-MOVE status 0xC000",
            )
        )
    share = api.post("/api/v1/shares", json=body([uid])).json()
    worker.run_once(rt)
    assert share["state"] == "ready"
    assert api.get(f"/api/v1/shares/{share['id']}").json()["state"] == "ready"


def test_a_study_sent_again_after_its_share_ended_waits_the_retention(
    api: TestClient, rt: Runtime, tenant_id: int, tmp_path: Path
) -> None:
    uid = stage(rt, tenant_id, tmp_path / "s")
    share = api.post("/api/v1/shares", json=body([uid])).json()
    api.delete(f"/api/v1/shares/{share['id']}")
    worker.run_once(rt)
    with rt.sessions() as db:
        assert db.scalar(select(Study).where(Study.study_uid == uid)) is None  # done with it
    write_study_again = stage(rt, tenant_id, tmp_path / "again")  # a new study, same patient
    with transaction(rt.sessions) as db:  # ...and the old one sent again by the PACS
        old = db.scalar(select(Study).where(Study.study_uid == write_study_again))
        old.study_uid = uid
    worker.run_once(rt)
    with rt.sessions() as db:
        assert db.scalar(select(Study).where(Study.study_uid == uid)) is not None


def test_no_mail_goes_out_for_a_share_past_its_end(
    api: TestClient, rt: Runtime, tenant_id: int, tmp_path: Path
) -> None:
    uid = stage(rt, tenant_id, tmp_path / "s")
    api.post("/api/v1/shares", json=body([uid], delivery="email", email="p@example.nl"))
    from zorgbericht.delivery import service as delivery

    delivery.send_due(
        sessions=rt.sessions,
        mailer=rt.mailer,
        sender="x@zb.test",
        now=utcnow() + timedelta(days=15),
    )
    assert not (rt.settings.data_dir / "mail").exists() or not list(
        (rt.settings.data_dir / "mail").glob("*.eml")
    )
    with rt.sessions() as db:
        assert db.scalar(select(OutboxMessage)).state == "failed"
    [given_up] = [e for e in events(rt) if e.event == "mail.failed"]
    assert "expired" in given_up.details["reason"]
