"""The NEN 7513 trail as a whole: every event of a share's life is written by the flow that
causes it, with the right code and fields and without secrets; it outlives the purge and is
checked and exported by the real command line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from dicom_ingest.synthetic import write_study
from tests.conftest import Node
from tests.dicom_client import store_files, wait_until
from tests.integration.recipient_flow import (
    BIRTH_DATE,
    Link,
    browser,
    create_link,
    csrf,
    last_sms_code,
    open_to_birth_date,
    share_row,
)
from tests.integration.test_shares import PATIENT, stage
from zorgbericht import worker
from zorgbericht.app import create_app
from zorgbericht.audit import service as audit
from zorgbericht.audit.models import AuditEvent
from zorgbericht.db import transaction, utcnow
from zorgbericht.delivery.mailer import MailerUnavailable
from zorgbericht.delivery.sms import SmsUnavailable
from zorgbericht.runtime import Runtime
from zorgbericht.staging import service as staging
from zorgbericht.staging.models import Instance, PreviewState, Series, Study
from zorgbericht.tenants import service as tenants

pytestmark = [pytest.mark.peers, pytest.mark.parametrize("storage", ["file"], indirect=True)]
R = "/api/v1/recipient"
ZB = str(Path(sys.executable).parent / "zorgbericht")
BSN = "123456782"
WRONG_DATE = "1980-01-01"

# The list of what the trail must hold, and the event each becomes. "Study pulled"
# needs the PACS peer: tests/integration/test_pull.py checks it against Orthanc; "admin
# viewing a share" from the portal: tests/integration/test_admin.py.
REQUIRED = {
    "study received": "dicom.instances.received",
    "share created": "share.created",
    "share refused": "share.refused",
    "mail queued": "mail.queued",
    "mail failed": "mail.failed",
    "mail sent": "mail.sent",
    "letter downloaded": "letter.downloaded",
    "link opened": "recipient.link_opened",
    "terms accepted": "recipient.terms_accepted",
    "birth date wrong": "recipient.birth_date_wrong",
    "birth date right": "recipient.birth_date_right",
    "birth date locked": "recipient.birth_date_locked",
    "SMS sent": "recipient.sms_sent",
    "SMS failed": "recipient.sms_failed",
    "code wrong": "recipient.code_wrong",
    "code right": "recipient.code_right",
    "code locked": "recipient.code_locked",
    "studies listed": "recipient.studies_listed",
    "image viewed": "recipient.image_viewed",
    "download started": "recipient.download_started",
    "download refused": "recipient.download_refused",
    "logout": "recipient.logout",
    "revoke": "share.revoked",
    "expiry": "share.expired",
    "purge": "share.purged",
    "study purged": "study.purged",
    "share viewed": "share.viewed",
    "trail exported": "audit.exported",
}
DICOM_CODES = {f"1101{n:02d}" for n in range(15)}


class RelayDown:
    def send(self, message: EmailMessage) -> None:
        raise MailerUnavailable("ConnectionRefusedError")


class ProviderDown:
    def send(self, *, to: str, body: str) -> str:
        raise SmsUnavailable("provider unreachable")


@pytest.fixture
def rt(runtime: Runtime) -> Runtime:
    runtime.settings.public_url = "http://zb.test"
    runtime.settings.daily_download_limit = 1
    return runtime


@pytest.fixture
def app(rt: Runtime) -> Iterator[FastAPI]:
    made = create_app(runtime=rt)
    with TestClient(made):
        yield made


@pytest.fixture
def api(rt: Runtime, app: FastAPI, tenant_id: int) -> Iterator[TestClient]:
    with transaction(rt.sessions) as db:
        tenant = tenants.get_tenant(session=db, slug="acme")
        key = tenants.create_api_key(session=db, tenant=tenant, label="pacs")[0]
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        yield client


def cli(rt: Runtime, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed command line on this test's database."""
    env = {
        **os.environ,
        "ZB_DATA_DIR": str(rt.settings.data_dir),
        "ZB_DATABASE_URL": rt.settings.resolved_database_url,
    }
    return subprocess.run([ZB, *args], env=env, capture_output=True, text=True, timeout=120)


def receive_study(node: Node, folder: Path) -> str:
    """C-STORE a small study of the test patient and wait until it is stable."""
    uid = write_study(folder, series=1, slices=2, size=32, patient=PATIENT, bsn=BSN)
    statuses = store_files(node.port, sorted(p for p in folder.rglob("*") if p.is_file()))
    assert statuses == [0, 0]

    def previewed() -> bool:
        with node.runtime.sessions() as db:
            states = db.scalars(
                select(Instance.preview_state)
                .join(Series)
                .join(Study)
                .where(Study.study_uid == uid)
            ).all()
            return states == [PreviewState.done] * 2

    wait_until(previewed)
    with transaction(node.runtime.sessions) as db:
        staging.settle_studies(session=db, quiet=timedelta(0), force_uids=[(node.tenant_id, uid)])
    return uid


def walk_the_gate_with_one_failure_each(rt: Runtime, client: TestClient, link: Link) -> None:
    open_to_birth_date(client, link.code)
    assert post(client, "birth-date", birth_date=WRONG_DATE).status_code == 400
    assert post(client, "birth-date", birth_date=BIRTH_DATE).status_code == 200
    rt.sms, working = ProviderDown(), rt.sms
    assert post(client, "sms-code/resend").status_code == 503
    rt.sms = working
    code = last_sms_code(rt)
    assert post(client, "sms-code", code=other(code)).status_code == 400
    assert post(client, "sms-code", code=code).status_code == 200


def view_and_download(client: TestClient) -> None:
    listing = client.get(f"{R}/studies").json()
    image = listing["studies"][0]["series"][0]["images"][0]
    assert client.get(image["preview_url"]).status_code == 200  # the viewer opened
    download = f"{R}/download?format=dicom&study=all"
    assert client.get(download).status_code == 200
    assert client.get(download).status_code == 429  # the limit is 1 in this test
    assert post(client, "logout").status_code == 204


def lock_by_birth_date(rt: Runtime, app: FastAPI, link: Link) -> None:
    client = browser(rt, app)
    open_to_birth_date(client, link.code)
    answers = [post(client, "birth-date", birth_date=WRONG_DATE).status_code for _ in range(5)]
    assert answers[-1] == 423


def lock_by_sms_code(rt: Runtime, app: FastAPI, link: Link) -> None:
    client = browser(rt, app)
    open_to_birth_date(client, link.code)
    assert post(client, "birth-date", birth_date=BIRTH_DATE).status_code == 200
    wrong = other(last_sms_code(rt))
    answers = [post(client, "sms-code", code=wrong).status_code for _ in range(5)]
    assert answers[-1] == 423


def post(client: TestClient, path: str, **body: object) -> object:
    return client.post(f"{R}/{path}", json=body or None, headers=csrf(client))


def other(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


def trail(rt: Runtime) -> list[AuditEvent]:
    with rt.sessions() as db:
        rows = list(db.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
        db.expunge_all()
    return rows


def test_a_shares_whole_life_is_in_the_trail_with_the_right_codes_and_no_secrets(
    rt: Runtime, app: FastAPI, api: TestClient, node: Node, tmp_path: Path
) -> None:
    uid = receive_study(node, tmp_path / "study")
    by_mail = api.post(
        "/api/v1/shares",
        json={
            "study_uids": [uid],
            "recipient": "patient",
            "delivery": "email",
            "email": "patient@example.nl",
            "phone": "0612345678",
        },
    ).json()
    assert api.post("/api/v1/shares", json={"study_uids": [uid], "phone": "x"}).status_code == 422
    letter = create_link(api, [uid], delivery="letter")
    assert api.get(f"/api/v1/shares/{letter.share_id}/letter.pdf").status_code == 200
    viewer, dob_lock, code_lock = (create_link(api, [uid]) for _ in range(3))
    assert api.get(f"/api/v1/shares/{viewer.share_id}").status_code == 200

    rt.mailer, relay = RelayDown(), rt.mailer
    worker.run_once(rt)  # ready; the relay is down
    rt.mailer = relay
    worker.run_once(rt, now=utcnow() + timedelta(hours=1))
    client = browser(rt, app)
    walk_the_gate_with_one_failure_each(rt, client, viewer)
    csrf_token, cookies = client.cookies["zb_csrf"], dict(client.cookies)
    view_and_download(client)
    lock_by_birth_date(rt, app, dob_lock)
    lock_by_sms_code(rt, app, code_lock)
    assert api.delete(f"/api/v1/shares/{dob_lock.share_id}").status_code == 204
    worker.run_once(rt, now=utcnow() + timedelta(days=15))  # expiry and purge
    exported = cli(rt, "audit", "export", "--tenant", "acme")
    assert exported.returncode == 0, exported.stderr

    rows = trail(rt)
    names = {r.event for r in rows}
    missing = {what: name for what, name in REQUIRED.items() if name not in names}
    assert not missing
    check_codes_and_fields(rows, viewer.share_id)
    assert PATIENT["PatientID"] in exported.stdout  # the export carries the trail itself
    everything = exported.stdout + json.dumps([r.details for r in rows])
    secrets = [viewer.code, letter.code, BIRTH_DATE, "19750312", BSN, csrf_token]
    secrets += list(cookies.values()) + ["patient@example.nl", "JANSEN", "612345678"]
    assert [s for s in secrets if s in everything] == []
    check_the_trail_outlives_the_purge(rt, rows, viewer.share_id)
    assert by_mail["id"] in {r.share_id for r in rows if r.event == "mail.sent"}


def check_codes_and_fields(rows: list[AuditEvent], share_id: int) -> None:
    """Each row carries its kind's DICOM code and action, and who acted from where."""
    kinds = {e.event_name: e for e in audit.Ev}
    for row in rows:
        assert (row.event_code, row.action) == (kinds[row.event].code, kinds[row.event].action)
        assert row.event_code in DICOM_CODES and row.occurred_at.tzinfo is not None
    recipient = [r for r in rows if r.share_id == share_id and r.actor_kind == "recipient"]
    assert recipient and all(
        re.fullmatch(r"recipient-session:[0-9]+", r.actor_id or "") and r.ip and r.user_agent
        for r in recipient
    )
    locks = [r for r in rows if r.event.endswith("_locked")]
    assert {r.event_code for r in locks} == {"110113"} and all(r.outcome == 8 for r in locks)
    downloads = [r for r in rows if r.event == "recipient.download_started"]
    assert [(r.event_code, r.action) for r in downloads] == [("110106", "R")]
    failures = {r.event: r.outcome for r in rows if r.event.endswith(("_wrong", "failed"))}
    assert all(outcome > 0 for outcome in failures.values()), failures


def check_the_trail_outlives_the_purge(rt: Runtime, rows: list[AuditEvent], share_id: int) -> None:
    """The share's patient data is gone; who saw it, when and from where is not."""
    share = share_row(rt, share_id)
    assert share.purged_at is not None and share.patient_id is None
    created = next(r for r in rows if r.share_id == share_id and r.event == "share.created")
    assert created.patient_id == PATIENT["PatientID"] and created.bsn_last3 == BSN[-3:]
    seen = [r for r in rows if r.share_id == share_id and r.event == "recipient.image_viewed"]
    assert seen and seen[0].ip and seen[0].occurred_at < share.purged_at
    with rt.sessions() as db:
        assert audit.verify(session=db).ok


def test_verify_on_the_command_line_names_a_changed_row_and_fails(
    rt: Runtime, api: TestClient, tenant_id: int, tmp_path: Path
) -> None:
    uid = stage(rt, tenant_id, tmp_path / "study")
    create_link(api, [uid])
    assert cli(rt, "audit", "verify").returncode == 0
    with rt.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE audit_event DISABLE TRIGGER audit_event_append_only"))
        else:
            conn.execute(text("DROP TRIGGER audit_event_no_update"))
        conn.execute(text("UPDATE audit_event SET ip = '203.0.113.9' WHERE seq = 3"))
    checked = cli(rt, "audit", "verify")
    assert checked.returncode != 0
    assert "broken at event 3" in checked.stdout + checked.stderr


def test_the_worker_removes_events_past_five_years_and_the_chain_still_verifies(
    rt: Runtime, app: FastAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    years_ago = utcnow() - timedelta(days=5 * 365 + 3)
    with monkeypatch.context() as clock:  # the trail refuses updates: its clock moves instead
        clock.setattr(audit, "utcnow", lambda: years_ago)
        with transaction(rt.sessions) as db:
            tenant = tenants.create_tenant(session=db, slug="acme", name="Acme", ae_titles=["X"])
            tenant_id, key = tenant.id, tenants.create_api_key(session=db, tenant=tenant)[0]
        uid = stage(rt, tenant_id, tmp_path / "study")
        api = TestClient(app, headers={"Authorization": f"Bearer {key}"})
        create_link(api, [uid])
    old = len(trail(rt))
    create_link(api, [uid])
    young = trail(rt)[old:]
    worker.run_once(rt)
    rows = trail(rt)
    pruned = [r for r in rows if r.event == "audit.pruned"]
    assert len(pruned) == 1 and pruned[0].details["removed"] == old
    assert [r.seq for r in rows[: len(young)]] == [r.seq for r in young]  # the young stay
    assert cli(rt, "audit", "verify").returncode == 0
