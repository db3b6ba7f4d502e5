"""Helpers for recipient tests: a staged share, a browser-like client, the SMS folder."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import select, update

from zorgbericht.db import transaction
from zorgbericht.recipients.models import RecipientSession
from zorgbericht.runtime import Runtime
from zorgbericht.shares.models import Share

BIRTH_DATE = "1975-03-12"  # PatientBirthDate of tests.integration.test_shares.PATIENT
CODE_IN_URL = re.compile(r"code=([0-9A-Z-]{14})")


@dataclass
class Link:
    share_id: int
    code: str
    study_uid: str


def create_link(api: TestClient, study_uids: list[str], **overrides: object) -> Link:
    """Create a URL share through the share API and return its id and code."""
    request = {
        "study_uids": study_uids,
        "recipient": "patient",
        "delivery": "url",
        "phone": "0612345678",
        "language": "nl",
        **overrides,
    }
    answer = api.post("/api/v1/shares", json=request)
    assert answer.status_code == 201, answer.text
    found = CODE_IN_URL.search(answer.json()["url"])
    assert found
    return Link(answer.json()["id"], found.group(1), study_uids[0])


def browser(rt: Runtime, app: object) -> TestClient:
    """A client on https, so the ``Secure`` cookies travel as in a real browser."""
    return TestClient(app, base_url="https://zb.test")  # type: ignore[arg-type]


def csrf(client: TestClient) -> dict[str, str]:
    return {"X-CSRF-Token": client.cookies.get("zb_csrf", "")}


def sms_messages(rt: Runtime) -> list[dict[str, str]]:
    folder = rt.settings.data_dir / "sms"
    return [json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json"))]


def last_sms_code(rt: Runtime) -> str:
    found = re.search(r"\b(\d{6})\b", sms_messages(rt)[-1]["body"])
    assert found, "no 6-digit code in the last SMS"
    return found.group(1)


def open_to_birth_date(client: TestClient, code: str) -> None:
    assert client.post("/api/v1/recipient/open", json={"code": code}).status_code == 200
    answer = client.post("/api/v1/recipient/terms", json={"accepted": True}, headers=csrf(client))
    assert answer.status_code == 200, answer.text


def sign_in(client: TestClient, rt: Runtime, code: str, birth_date: str = BIRTH_DATE) -> None:
    """Walk the whole gate: link, terms, birth date, SMS code."""
    open_to_birth_date(client, code)
    answer = client.post(
        "/api/v1/recipient/birth-date", json={"birth_date": birth_date}, headers=csrf(client)
    )
    assert answer.status_code == 200, answer.text
    answer = client.post(
        "/api/v1/recipient/sms-code", json={"code": last_sms_code(rt)}, headers=csrf(client)
    )
    assert answer.status_code == 200, answer.text


def age_sessions(rt: Runtime, **columns: object) -> None:
    """Move every recipient session's timestamps (the clock the timeouts read)."""
    with transaction(rt.sessions) as db:
        db.execute(update(RecipientSession).values(**columns))


def share_row(rt: Runtime, share_id: int) -> Share:
    with rt.sessions() as db:
        share = db.scalar(select(Share).where(Share.id == share_id))
        assert share is not None
        db.expunge(share)
        return share
