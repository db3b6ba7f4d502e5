"""The admin portal over HTTP on both databases: tenant isolation, filters, timeline, actions."""

from __future__ import annotations

import csv
import email
import email.policy
import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from tests.integration.recipient_flow import (
    BIRTH_DATE,
    CODE_IN_URL,
    browser,
    create_link,
    csrf,
    open_to_birth_date,
    sign_in,
    sms_messages,
)
from tests.integration.test_shares import stage
from tests.routes import app_routes
from zorgbericht import worker
from zorgbericht.admin import service
from zorgbericht.app import create_app
from zorgbericht.audit import service as audit
from zorgbericht.audit.models import AuditEvent
from zorgbericht.bsn import is_valid_bsn
from zorgbericht.db import transaction, utcnow
from zorgbericht.delivery.models import OutboxMessage
from zorgbericht.recipients.models import RecipientSession
from zorgbericht.runtime import Runtime
from zorgbericht.shares.models import Share
from zorgbericht.staff import service as staff
from zorgbericht.tenants import service as tenants
from zorgbericht.web.texts import TEXTS

pytestmark = [pytest.mark.peers, pytest.mark.parametrize("storage", ["file"], indirect=True)]
R = "/api/v1/recipient"
PASSWORD = "correct horse battery"
ADMIN, STAFF, OTHER_ADMIN = "beheer@acme.nl", "radioloog@acme.nl", "beheer@zuid.nl"
PATIENT_ID = "PAT-0042"
WRONG_DATE = "1980-01-01"


@dataclass
class World:
    rt: Runtime
    app: FastAPI
    api: TestClient
    tenant_id: int
    other_tenant_id: int
    admin_id: int
    staff_id: int
    other_admin_id: int
    study_uid: str


@pytest.fixture
def world(runtime: Runtime, tenant_id: int, tmp_path: Path) -> Iterator[World]:
    runtime.settings.public_url = "http://zb.test"
    with transaction(runtime.sessions) as db:
        acme = tenants.get_tenant(session=db, slug="acme")
        zuid = tenants.create_tenant(session=db, slug="zuid", name="Zuid MC", ae_titles=["ZUID"])
        made = {
            mail: tenants.create_user(
                session=db, tenant=owner, email=mail, password=PASSWORD, role=role, name=name
            ).id
            for mail, owner, role, name in (
                (ADMIN, acme, "admin", "Anna Beheer"),
                (STAFF, acme, "staff", "Rob Radioloog"),
                (OTHER_ADMIN, zuid, "admin", "Zoë Zuid"),
            )
        }
        key = tenants.create_api_key(session=db, tenant=acme, label="pacs")[0]
        other_tenant_id = zuid.id
    uid = stage(runtime, tenant_id, tmp_path / "study")
    app = create_app(runtime=runtime)
    with TestClient(app) as api:
        api.headers["Authorization"] = f"Bearer {key}"
        yield World(
            runtime,
            app,
            api,
            tenant_id,
            other_tenant_id,
            made[ADMIN],
            made[STAFF],
            made[OTHER_ADMIN],
            uid,
        )


def portal(world: World, mail: str | None) -> TestClient:
    """A browser-like client signed in to the staff portal as ``mail`` (None: not at all)."""
    client = TestClient(world.app, base_url="https://zb.test", follow_redirects=False)
    if mail:
        answer = client.post("/staff/login", data={"email": mail, "password": PASSWORD})
        assert answer.status_code == 303, answer.text
    return client


def token(world: World, client: TestClient) -> str:
    secret = world.rt.settings.secret_key.get_secret_value()
    return staff.csrf_token(cookie=client.cookies.get(staff.COOKIE) or "", secret=secret)


def listed_ids(html: str) -> set[int]:
    return {int(n) for n in re.findall(r'<a href="/admin/shares/(\d+)" aria-label=', html)}


def measure(html: str, key: str) -> int:
    found = re.search(rf'data-measure="{key}">(\d+)<', html)
    assert found, key
    return int(found.group(1))


def trail(world: World, share_id: int | None = None, event: str | None = None) -> list[AuditEvent]:
    with world.rt.sessions() as db:
        query = select(AuditEvent).order_by(AuditEvent.seq)
        if share_id is not None:
            query = query.where(AuditEvent.share_id == share_id)
        if event is not None:
            query = query.where(AuditEvent.event == event)
        return list(db.scalars(query))


def share_of(world: World, share_id: int) -> Share:
    with world.rt.sessions() as db:
        share = db.get(Share, share_id)
        assert share is not None
        db.expunge(share)
        return share


def email_share(world: World, **overrides: object) -> int:
    request = {
        "study_uids": [world.study_uid],
        "recipient": "patient",
        "delivery": "email",
        "email": "jan.jansen@example.nl",
        "phone": "0612345678",
        "language": "nl",
        **overrides,
    }
    answer = world.api.post("/api/v1/shares", json=request)
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


def mails(world: World) -> list[email.message.EmailMessage]:
    folder = world.rt.settings.data_dir / "mail"
    return [
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
        for p in sorted(folder.glob("*.eml"), key=lambda p: p.stat().st_mtime_ns)
    ]


def code_in(message: email.message.EmailMessage) -> str:
    found = CODE_IN_URL.search(message.get_body(("plain",)).get_content())
    assert found, "no link in the mail"
    return found.group(1)


def visitor(world: World) -> TestClient:
    return browser(world.rt, world.app)


# --- every route: tenant isolation and the admin role ----------------------------------

Call = Callable[[TestClient, str, int], httpx.Response]
ROUTES: dict[tuple[str, str], Call] = {
    ("GET", "/admin"): lambda c, t, sid: c.get("/admin"),
    ("GET", "/admin/shares"): lambda c, t, sid: c.get("/admin/shares"),
    ("POST", "/admin/shares"): lambda c, t, sid: c.post(
        "/admin/shares", data={"csrf": t, "patient_id": PATIENT_ID}
    ),
    ("GET", "/admin/shares/{share_id}"): lambda c, t, sid: c.get(f"/admin/shares/{sid}"),
    ("GET", "/admin/shares/{share_id}/revoke"): lambda c, t, sid: c.get(
        f"/admin/shares/{sid}/revoke"
    ),
    ("POST", "/admin/shares/{share_id}/revoke"): lambda c, t, sid: c.post(
        f"/admin/shares/{sid}/revoke", data={"csrf": t}
    ),
    ("GET", "/admin/shares/{share_id}/resend"): lambda c, t, sid: c.get(
        f"/admin/shares/{sid}/resend"
    ),
    ("POST", "/admin/shares/{share_id}/resend"): lambda c, t, sid: c.post(
        f"/admin/shares/{sid}/resend", data={"csrf": t}
    ),
    ("GET", "/admin/shares/{share_id}/export"): lambda c, t, sid: c.get(
        f"/admin/shares/{sid}/export", params={"format": "jsonl"}
    ),
    ("GET", "/admin/export"): lambda c, t, sid: c.get("/admin/export", params={"format": "jsonl"}),
}


def test_the_route_table_names_every_admin_route(world: World) -> None:
    registered = app_routes(world.app, "/admin")
    assert len(registered) >= 10
    assert registered == set(ROUTES), "a new /admin route needs a row in ROUTES"


def test_another_tenants_admin_gets_404_or_nothing_of_this_tenant_on_every_route(
    world: World,
) -> None:
    share_id = email_share(world)
    before = share_of(world, share_id)
    own, other = portal(world, ADMIN), portal(world, OTHER_ADMIN)
    for (method, path), call in ROUTES.items():
        answer = call(other, token(world, other), share_id)
        where = f"{method} {path}"
        if "{share_id}" in path:
            assert answer.status_code == 404, where
            assert "hoort niet bij uw instelling" in answer.text, where
            continue
        own_answer = call(own, token(world, own), share_id)
        assert (answer.status_code, own_answer.status_code) == (200, 200), where
        _assert_nothing_of_acme(world, path, answer, own_answer)
    after = share_of(world, share_id)
    assert (after.state, after.code_hmac, after.ended_at) == (
        before.state,
        before.code_hmac,
        before.ended_at,
    )
    assert not [e for e in trail(world, share_id) if e.actor_id == f"staff:{world.other_admin_id}"]
    assert own.get(f"/admin/shares/{share_id}").status_code == 200  # the control


def _assert_nothing_of_acme(
    world: World, path: str, answer: httpx.Response, own_answer: httpx.Response
) -> None:
    """A tenant-wide page of the other admin holds none of this tenant's data."""
    if path == "/admin":
        assert measure(answer.text, "shares") == 0 and measure(own_answer.text, "shares") >= 1
    elif path == "/admin/shares":
        assert listed_ids(answer.text) == set() and listed_ids(own_answer.text)
        assert "<tbody>" not in answer.text  # no rows at all (the form may echo the filter)
        assert PATIENT_ID in own_answer.text.split("<tbody>", 1)[1]
    elif path == "/admin/export":
        theirs = [json.loads(line) for line in answer.text.splitlines()]
        ours = [json.loads(line) for line in own_answer.text.splitlines()]
        assert {e["tenant_id"] for e in theirs} == {world.other_tenant_id}
        assert {e["tenant_id"] for e in ours} == {world.tenant_id}


def test_signed_out_visitors_are_sent_to_sign_in_and_staff_get_an_admins_only_page(
    world: World,
) -> None:
    share_id = email_share(world)
    nobody, member = portal(world, None), portal(world, STAFF)
    for (method, path), call in ROUTES.items():
        where = f"{method} {path}"
        answer = call(nobody, "", share_id)
        assert (answer.status_code, answer.headers.get("location")) == (303, "/staff/login"), where
        answer = call(member, token(world, member), share_id)
        assert answer.status_code == 403, where
        assert "Alleen voor beheerders" in answer.text, where
        assert 'href="/staff"' in answer.text, where
    assert share_of(world, share_id).state == "ready"
    done = {e.event for e in trail(world, share_id)}
    assert not done & {"share.revoked", "share.link_renewed", "share.viewed", "audit.exported"}


def test_the_staff_navigation_links_to_the_admin_portal_for_admins_only(world: World) -> None:
    assert 'href="/admin"' in portal(world, ADMIN).get("/staff").text
    assert 'href="/admin"' not in portal(world, STAFF).get("/staff").text


def test_every_trail_event_and_admin_text_has_dutch_and_english_words(
    storage: dict[str, object],  # the module's parametrisation asks for it; unused
) -> None:
    assert set(TEXTS["nl"]) == set(TEXTS["en"])
    missing = [e.event_name for e in audit.Ev if f"ev_{e.event_name}" not in TEXTS["nl"]]
    assert missing == [], "the admin timeline names every event in words"


def test_admin_pages_carry_no_inline_script_style_or_other_sites(world: World) -> None:
    share_id = email_share(world)
    client = portal(world, ADMIN)
    for path in (
        "/admin",
        "/admin/shares",
        f"/admin/shares/{share_id}",
        f"/admin/shares/{share_id}/revoke",
        f"/admin/shares/{share_id}/resend",
        "/admin/shares/999999",
        "/admin?lang=en",
    ):
        answer = client.get(path)
        html = answer.text
        assert answer.headers["cache-control"] == "no-store", path
        assert "script-src 'self'" in answer.headers["content-security-policy"], path
        assert not re.search(r"""(src|href|action)=["']?(https?:)?//""", html), path
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), path
        assert not re.search(r"""\son[a-z]+\s*=""", html), path
        assert "style=" not in html, path


# --- dashboard ---------------------------------------------------------------------------


def _record_at(
    world: World, monkeypatch: pytest.MonkeyPatch, event: audit.Ev, moment: datetime, tenant: int
) -> None:
    """An event of the trail as if it happened at ``moment`` (the trail is append-only)."""
    monkeypatch.setattr(audit, "utcnow", lambda: moment)
    with transaction(world.rt.sessions) as db:
        audit.record(session=db, event=event, actor=audit.SYSTEM, tenant_id=tenant)
    monkeypatch.undo()


def test_dashboard_counts_the_trail_per_amsterdam_day_across_summer_time(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime(2026, 3, 30, 12, 0, tzinfo=UTC)  # summer time began on 29 March, 01:00 UTC
    for event, moment, tenant in (
        (audit.Ev.share_created, datetime(2026, 3, 29, 22, 30, tzinfo=UTC), world.tenant_id),
        (audit.Ev.share_created, datetime(2026, 3, 28, 23, 30, tzinfo=UTC), world.tenant_id),
        (audit.Ev.code_right, datetime(2026, 3, 28, 22, 30, tzinfo=UTC), world.tenant_id),
        (audit.Ev.download_started, datetime(2026, 3, 1, 12, 0, tzinfo=UTC), world.tenant_id),
        (audit.Ev.download_started, datetime(2026, 2, 28, 22, 59, tzinfo=UTC), world.tenant_id),
        (audit.Ev.birth_date_locked, datetime(2026, 3, 30, 8, 0, tzinfo=UTC), world.tenant_id),
        (audit.Ev.code_locked, datetime(2026, 3, 30, 9, 0, tzinfo=UTC), world.tenant_id),
        (audit.Ev.share_created, datetime(2026, 3, 30, 9, 0, tzinfo=UTC), world.other_tenant_id),
        (audit.Ev.code_wrong, datetime(2026, 3, 30, 9, 0, tzinfo=UTC), world.tenant_id),
    ):
        _record_at(world, monkeypatch, event, moment, tenant)
    with world.rt.sessions() as db:
        days = service.daily_activity(session=db, tenant_id=world.tenant_id, now=now)
    by_day = {d.day: d.counts for d in days}
    assert len(days) == 30 and days[0].day == date(2026, 3, 1) and days[-1].day == date(2026, 3, 30)
    assert by_day[date(2026, 3, 30)] == {"shares": 1, "sign_ins": 0, "downloads": 0, "lockouts": 2}
    assert by_day[date(2026, 3, 29)] == {"shares": 1, "sign_ins": 0, "downloads": 0, "lockouts": 0}
    assert by_day[date(2026, 3, 28)]["sign_ins"] == 1  # 23:30 in Amsterdam, still the 28th
    assert by_day[date(2026, 3, 1)]["downloads"] == 1  # 28 Feb 22:59 UTC is 23:59 on the 28th
    assert sum(c["shares"] for c in by_day.values()) == 2  # not the other tenant's


def test_dashboard_shows_todays_sign_in_download_and_lockout_and_the_locked_share(
    world: World,
) -> None:
    signed = create_link(world.api, [world.study_uid])
    locked = create_link(world.api, [world.study_uid])
    client = visitor(world)
    sign_in(client, world.rt, signed.code)
    assert client.get(f"{R}/download", params={"format": "jpeg", "study": "all"}).status_code == 200
    for _ in range(5):
        stranger = visitor(world)
        open_to_birth_date(stranger, locked.code)
        stranger.post(f"{R}/birth-date", json={"birth_date": WRONG_DATE}, headers=csrf(stranger))
    assert share_of(world, locked.share_id).locked_until is not None
    html = portal(world, ADMIN).get("/admin").text
    assert [measure(html, k) for k in ("shares", "sign_ins", "downloads", "lockouts")] == [
        2,
        1,
        1,
        1,
    ]
    assert re.search(r'id="locked-count">1<', html)
    locked_section = html.split('id="locked"', 1)[1]
    assert f'href="/admin/shares/{locked.share_id}"' in locked_section
    assert f'href="/admin/shares/{signed.share_id}"' not in locked_section
    assert html.count('<svg viewBox="0 0 320 140" role="img"') == 4
    today = utcnow().astimezone(service.AMSTERDAM).strftime("%d-%m-%Y")
    assert re.search(
        rf"<th scope=\"row\">{today}</th><td>2</td><td>1</td><td>1</td><td>1</td>", html
    )
    assert PATIENT_ID not in html


# --- the share list ----------------------------------------------------------------------


def _filter(client: TestClient, world: World, **fields: str) -> httpx.Response:
    return client.post("/admin/shares", data={"csrf": token(world, client), **fields})


def test_share_list_filters_by_state_creator_and_amsterdam_dates(world: World) -> None:
    by_key = create_link(world.api, [world.study_uid]).share_id
    revoked = create_link(world.api, [world.study_uid]).share_id
    overdue = create_link(world.api, [world.study_uid]).share_id
    client = portal(world, ADMIN)
    made = client.post(
        "/staff/shares",
        data={
            "csrf": token(world, client),
            "study_uids": world.study_uid,
            "recipient": "patient",
            "delivery": "url",
            "phone": "0612345678",
            "language": "nl",
        },
    )
    assert made.status_code == 201
    by_staff = max(listed_ids(client.get("/admin/shares").text))
    assert world.api.delete(f"/api/v1/shares/{revoked}").status_code == 204
    with transaction(world.rt.sessions) as db:
        db.get(Share, overdue).expires_at = utcnow() - timedelta(minutes=1)
        db.get(Share, by_key).created_at = datetime(2026, 1, 15, 23, 30, tzinfo=UTC)
    everything = {by_key, revoked, overdue, by_staff}
    assert listed_ids(client.get("/admin/shares").text) == everything
    assert listed_ids(_filter(client, world, state="revoked").text) == {revoked}
    assert listed_ids(_filter(client, world, state="expired").text) == {overdue}
    assert listed_ids(_filter(client, world, state="ready").text) == {by_key, by_staff}
    assert listed_ids(_filter(client, world, creator=f"staff:{world.admin_id}").text) == {by_staff}
    assert trail(world, event="shares.listed")[-1].details == {
        "matches": 1,
        "capped": False,
        "page": "admin",
        "creator": f"staff:{world.admin_id}",
    }
    one_day = {"created_from": "2026-01-16", "created_to": "2026-01-16"}  # 00:30 in Amsterdam
    assert listed_ids(_filter(client, world, **one_day).text) == {by_key}
    assert listed_ids(_filter(client, world, created_to="2026-01-15").text) == set()
    backwards = _filter(client, world, created_from="2026-02-01", created_to="2026-01-01")
    assert backwards.status_code == 400 and "vóór de begindatum" in backwards.text
    page = client.get("/admin/shares").text
    assert "Anna Beheer" in page and "API-sleutel ‘pacs’" in page  # creators by name


def test_patient_filter_stays_out_of_urls_and_finds_purged_shares_through_the_trail(
    world: World, tmp_path: Path
) -> None:
    purged = create_link(world.api, [world.study_uid]).share_id
    other_uid = stage(
        world.rt,
        world.tenant_id,
        tmp_path / "other",
        patient={
            "PatientName": "DOE^JANE",
            "PatientID": "PAT-0099",
            "PatientBirthDate": "19600101",
        },
        bsn=None,
    )
    other = create_link(world.api, [other_uid]).share_id
    world.api.delete(f"/api/v1/shares/{purged}")
    worker.run_once(world.rt)
    assert share_of(world, purged).patient_id is None  # purged: only the trail knows
    client = portal(world, ADMIN)
    form = client.get("/admin/shares").text
    assert re.search(r'<form method="post" action="/admin/shares"', form)
    found = _filter(client, world, patient_id=f"  {PATIENT_ID} ")
    assert found.status_code == 200 and found.url.path == "/admin/shares" and not found.url.query
    assert listed_ids(found.text) == {purged}
    assert "uit het auditspoor" in found.text
    assert listed_ids(_filter(client, world, patient_id="PAT-0099").text) == {other}
    listed = trail(world, event="shares.listed")[-2]
    assert listed.patient_id == PATIENT_ID and listed.details["matches"] == 1


def _bsn_ending(tail: str, skip: str) -> str:
    return next(
        f"{n:06d}{tail}"
        for n in range(100000, 999999)
        if is_valid_bsn(f"{n:06d}{tail}") and f"{n:06d}{tail}" != skip
    )


def test_a_bsn_patient_id_finds_its_purged_share_by_the_tail_and_says_so(
    world: World, tmp_path: Path
) -> None:
    bsn = "123456782"
    twin = _bsn_ending("782", skip=bsn)  # another patient, same last three digits
    uids = {
        pid: stage(
            world.rt,
            world.tenant_id,
            tmp_path / pid,
            patient={"PatientName": "X^Y", "PatientID": pid, "PatientBirthDate": "19750312"},
            bsn=pid,
        )
        for pid in (bsn, twin)
    }
    purged = create_link(world.api, [uids[bsn]]).share_id
    live_twin = create_link(world.api, [uids[twin]]).share_id
    world.api.delete(f"/api/v1/shares/{purged}")
    worker.run_once(world.rt)
    client = portal(world, ADMIN)
    found = _filter(client, world, patient_id=bsn)
    assert listed_ids(found.text) == {purged}  # the live twin's own ID does not match
    assert "BSN:******782" in found.text and "laatste 3 cijfers van het BSN" in found.text
    assert listed_ids(_filter(client, world, patient_id=twin).text) == {live_twin, purged}
    assert trail(world, event="shares.listed")[-1].patient_id == "BSN:******782"


# --- a share's page ----------------------------------------------------------------------


def _mailed_share(world: World) -> tuple[int, str]:
    """An email share whose mail went out; its id and the link code in the mail."""
    share_id = email_share(world)
    worker.run_once(world.rt)
    [message] = mails(world)
    return share_id, code_in(message)


def test_share_page_masks_contacts_and_tells_the_timeline_in_words(world: World) -> None:
    share_id, code = _mailed_share(world)
    client = visitor(world)
    open_to_birth_date(client, code)
    client.post(f"{R}/birth-date", json={"birth_date": WRONG_DATE}, headers=csrf(client))
    sign_in(client, world.rt, code)
    admin = portal(world, ADMIN)
    html = admin.get(f"/admin/shares/{share_id}").text
    assert "j\u2022\u2022\u2022@example.nl" in html and "\u2022\u2022\u2022\u2022 78" in html
    for secret in ("jan.jansen", "612345678", "1975"):
        assert secret not in html
    assert PATIENT_ID in html and 'id="signed-in">1<' in html
    timeline = html.split('class="list stacked timeline"', 1)[1]
    for words in (
        "Deling aangemaakt",
        "API-sleutel ‘pacs’",
        "E-mail verstuurd",
        "Link geopend",
        "Verkeerde geboortedatum",
        "Mislukt",
        "Ingelogd met de sms-code",
        "testclient",
        "Systeem",
    ):
        assert words in timeline, words
    assert re.search(r"Ontvanger \(patiënt\), sessie \d+", timeline)
    assert timeline.index("Deling aangemaakt") < timeline.index("Ingelogd met de sms-code")
    assert "Share created" in admin.get(f"/admin/shares/{share_id}?lang=en").text
    viewed = trail(world, share_id, "share.viewed")[0]
    assert viewed.actor_id == f"staff:{world.admin_id}" and viewed.patient_id == PATIENT_ID
    assert viewed.ip == "testclient"


def test_a_purged_share_keeps_its_timeline_but_shows_no_contact_data(world: World) -> None:
    share_id = email_share(world)
    world.api.delete(f"/api/v1/shares/{share_id}")
    worker.run_once(world.rt)
    html = portal(world, ADMIN).get(f"/admin/shares/{share_id}").text
    assert 'id="masked-email">–<' in html and 'id="masked-phone">–<' in html
    assert "example.nl" not in html
    assert f'{PATIENT_ID} <span class="muted">(uit het auditspoor)' in html
    for words in ("Deling ingetrokken", "Patiëntgegevens en beelden verwijderd"):
        assert words in html
    assert "/revoke" not in html and "/resend" not in html


# --- revoke ------------------------------------------------------------------------------


def test_revoke_from_the_admin_portal_ends_a_signed_in_recipient_at_once(world: World) -> None:
    link = create_link(world.api, [world.study_uid])
    recipient = visitor(world)
    sign_in(recipient, world.rt, link.code)
    assert recipient.get(f"{R}/studies").status_code == 200
    admin = portal(world, ADMIN)
    confirm = admin.get(f"/admin/shares/{link.share_id}/revoke").text
    assert "ook niet voor een ontvanger die nu is ingelogd" in confirm
    assert f'action="/admin/shares/{link.share_id}/revoke"' in confirm
    forged = admin.post(f"/admin/shares/{link.share_id}/revoke", data={"csrf": "forged"})
    assert forged.headers["location"] == "/staff/login"
    assert recipient.get(f"{R}/studies").status_code == 200
    done = admin.post(f"/admin/shares/{link.share_id}/revoke", data={"csrf": token(world, admin)})
    assert done.headers["location"] == f"/admin/shares/{link.share_id}?done=revoked"
    answer = recipient.get(f"{R}/studies")
    assert answer.status_code == 410 and answer.json()["reason"] == "revoked"
    again = admin.post(f"/admin/shares/{link.share_id}/revoke", data={"csrf": token(world, admin)})
    assert again.status_code == 409 and "Dit kan niet" in again.text
    [revoked] = trail(world, link.share_id, "share.revoked")  # once, by the admin
    assert revoked.actor_id == f"staff:{world.admin_id}"
    page = admin.get(done.headers["location"]).text
    assert "De deling is ingetrokken" in page and 'class="badge revoked"' in page


# --- resend ------------------------------------------------------------------------------


def test_resend_mails_a_new_link_and_the_old_link_stops_working(world: World) -> None:
    share_id, old = _mailed_share(world)
    signed_in = visitor(world)
    sign_in(signed_in, world.rt, old)
    halfway = visitor(world)
    open_to_birth_date(halfway, old)
    admin = portal(world, ADMIN)
    confirm = admin.get(f"/admin/shares/{share_id}/resend").text
    assert "De oude link werkt daarna niet meer" in confirm and "j\u2022\u2022\u2022@" in confirm
    done = admin.post(f"/admin/shares/{share_id}/resend", data={"csrf": token(world, admin)})
    assert done.headers["location"] == f"/admin/shares/{share_id}?done=resent"
    assert signed_in.get(f"{R}/studies").status_code == 200  # signed in: carries on
    ended = halfway.post(f"{R}/birth-date", json={"birth_date": BIRTH_DATE}, headers=csrf(halfway))
    assert ended.status_code == 401
    late = visitor(world)
    open_to_birth_date(late, old)  # the old code answers like any unknown code
    refused = late.post(f"{R}/birth-date", json={"birth_date": BIRTH_DATE}, headers=csrf(late))
    assert refused.status_code == 400
    worker.run_once(world.rt)
    first, second = mails(world)
    assert second["To"] == first["To"] == "jan.jansen@example.nl"
    new = code_in(second)
    assert new != old
    fresh = visitor(world)
    sign_in(fresh, world.rt, new)
    assert fresh.get(f"{R}/studies").status_code == 200
    [renewed] = trail(world, share_id, "share.link_renewed")
    assert renewed.actor_id == f"staff:{world.admin_id}"
    assert renewed.details["sessions_ended"] == 1 and renewed.details["unsent_mails_dropped"] == 0
    assert old not in json.dumps(renewed.details) and new not in json.dumps(renewed.details)


def test_a_session_of_the_old_link_that_survived_the_resend_goes_no_further(
    world: World,
) -> None:
    share_id, old = _mailed_share(world)
    before_date, before_code = visitor(world), visitor(world)
    open_to_birth_date(before_date, old)
    open_to_birth_date(before_code, old)
    answer = before_code.post(
        f"{R}/birth-date", json={"birth_date": BIRTH_DATE}, headers=csrf(before_code)
    )
    assert answer.status_code == 200
    sms_before = len(sms_messages(world.rt))
    admin = portal(world, ADMIN)
    admin.post(f"/admin/shares/{share_id}/resend", data={"csrf": token(world, admin)})
    with transaction(world.rt.sessions) as db:  # as if opened while the renewal committed
        db.execute(update(RecipientSession).values(ended_at=None))
    wrong = before_date.post(
        f"{R}/birth-date", json={"birth_date": BIRTH_DATE}, headers=csrf(before_date)
    )
    assert wrong.status_code == 400  # the right date: answered as for an unknown code
    code = before_code.post(f"{R}/sms-code", json={"code": "123456"}, headers=csrf(before_code))
    assert code.status_code == 410
    assert len(sms_messages(world.rt)) == sms_before


def test_resend_of_a_pending_share_replaces_its_held_mail(world: World, tmp_path: Path) -> None:
    uid = stage(world.rt, world.tenant_id, tmp_path / "late", settle=False)
    share_id = email_share(world, study_uids=[uid])
    assert share_of(world, share_id).state == "pending"
    admin = portal(world, ADMIN)
    admin.post(f"/admin/shares/{share_id}/resend", data={"csrf": token(world, admin)})
    with world.rt.sessions() as db:
        outbox = list(db.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))
    assert [(m.state, m.body_text is None) for m in outbox] == [("failed", True), ("held", False)]
    worker.run_once(world.rt, now=utcnow() + timedelta(minutes=5))
    worker.run_once(world.rt, now=utcnow() + timedelta(minutes=6))
    assert share_of(world, share_id).state == "ready"
    [message] = mails(world)
    fresh = visitor(world)
    sign_in(fresh, world.rt, code_in(message))
    assert fresh.get(f"{R}/studies").status_code == 200


def test_resend_is_refused_for_a_url_share_and_an_ended_share(world: World) -> None:
    by_url = create_link(world.api, [world.study_uid]).share_id
    revoked = email_share(world)
    world.api.delete(f"/api/v1/shares/{revoked}")
    admin = portal(world, ADMIN)
    for share_id in (by_url, revoked):
        confirm = admin.get(f"/admin/shares/{share_id}/resend").text
        assert (
            "alleen bij een lopende deling" in confirm
            and '<form method="post" action="/admin/shares/' not in confirm
        )
        before = share_of(world, share_id).code_hmac
        answer = admin.post(f"/admin/shares/{share_id}/resend", data={"csrf": token(world, admin)})
        assert answer.status_code == 409 and "Dit kan niet" in answer.text
        assert share_of(world, share_id).code_hmac == before
    assert trail(world, event="share.link_renewed") == []


# --- export ------------------------------------------------------------------------------


def test_trail_export_is_recorded_first_and_streams_the_tenants_events(world: World) -> None:
    share_id = email_share(world)
    admin = portal(world, ADMIN)
    answer = admin.get("/admin/export", params={"format": "jsonl"})
    assert answer.status_code == 200
    assert answer.headers["content-disposition"] == (
        'attachment; filename="zorgbericht-audit-acme-all.jsonl"'
    )
    events = [json.loads(line) for line in answer.text.splitlines()]
    assert {e["tenant_id"] for e in events} == {world.tenant_id}
    assert events[-1]["event"] == "audit.exported"  # recorded before the first byte
    assert events[-1]["actor_id"] == f"staff:{world.admin_id}"
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    tomorrow = (utcnow().astimezone(service.AMSTERDAM).date() + timedelta(days=1)).isoformat()
    assert admin.get("/admin/export", params={"format": "jsonl", "since": tomorrow}).text == ""
    table = admin.get(f"/admin/shares/{share_id}/export", params={"format": "csv"})
    assert table.headers["content-type"].startswith("text/csv")
    assert 'filename="zorgbericht-audit-acme-share-' in table.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(table.text)))
    assert rows and {r["share_id"] for r in rows} == {str(share_id)}
    assert rows[-1]["event"] == "audit.exported"
    everything = admin.get("/admin/export", params={"format": "csv", "since": ""})  # empty field
    assert everything.status_code == 200 and "audit.exported" in everything.text
    assert admin.get("/admin/export", params={"format": "xml"}).status_code == 422
    assert admin.get("/admin/export", params={"since": "31-12-2026"}).status_code == 422
