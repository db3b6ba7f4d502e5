"""Recipient gate and session security (DESIGN §5), through the HTTP API on both databases."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from tests.integration.recipient_flow import (
    BIRTH_DATE,
    Link,
    age_sessions,
    browser,
    create_link,
    csrf,
    last_sms_code,
    open_to_birth_date,
    share_row,
    sign_in,
    sms_messages,
)
from tests.integration.test_shares import stage
from tests.twilio_standin import TwilioStandIn
from zorgbericht.app import create_app
from zorgbericht.audit.models import AuditEvent
from zorgbericht.db import transaction, utcnow
from zorgbericht.recipients.models import RecipientSession, SmsChallenge
from zorgbericht.runtime import Runtime
from zorgbericht.shares.models import Share
from zorgbericht.tenants import service as tenants

pytestmark = [pytest.mark.peers, pytest.mark.parametrize("storage", ["file"], indirect=True)]
R = "/api/v1/recipient"
WRONG_DATE = "1980-01-01"


@pytest.fixture
def rt(runtime: Runtime) -> Runtime:
    runtime.settings.public_url = "http://zb.test"
    return runtime


@pytest.fixture
def app(rt: Runtime) -> Iterator[FastAPI]:
    made = create_app(runtime=rt)
    with TestClient(made):  # runs the lifespan once; every visitor's client shares its state
        yield made


@pytest.fixture
def api(rt: Runtime, app: FastAPI, tenant_id: int) -> Iterator[TestClient]:
    with transaction(rt.sessions) as db:
        key = tenants.create_api_key(
            session=db, tenant=tenants.get_tenant(session=db, slug="acme"), label="pacs"
        )[0]
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        yield client


@pytest.fixture
def link(api: TestClient, rt: Runtime, tenant_id: int, tmp_path: Path) -> Link:
    uid = stage(rt, tenant_id, tmp_path / "study")
    made = create_link(api, [uid])
    from zorgbericht import worker

    worker.run_once(rt)
    assert share_row(rt, made.share_id).state == "ready"
    return made


def visitor(rt: Runtime, app: FastAPI) -> TestClient:
    return browser(rt, app)


def birth_date(client: TestClient, value: str) -> object:
    return client.post(f"{R}/birth-date", json={"birth_date": value}, headers=csrf(client))


# --- the link ------------------------------------------------------------------------


def test_link_moves_the_code_into_host_cookies_and_redirects_without_it(
    rt: Runtime, app: FastAPI, link: Link
) -> None:
    client = visitor(rt, app)
    answer = client.get(f"/?code={link.code}", follow_redirects=False)
    # A page of our own moves on to "/" (a 303 would lose the Strict cookie after a
    # cross-site click); its script replaces the history entry that holds the code.
    assert answer.status_code == 200
    assert '<script src="/static/js/continue.js"></script>' in answer.text
    assert 'content="0;url=/"' in answer.text and link.code not in answer.text
    assert 'location.replace("/")' in client.get("/static/js/continue.js").text
    cookies = answer.headers.get_list("set-cookie")
    session_cookie = next(c for c in cookies if c.startswith("__Host-zb_session="))
    flags = {part.strip().lower() for part in session_cookie.split(";")[1:]}
    assert {"secure", "httponly", "samesite=strict", "path=/"} <= flags
    assert not any(f.startswith("domain") for f in flags)
    csrf_cookie = next(c for c in cookies if c.startswith("zb_csrf="))
    assert "secure" in csrf_cookie.lower() and "httponly" not in csrf_cookie.lower()
    assert link.code not in " ".join(cookies)
    page = client.get("/")
    assert page.status_code == 200 and 'data-step="terms"' in page.text


def test_session_id_is_128_random_bits_stored_only_as_a_hash(
    rt: Runtime, app: FastAPI, link: Link
) -> None:
    client = visitor(rt, app)
    client.post(f"{R}/open", json={"code": link.code})
    token = client.cookies["__Host-zb_session"]
    assert len(token) >= 22  # 16 random bytes, base64url
    with rt.sessions() as db:
        stored = db.scalars(select(RecipientSession.token_hash)).all()
    assert stored == [hashlib.sha256(token.encode()).hexdigest()]


@pytest.mark.parametrize("kind", ["valid", "unknown", "expired", "revoked"])
def test_unknown_expired_and_valid_codes_answer_alike_until_the_birth_date(
    rt: Runtime, app: FastAPI, api: TestClient, link: Link, kind: str
) -> None:
    code = {"unknown": "ABCD-EFGH-JKMN"}.get(kind, link.code)
    if kind == "revoked":
        assert api.delete(f"/api/v1/shares/{link.share_id}").status_code == 204
    if kind == "expired":
        with transaction(rt.sessions) as db:
            db.get(Share, link.share_id).expires_at = utcnow() - timedelta(minutes=1)
    client = visitor(rt, app)
    opened = client.post(f"{R}/open", json={"code": code})
    assert opened.status_code == 200
    assert set(opened.json()) == {"csrf_token", "step"} and opened.json()["step"] == "terms"
    terms = client.post(f"{R}/terms", json={"accepted": True}, headers=csrf(client))
    assert (terms.status_code, terms.json()) == (200, {"step": "birth_date"})
    page = client.get("/")
    assert 'data-step="birth_date"' in page.text and "Acme" not in page.text


def test_malformed_code_is_a_422_that_does_not_echo_it(rt: Runtime, app: FastAPI) -> None:
    answer = visitor(rt, app).post(f"{R}/open", json={"code": "hello-world!"})
    assert answer.status_code == 422 and "hello" not in answer.text


def test_every_post_after_open_needs_the_csrf_header(rt: Runtime, app: FastAPI, link: Link) -> None:
    client = visitor(rt, app)
    client.post(f"{R}/open", json={"code": link.code})
    for path, body in (
        ("/terms", {"accepted": True}),
        ("/birth-date", {"birth_date": BIRTH_DATE}),
        ("/sms-code", {"code": "123456"}),
        ("/sms-code/resend", None),
        ("/logout", None),
    ):
        assert client.post(R + path, json=body).status_code == 403, path
        wrong = {"X-CSRF-Token": "0" * 32}
        assert client.post(R + path, json=body, headers=wrong).status_code == 403, path


# --- birth date ------------------------------------------------------------------------


def test_birth_date_needs_the_terms_first(rt: Runtime, app: FastAPI, link: Link) -> None:
    client = visitor(rt, app)
    client.post(f"{R}/open", json={"code": link.code})
    assert birth_date(client, BIRTH_DATE).status_code == 409
    assert sms_messages(rt) == []


def test_fifth_wrong_birth_date_locks_the_share_for_every_browser(
    rt: Runtime, app: FastAPI, link: Link
) -> None:
    answers = []
    for _ in range(5):  # a new browser each time: the count is the share's, not the browser's
        client = visitor(rt, app)
        open_to_birth_date(client, link.code)
        answers.append(birth_date(client, WRONG_DATE))
    assert [a.status_code for a in answers] == [400, 400, 400, 400, 423]
    assert [a.json().get("attempts_left") for a in answers[:4]] == [4, 3, 2, 1]
    fresh = visitor(rt, app)
    open_to_birth_date(fresh, link.code)
    assert birth_date(fresh, BIRTH_DATE).status_code == 423  # even the right date, for 24 h
    assert sms_messages(rt) == []
    locked_until = share_row(rt, link.share_id).locked_until
    assert locked_until is not None
    assert timedelta(hours=23, minutes=59) < locked_until - utcnow() <= timedelta(hours=24)
    with transaction(rt.sessions) as db:
        db.get(Share, link.share_id).locked_until = utcnow() - timedelta(seconds=1)
    assert birth_date(fresh, BIRTH_DATE).status_code == 200


def test_a_right_birth_date_does_not_wipe_earlier_failures(
    rt: Runtime, app: FastAPI, link: Link
) -> None:
    client = visitor(rt, app)
    open_to_birth_date(client, link.code)
    assert [birth_date(client, WRONG_DATE).status_code for _ in range(4)] == [400] * 4
    assert birth_date(client, BIRTH_DATE).status_code == 200  # the patient signs in
    other = visitor(rt, app)
    open_to_birth_date(other, link.code)
    assert birth_date(other, WRONG_DATE).status_code == 423


def test_failures_older_than_a_day_no_longer_count(rt: Runtime, app: FastAPI, link: Link) -> None:
    client = visitor(rt, app)
    open_to_birth_date(client, link.code)
    assert [birth_date(client, WRONG_DATE).status_code for _ in range(4)] == [400] * 4
    with transaction(rt.sessions) as db:
        db.get(Share, link.share_id).dob_failed_at = utcnow() - timedelta(hours=25)
    answer = birth_date(client, WRONG_DATE)
    assert answer.status_code == 400 and answer.json()["attempts_left"] == 4


def test_an_unknown_code_locks_after_five_dates_like_a_real_one(
    rt: Runtime, app: FastAPI, link: Link
) -> None:
    statuses = []
    for _ in range(6):
        client = visitor(rt, app)
        open_to_birth_date(client, "ZZZZ-ZZZZ-ZZZZ")
        statuses.append(birth_date(client, BIRTH_DATE).status_code)
    assert statuses == [400, 400, 400, 400, 423, 423]


def test_right_birth_date_sends_a_six_digit_sms_without_patient_data(
    rt: Runtime, app: FastAPI, link: Link
) -> None:
    client = visitor(rt, app)
    open_to_birth_date(client, link.code)
    answer = birth_date(client, BIRTH_DATE)
    assert answer.status_code == 200
    assert answer.json() == {
        "sms_sent": True,
        "step": "sms",
        "phone_hint": "•• 78",
        "institution": "Acme Ziekenhuis",
    }
    [message] = sms_messages(rt)
    assert set(message) == {"to", "body"} and message["to"] == "+31612345678"
    assert re.findall(r"\d+", message["body"]) in ([last_sms_code(rt), "5"], [last_sms_code(rt)])
    for private in ("JANSEN", "PAT-0042", "1975", "Acme"):
        assert private not in message["body"]


@pytest.mark.parametrize("kind", ["expired", "revoked"])
def test_an_ended_share_says_so_at_the_birth_date_step(
    rt: Runtime, app: FastAPI, api: TestClient, link: Link, kind: str
) -> None:
    client = visitor(rt, app)
    open_to_birth_date(client, link.code)
    if kind == "revoked":
        api.delete(f"/api/v1/shares/{link.share_id}")
    else:
        with transaction(rt.sessions) as db:
            db.get(Share, link.share_id).expires_at = utcnow() - timedelta(minutes=1)
    answer = birth_date(client, BIRTH_DATE)
    assert answer.status_code == 410
    assert answer.json()["reason"] == kind and "new" in answer.json()["detail"]
    assert "institution" not in answer.json()  # not named before the birth date is checked


# --- SMS code --------------------------------------------------------------------------


def _at_sms_step(rt: Runtime, app: FastAPI, link: Link) -> TestClient:
    client = visitor(rt, app)
    open_to_birth_date(client, link.code)
    assert birth_date(client, BIRTH_DATE).status_code == 200
    return client


def _code(client: TestClient, code: str) -> object:
    return client.post(f"{R}/sms-code", json={"code": code}, headers=csrf(client))


def _other(code: str) -> str:
    return f"{(int(code) + 1) % 10**6:06d}"


def test_sms_code_is_stored_hashed_and_works_once(rt: Runtime, app: FastAPI, link: Link) -> None:
    client = _at_sms_step(rt, app, link)
    code = last_sms_code(rt)
    with rt.sessions() as db:
        [challenge] = db.scalars(select(SmsChallenge)).all()
    assert code not in challenge.code_hmac and len(challenge.code_hmac) == 64
    before = client.cookies["__Host-zb_session"]
    assert _code(client, code).status_code == 200
    assert client.cookies["__Host-zb_session"] != before  # a new id once signed in
    assert client.get(f"{R}/studies").status_code == 200
    with rt.sessions() as db:  # used: checked again in the same session, it is refused
        session_row = db.scalars(select(RecipientSession)).one()
    with transaction(rt.sessions) as db:
        db.get(RecipientSession, session_row.id).signed_in_at = None
    answer = _code(client, code)
    assert answer.status_code == 400 and answer.json()["expired"] is True


def test_a_code_takes_five_checks_at_most(rt: Runtime, app: FastAPI, link: Link) -> None:
    client = _at_sms_step(rt, app, link)
    code = last_sms_code(rt)
    with transaction(rt.sessions) as db:
        db.execute(update(SmsChallenge).values(checks=5))
    answer = _code(client, code)
    assert answer.status_code == 400 and answer.json()["expired"] is True


def test_the_old_session_id_is_worthless_after_sign_in(
    rt: Runtime, app: FastAPI, link: Link
) -> None:
    client = _at_sms_step(rt, app, link)
    before = client.cookies["__Host-zb_session"]
    _code(client, last_sms_code(rt))
    thief = visitor(rt, app)
    thief.cookies.set("__Host-zb_session", before, domain="zb.test")
    assert thief.get(f"{R}/studies").status_code == 401
    thief.cookies.set("__Host-zb_session", client.cookies["__Host-zb_session"], domain="zb.test")
    assert thief.get(f"{R}/studies").status_code == 200  # the new id is what works


def test_sms_code_expires_after_five_minutes(rt: Runtime, app: FastAPI, link: Link) -> None:
    client = _at_sms_step(rt, app, link)
    with transaction(rt.sessions) as db:
        [challenge] = db.scalars(select(SmsChallenge)).all()
        assert challenge.expires_at - challenge.created_at == timedelta(minutes=5)
        db.execute(update(SmsChallenge).values(expires_at=utcnow() - timedelta(seconds=1)))
    answer = _code(client, last_sms_code(rt))
    assert answer.status_code == 400 and answer.json()["expired"] is True


def test_resend_makes_a_new_code_and_keeps_the_failure_count(
    rt: Runtime, app: FastAPI, link: Link
) -> None:
    client = _at_sms_step(rt, app, link)
    first = last_sms_code(rt)
    assert _code(client, _other(first)).json()["attempts_left"] == 4
    assert _code(client, _other(first)).json()["attempts_left"] == 3
    assert client.post(f"{R}/sms-code/resend", headers=csrf(client)).status_code == 200
    second = last_sms_code(rt)
    assert len(sms_messages(rt)) == 2
    old = _code(client, first)
    if first != second:
        assert old.status_code == 400 and old.json()["attempts_left"] == 2
    assert _code(client, second).status_code == 200


def test_fifth_wrong_sms_code_locks_the_share(rt: Runtime, app: FastAPI, link: Link) -> None:
    client = _at_sms_step(rt, app, link)
    code = last_sms_code(rt)
    statuses = [_code(client, _other(code)).status_code for _ in range(5)]
    assert statuses == [400, 400, 400, 400, 423]
    assert _code(client, code).status_code == 423
    other = visitor(rt, app)
    open_to_birth_date(other, link.code)
    assert birth_date(other, BIRTH_DATE).status_code == 423


def test_at_most_five_sms_per_share_per_day(rt: Runtime, app: FastAPI, link: Link) -> None:
    first = _at_sms_step(rt, app, link)
    statuses = [
        first.post(f"{R}/sms-code/resend", headers=csrf(first)).status_code for _ in range(4)
    ]
    assert statuses == [200, 200, 200, 200]
    refused = first.post(f"{R}/sms-code/resend", headers=csrf(first))
    assert refused.status_code == 429 and refused.json()["reason"] == "sms_limit"
    other = visitor(rt, app)  # another browser: still the same share's quota
    open_to_birth_date(other, link.code)
    assert birth_date(other, BIRTH_DATE).status_code == 429
    assert len(sms_messages(rt)) == 5


# --- sessions --------------------------------------------------------------------------


def test_session_ends_after_thirty_idle_minutes(rt: Runtime, app: FastAPI, link: Link) -> None:
    client = visitor(rt, app)
    sign_in(client, rt, link.code)
    age_sessions(rt, last_seen_at=utcnow() - timedelta(minutes=29))
    assert client.get(f"{R}/studies").status_code == 200
    age_sessions(rt, last_seen_at=utcnow() - timedelta(minutes=31))
    assert client.get(f"{R}/studies").status_code == 401


def test_session_ends_after_twelve_hours_however_active(
    rt: Runtime, app: FastAPI, link: Link
) -> None:
    client = visitor(rt, app)
    sign_in(client, rt, link.code)
    age_sessions(rt, created_at=utcnow() - timedelta(hours=12, minutes=1))
    assert client.get(f"{R}/studies").status_code == 401


def test_logout_ends_the_session(rt: Runtime, app: FastAPI, link: Link) -> None:
    client = visitor(rt, app)
    sign_in(client, rt, link.code)
    token = client.cookies["__Host-zb_session"]
    assert client.post(f"{R}/logout", headers=csrf(client)).status_code == 204
    client.cookies.set("__Host-zb_session", token, domain="zb.test")
    assert client.get(f"{R}/studies").status_code == 401


def test_revoke_ends_a_signed_in_recipient_at_once(
    rt: Runtime, app: FastAPI, api: TestClient, link: Link
) -> None:
    client = visitor(rt, app)
    sign_in(client, rt, link.code)
    assert client.get(f"{R}/studies").status_code == 200
    api.delete(f"/api/v1/shares/{link.share_id}")
    answer = client.get(f"{R}/studies")
    assert answer.status_code == 410 and answer.json()["reason"] == "revoked"


def test_per_address_throttle_is_a_second_line(rt: Runtime, app: FastAPI, link: Link) -> None:
    rt.settings.recipient_ip_limit = 6
    client = visitor(rt, app)
    statuses = [
        client.post(f"{R}/open", json={"code": "ABCD-EFGH-JKMN"}).status_code for _ in range(7)
    ]
    assert statuses == [200] * 6 + [429]
    answer = client.post(f"{R}/open", json={"code": link.code})
    assert answer.status_code == 429 and int(answer.headers["retry-after"]) > 0
    assert answer.json()["reason"] == "throttled"
    with rt.sessions() as db:
        alerts = db.scalars(
            select(AuditEvent).where(AuditEvent.event == "recipient.throttled")
        ).all()
    assert len(alerts) == 1 and alerts[0].event_code == "110113"


# --- what a signed-in recipient sees ---------------------------------------------------


def test_pending_share_is_being_prepared_not_an_error(
    rt: Runtime, app: FastAPI, api: TestClient, tenant_id: int, tmp_path: Path
) -> None:
    uid = stage(rt, tenant_id, tmp_path / "busy", settle=False)
    pending = create_link(api, [uid])
    client = visitor(rt, app)
    sign_in(client, rt, pending.code)
    answer = client.get(f"{R}/studies")
    assert answer.status_code == 200
    assert answer.json()["state"] == "pending" and answer.json()["studies"] == []


def test_study_list_and_images_of_the_share_only(
    rt: Runtime, app: FastAPI, api: TestClient, link: Link, tenant_id: int, tmp_path: Path
) -> None:
    client = visitor(rt, app)
    sign_in(client, rt, link.code)
    listed = client.get(f"{R}/studies").json()
    assert listed["state"] == "ready" and listed["downloads_left"] == 10
    [study] = listed["studies"]
    assert study["study_uid"] == link.study_uid and study["modalities"] == ["CT"]
    images = [i for s in study["series"] for i in s["images"]]
    assert len(images) == 2
    thumb = client.get(images[0]["thumbnail_url"])
    assert thumb.headers["content-type"] == "image/jpeg" and thumb.content[:2] == b"\xff\xd8"
    assert client.get(images[0]["preview_url"]).status_code == 200
    assert client.get(images[0]["preview_url"] + "?frame=1").status_code == 404
    other_uid = stage(rt, tenant_id, tmp_path / "other")
    other = create_link(api, [other_uid])
    from zorgbericht import worker

    worker.run_once(rt)
    stranger = visitor(rt, app)
    sign_in(stranger, rt, other.code)
    theirs = stranger.get(f"{R}/studies").json()["studies"][0]["series"][0]["images"][0]
    assert client.get(theirs["preview_url"]).status_code == 404
    assert visitor(rt, app).get(images[0]["preview_url"]).status_code == 401


def test_headers_on_pages_api_and_images(rt: Runtime, app: FastAPI, link: Link) -> None:
    client = visitor(rt, app)
    sign_in(client, rt, link.code)
    image = client.get(f"{R}/studies").json()["studies"][0]["series"][0]["images"][0]
    for path in ("/", "/terms", f"{R}/studies", image["preview_url"]):
        headers = client.get(path).headers
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp, path
        for directive in ("object-src 'none'", "base-uri 'none'", "frame-ancestors 'none'"):
            assert directive in csp, path
        assert headers["strict-transport-security"].startswith("max-age=31536000"), path
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["referrer-policy"] == "no-referrer", path
        assert headers["cache-control"] == "no-store", path


def test_pages_load_nothing_from_another_site(rt: Runtime, app: FastAPI, link: Link) -> None:
    client = visitor(rt, app)
    client.get(f"/?code={link.code}")
    for path in ("/", "/terms", "/?lang=en"):
        html = client.get(path).text
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), path
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), path  # no inline script
        assert not re.search(r"""\son[a-z]+\s*=""", html), path  # no inline handlers
        assert "style=" not in html, path


def test_the_trail_records_the_gate_but_never_codes_or_birth_dates(
    rt: Runtime, app: FastAPI, link: Link
) -> None:
    client = visitor(rt, app)
    open_to_birth_date(client, link.code)
    birth_date(client, WRONG_DATE)
    birth_date(client, BIRTH_DATE)
    code = last_sms_code(rt)
    _code(client, _other(code))
    _code(client, code)
    client.get(f"{R}/studies")
    csrf_token = client.cookies["zb_csrf"]
    client.post(f"{R}/logout", headers=csrf(client))
    with rt.sessions() as db:
        rows = db.scalars(select(AuditEvent).where(AuditEvent.share_id == link.share_id)).all()
    names = [r.event for r in rows]
    for expected in (
        "recipient.link_opened",
        "recipient.terms_accepted",
        "recipient.birth_date_wrong",
        "recipient.birth_date_right",
        "recipient.sms_sent",
        "recipient.code_wrong",
        "recipient.code_right",
        "recipient.studies_listed",
        "recipient.logout",
    ):
        assert expected in names
    recipient_rows = [r for r in rows if r.actor_kind == "recipient"]
    assert all(r.actor_id and r.actor_id.startswith("recipient-session:") for r in recipient_rows)
    assert all(r.ip for r in recipient_rows)
    text = " ".join(f"{r.details} {r.actor_id} {r.user_agent}" for r in rows)
    for secret in (link.code, code, BIRTH_DATE, "19750312", csrf_token):
        assert secret not in text


# --- SMS through Twilio ----------------------------------------------------------------


def test_sms_code_travels_through_twilio(
    rt: Runtime, app: FastAPI, link: Link, twilio_standin: TwilioStandIn
) -> None:
    rt.sms = twilio_standin.sender()
    client = _at_sms_step(rt, app, link)
    [sent] = twilio_standin.received
    assert sent.to == "+31612345678"
    code = re.search(r"\b(\d{6})\b", sent.body or "")
    assert code is not None and sms_messages(rt) == []
    assert _code(client, code.group(1)).status_code == 200


def test_sms_provider_down_is_a_503_that_costs_no_quota(
    rt: Runtime, app: FastAPI, link: Link, twilio_standin: TwilioStandIn
) -> None:
    rt.sms = twilio_standin.sender()
    twilio_standin.status = 503
    client = visitor(rt, app)
    open_to_birth_date(client, link.code)
    answer = birth_date(client, BIRTH_DATE)
    assert answer.status_code == 503 and "SMS" in answer.json()["detail"]
    with rt.sessions() as db:
        assert db.scalars(select(SmsChallenge)).all() == []
        failed = db.scalars(
            select(AuditEvent).where(AuditEvent.event == "recipient.sms_failed")
        ).all()
    assert len(failed) == 1
    twilio_standin.status = None
    assert client.post(f"{R}/sms-code/resend", headers=csrf(client)).status_code == 200
