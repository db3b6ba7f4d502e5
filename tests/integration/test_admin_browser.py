"""The admin portal in headless Chromium at desktop and phone size, over real HTTP."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.integration.recipient_flow import (
    create_link,
    csrf,
    open_to_birth_date,
    share_row,
    sign_in,
)
from tests.integration.test_shares import stage
from tests.web import SHOTS, chromium, live_server
from zorgbericht import worker
from zorgbericht.app import create_app
from zorgbericht.audit import service as audit
from zorgbericht.db import transaction, utcnow
from zorgbericht.runtime import Runtime
from zorgbericht.tenants import service as tenants

pytestmark = [
    pytest.mark.peers,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
    pytest.mark.parametrize("storage", ["file"], indirect=True),
]
ADMIN, STAFF, PASSWORD = "beheer@acme.nl", "radioloog@acme.nl", "correct horse battery"
DESKTOP = {"viewport": {"width": 1280, "height": 800}}
PHONE = {
    "viewport": {"width": 390, "height": 844},
    "is_mobile": True,
    "has_touch": True,
    "device_scale_factor": 3,
}
# A month of earlier activity (per day: shares, sign-ins, downloads, lockouts), so the
# charts have something to show; written through the trail like the real events.
HISTORY = [
    (d % 5 + (3 if d % 7 < 5 else 0), d % 4 + 1, d % 6, 1 if d % 9 == 0 else 0) for d in range(29)
]


@dataclass
class Portal:
    url: str
    runtime: Runtime
    email_share: int
    locked_share: int
    signed_share: int


def _history(rt: Runtime, tenant_id: int) -> None:
    """Record the earlier days' events with the trail's clock set back (it is append-only)."""
    kinds = (
        audit.Ev.share_created,
        audit.Ev.code_right,
        audit.Ev.download_started,
        audit.Ev.birth_date_locked,
    )
    now = utcnow()
    with pytest.MonkeyPatch.context() as patch:
        for back, counts in enumerate(HISTORY, start=1):
            moment = now - timedelta(days=back)
            patch.setattr(audit, "utcnow", lambda moment=moment: moment)
            with transaction(rt.sessions) as db:
                for kind, count in zip(kinds, counts, strict=True):
                    for _ in range(count):
                        audit.record(
                            session=db, event=kind, actor=audit.SYSTEM, tenant_id=tenant_id
                        )


def _activity(rt: Runtime, tenant_id: int, key: str, folder: Path) -> tuple[int, int, int]:
    """Today's shares: one mailed, one signed in and downloaded from, one locked."""
    uid = stage(rt, tenant_id, folder)
    app = create_app(runtime=rt)
    with TestClient(app) as api:
        api.headers["Authorization"] = f"Bearer {key}"
        mailed = api.post(
            "/api/v1/shares",
            json={
                "study_uids": [uid],
                "recipient": "provider",
                "delivery": "email",
                "email": "dr.visser@huisarts.example.nl",
                "phone": "0612345678",
                "language": "nl",
            },
        ).json()["id"]
        signed, locked = create_link(api, [uid]), create_link(api, [uid])
        worker.run_once(rt)
        client = TestClient(app, base_url="https://zb.test")
        sign_in(client, rt, signed.code)
        client.get("/api/v1/recipient/download", params={"format": "jpeg", "study": "all"})
        for _ in range(5):
            stranger = TestClient(app, base_url="https://zb.test")
            open_to_birth_date(stranger, locked.code)
            stranger.post(
                "/api/v1/recipient/birth-date",
                json={"birth_date": "1980-01-01"},
                headers=csrf(stranger),
            )
    assert share_row(rt, locked.share_id).locked_until is not None
    return mailed, locked.share_id, signed.share_id


@pytest.fixture
def portal(runtime: Runtime, tenant_id: int, tmp_path: Path) -> Iterator[Portal]:
    runtime.settings.public_url = "https://zb.example"
    with transaction(runtime.sessions) as db:
        tenant = tenants.get_tenant(session=db, slug="acme")
        tenants.create_user(
            session=db,
            tenant=tenant,
            email=ADMIN,
            password=PASSWORD,
            role="admin",
            name="Anna Beheer",
        )
        tenants.create_user(session=db, tenant=tenant, email=STAFF, password=PASSWORD, role="staff")
        key = tenants.create_api_key(session=db, tenant=tenant, label="PACS Sectra")[0]
    _history(runtime, tenant_id)
    mailed, locked, signed = _activity(runtime, tenant_id, key, tmp_path / "study")
    with live_server(runtime) as url:
        yield Portal(url, runtime, mailed, locked, signed)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


def _context(browser: Browser, size: dict[str, object]) -> BrowserContext:
    return browser.new_context(locale="nl-NL", accept_downloads=True, **size)  # type: ignore[arg-type]


def sign_in_as_admin(page: Page, portal: Portal) -> None:
    page.goto(f"{portal.url}/admin")
    expect(page).to_have_url(re.compile(r"/staff/login$"))
    page.fill("input[name=email]", ADMIN)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/staff$"))
    page.click("nav >> text=Beheer")
    expect(page).to_have_url(re.compile(r"/admin$"))


def fits(page: Page) -> bool:
    return bool(page.evaluate("document.scrollingElement.scrollWidth <= window.innerWidth"))


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_dashboard_shows_a_month_of_activity_and_the_locked_share(
    browser: Browser, portal: Portal, size: str
) -> None:
    context = _context(browser, DESKTOP if size == "desktop" else PHONE)
    page = context.new_page()
    sign_in_as_admin(page, portal)
    expect(page.locator("h1")).to_have_text("Overzicht")
    shares_total = sum(day[0] for day in HISTORY) + 3
    expect(page.locator("[data-measure=shares]")).to_have_text(str(shares_total))
    expect(page.locator("[data-measure=lockouts]")).to_have_text(
        str(sum(day[3] for day in HISTORY) + 1)
    )
    expect(page.locator("figure.chart svg")).to_have_count(4)
    expect(page.locator("rect.bar-shares")).to_have_count(30)
    locked = page.locator("#locked table a")
    expect(locked).to_have_text(f"Deling {portal.locked_share}")
    page.screenshot(path=SHOTS / f"admin-dashboard-{size}.png", full_page=True)
    page.click("summary:has-text('Cijfers per dag')")
    expect(page.locator("#per-day tbody tr")).to_have_count(30)
    assert fits(page)
    page.screenshot(path=SHOTS / f"admin-dashboard-table-{size}.png", full_page=True)
    locked.click()
    expect(page.locator("#lock")).to_contain_text("Geblokkeerd tot")
    context.close()


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_admin_filters_shares_and_reads_a_timeline(
    browser: Browser, portal: Portal, size: str
) -> None:
    context = _context(browser, DESKTOP if size == "desktop" else PHONE)
    page = context.new_page()
    sign_in_as_admin(page, portal)
    page.click("nav >> text=Delingen")
    expect(page.locator("table.shares-table tbody tr")).to_have_count(3)
    page.fill("input[name=patient_id]", "PAT-0042")
    page.select_option("select[name=state]", "ready")
    page.click("button:has-text('Filteren')")
    expect(page.locator("#summary")).to_have_text("Gevonden: 3.")
    assert "PAT-0042" not in page.url
    page.select_option("select[name=creator]", label="API-sleutel ‘PACS Sectra’")
    page.click("button:has-text('Filteren')")
    expect(page.locator("table.shares-table tbody tr")).to_have_count(3)
    assert fits(page)
    page.screenshot(path=SHOTS / f"admin-shares-{size}.png", full_page=True)
    page.click(f"a[href='/admin/shares/{portal.signed_share}']")
    timeline = page.locator("table.timeline tbody")
    expect(timeline).to_contain_text("Ingelogd met de sms-code")
    expect(timeline).to_contain_text("Download gestart")
    expect(page.locator("#signed-in")).to_have_text("1")
    assert fits(page)
    page.screenshot(path=SHOTS / f"admin-share-{size}.png", full_page=True)
    page.click("text=English")
    expect(page.locator("table.timeline tbody")).to_contain_text("Signed in with the SMS code")
    page.screenshot(path=SHOTS / f"admin-share-en-{size}.png", full_page=True)
    context.close()


def test_admin_revokes_a_share_after_confirming(browser: Browser, portal: Portal) -> None:
    context = _context(browser, DESKTOP)
    page = context.new_page()
    sign_in_as_admin(page, portal)
    page.goto(f"{portal.url}/admin/shares/{portal.signed_share}")
    page.click("text=Deling intrekken")
    expect(page.locator(".warning")).to_contain_text("ook niet voor een ontvanger die nu is")
    page.screenshot(path=SHOTS / "admin-revoke-confirm-desktop.png", full_page=True)
    page.click("button:has-text('Ja, nu intrekken')")
    expect(page.locator(".notice")).to_have_text(
        "De deling is ingetrokken. De link werkt niet meer."
    )
    expect(page.locator("#share-state")).to_have_text("Ingetrokken")
    expect(page.locator("text=Deling intrekken")).to_have_count(0)
    assert share_row(portal.runtime, portal.signed_share).state == "revoked"
    page.screenshot(path=SHOTS / "admin-revoked-desktop.png", full_page=True)
    context.close()


def test_admin_resends_the_email_with_a_new_link(browser: Browser, portal: Portal) -> None:
    before = share_row(portal.runtime, portal.email_share).code_hmac
    context = _context(browser, PHONE)
    page = context.new_page()
    sign_in_as_admin(page, portal)
    page.goto(f"{portal.url}/admin/shares/{portal.email_share}")
    expect(page.locator("#masked-email")).to_have_text("d\u2022\u2022\u2022@huisarts.example.nl")
    expect(page.locator("#mail-state")).to_contain_text("Verstuurd op")
    page.click("text=E-mail opnieuw versturen")
    expect(page.locator(".warning")).to_contain_text("De oude link werkt daarna niet meer")
    assert fits(page)
    page.screenshot(path=SHOTS / "admin-resend-confirm-phone.png", full_page=True)
    page.click("button:has-text('Ja, nieuwe link versturen')")
    expect(page.locator(".notice")).to_contain_text("nieuwe link")
    expect(page.locator("#mail-state")).to_have_text("Wordt verstuurd")
    assert share_row(portal.runtime, portal.email_share).code_hmac != before
    context.close()


def test_the_trail_downloads_from_the_dashboard_and_a_share_page(
    browser: Browser, portal: Portal
) -> None:
    context = _context(browser, DESKTOP)
    page = context.new_page()
    sign_in_as_admin(page, portal)
    page.select_option("select[name=format]", "jsonl")
    with page.expect_download() as whole:
        page.click("button:has-text('Exporteren')")
    assert whole.value.suggested_filename == "zorgbericht-audit-acme-all.jsonl"
    lines = Path(whole.value.path()).read_text().splitlines()
    assert len(lines) > 100 and '"event": "audit.exported"' in lines[-1]
    page.goto(f"{portal.url}/admin/shares/{portal.locked_share}")
    with page.expect_download() as one:
        page.click("a:has-text('CSV')")
    rows = Path(one.value.path()).read_text().splitlines()
    assert rows[0].startswith("seq,occurred_at,tenant_id,event")
    assert sum("recipient.birth_date_wrong" in r for r in rows) == 5
    assert sum("recipient.birth_date_locked" in r for r in rows) == 1
    context.close()


def test_staff_without_the_admin_role_get_a_friendly_refusal(
    browser: Browser, portal: Portal
) -> None:
    context = _context(browser, PHONE)
    page = context.new_page()
    page.goto(f"{portal.url}/staff/login")
    page.fill("input[name=email]", STAFF)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/staff$"))
    expect(page.locator("nav >> text=Beheer")).to_have_count(0)
    answer = page.goto(f"{portal.url}/admin/shares/{portal.locked_share}")
    assert answer is not None and answer.status == 403
    expect(page.locator("h1")).to_have_text("Alleen voor beheerders")
    page.screenshot(path=SHOTS / "admin-forbidden-phone.png", full_page=True)
    page.click("a.button:has-text('Medewerkersportaal')")
    expect(page).to_have_url(re.compile(r"/staff$"))
    context.close()


def test_a_share_of_no_one_here_is_a_not_found_page(browser: Browser, portal: Portal) -> None:
    context = _context(browser, DESKTOP)
    page = context.new_page()
    sign_in_as_admin(page, portal)
    answer = page.goto(f"{portal.url}/admin/shares/999999")
    assert answer is not None and answer.status == 404
    expect(page.locator("h1")).to_have_text("Niet gevonden")
    page.screenshot(path=SHOTS / "admin-not-found-desktop.png", full_page=True)
    page.click("text=Terug naar de delingen")
    expect(page).to_have_url(re.compile(r"/admin/shares$"))
    context.close()
