"""The staff portal in headless Chromium (desktop and phone) and its guards, over real HTTP."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import func, select

from tests.integration.test_shares import stage
from tests.web import SHOTS, chromium, live_server
from zorgbericht.audit.models import AuditEvent
from zorgbericht.db import transaction
from zorgbericht.runtime import Runtime
from zorgbericht.shares.models import Share
from zorgbericht.staff import service as staff
from zorgbericht.tenants import service as tenants

pytestmark = pytest.mark.peers
EMAIL, PASSWORD = "radioloog@acme.nl", "correct horse battery"


@dataclass
class Portal:
    url: str
    runtime: Runtime
    study_uid: str


@pytest.fixture
def portal(runtime: Runtime, tenant_id: int, tmp_path: Path) -> Iterator[Portal]:
    runtime.settings.public_url = "https://zb.example"
    with transaction(runtime.sessions) as db:
        tenant = tenants.get_tenant(session=db, slug="acme")
        tenants.create_user(
            session=db,
            tenant=tenant,
            email=EMAIL,
            password=PASSWORD,
            role="staff",
            name="R. Radioloog",
        )
    uid = stage(runtime, tenant_id, tmp_path / "s")
    with live_server(runtime) as url:
        yield Portal(url, runtime, uid)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


def sign_in(page: Page, portal: Portal) -> None:
    page.goto(f"{portal.url}/staff")
    expect(page).to_have_url(re.compile(r"/staff/login$"))
    page.fill("input[name=email]", EMAIL)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/staff$"))


def test_staff_shares_a_study_as_a_url_in_the_browser(browser: Browser, portal: Portal) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 860}, locale="nl-NL")
    page.goto(f"{portal.url}/staff/login")
    page.screenshot(path=SHOTS / "staff-login-desktop.png")
    sign_in(page, portal)
    page.fill("input[name=patient_id]", "PAT-0042")
    page.press("input[name=patient_id]", "Enter")
    expect(page.locator("table.list tbody tr")).to_have_count(1)
    page.screenshot(path=SHOTS / "staff-search-desktop.png", full_page=True)
    page.click("text=Geselecteerde studies delen")
    consent = page.locator(".consent")
    expect(consent).to_be_hidden()
    page.check("input[name=recipient][value=provider]")
    expect(consent).to_be_visible()
    page.check("input[name=delivery][value=url]")
    page.fill("input[name=phone]", "06 1234 5678")
    page.screenshot(path=SHOTS / "staff-share-form-desktop.png", full_page=True)
    page.click("button:has-text('Delen')")
    link = page.locator("#share-url").input_value()
    assert re.fullmatch(r"https://zb\.example/\?code=\w{4}-\w{4}-\w{4}", link)
    page.screenshot(path=SHOTS / "staff-share-result-desktop.png", full_page=True)
    page.click("text=Delingen")
    expect(page.locator("table.list tbody tr")).to_have_count(1)
    expect(page.locator(".badge.ready")).to_have_text("Klaar")
    page.click("text=English")
    expect(page.locator("h1")).to_have_text("Shares")


def test_form_problems_are_shown_and_nothing_is_shared(browser: Browser, portal: Portal) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 860}, locale="nl-NL")
    sign_in(page, portal)
    page.goto(f"{portal.url}/staff/new?study={portal.study_uid}")
    page.check("input[name=delivery][value=email]")
    page.fill("input[name=phone]", "0470123456")
    page.click("button:has-text('Delen')")
    expect(page.locator(".alert")).to_be_visible()
    expect(page.locator(".field-error").first).to_contain_text("country code")
    assert page.locator("input[name=phone]").input_value() == "0470123456"
    page.screenshot(path=SHOTS / "staff-share-form-errors-desktop.png", full_page=True)
    page.goto(f"{portal.url}/staff/new?study=1.2.826.0.1.404")  # staged nowhere, no PACS
    page.check("input[name=delivery][value=url]")
    page.fill("input[name=phone]", "0612345678")
    page.click("button:has-text('Delen')")
    expect(page.locator(".alert")).to_contain_text("no PACS is configured")
    with portal.runtime.sessions() as db:
        assert db.scalar(select(func.count(Share.id))) == 0
        reasons = db.scalars(
            select(AuditEvent.details).where(AuditEvent.event == "share.refused")
        ).all()
    assert len(reasons) == 2 and "country code" in reasons[0]["reason"]


def test_the_portal_fits_a_phone(browser: Browser, portal: Portal) -> None:
    context = browser.new_context(
        viewport={"width": 390, "height": 844},
        is_mobile=True,
        has_touch=True,
        device_scale_factor=3,
        locale="nl-NL",
    )
    page = context.new_page()
    sign_in(page, portal)
    page.fill("input[name=patient_id]", "PAT-0042")
    page.press("input[name=patient_id]", "Enter")
    page.screenshot(path=SHOTS / "staff-search-phone.png", full_page=True)
    page.click("text=Geselecteerde studies delen")
    page.screenshot(path=SHOTS / "staff-share-form-phone.png", full_page=True)
    assert page.evaluate("document.scrollingElement.scrollWidth <= window.innerWidth")
    context.close()


def test_pacs_button_opens_the_prefilled_form_without_signing_in(
    browser: Browser, portal: Portal
) -> None:
    with transaction(portal.runtime.sessions) as db:
        tenant = tenants.get_tenant(session=db, slug="acme")
        token = staff.launch_link_token(tenant=tenant, email=EMAIL, study_uids=[portal.study_uid])
    page = browser.new_page(locale="nl-NL")
    page.goto(f"{portal.url}/staff/share?tenant=acme&token={token}")
    expect(page).to_have_url(re.compile(r"/staff/new\?study="))
    expect(page.locator("input[name=study_uids]")).to_have_value(portal.study_uid)
    forged = browser.new_page(locale="nl-NL")
    forged.goto(f"{portal.url}/staff/share?tenant=acme&token={token[:-4]}AAAA")
    expect(forged.locator(".alert")).to_contain_text("ongeldig of verlopen")


def test_posts_without_the_csrf_token_or_session_are_refused(portal: Portal) -> None:
    with httpx.Client(base_url=portal.url, follow_redirects=False) as client:
        bad = client.post("/staff/login", data={"email": EMAIL, "password": "wrong"})
        assert bad.status_code == 400 and "klopt niet" in bad.text
        assert "__Host-zb_staff" not in bad.headers.get("set-cookie", "")
        good = client.post("/staff/login", data={"email": EMAIL, "password": PASSWORD})
        assert good.status_code == 303
        cookie = good.headers["set-cookie"]
        for flag in ("__Host-zb_staff=", "Secure", "HttpOnly", "SameSite=strict", "Path=/"):
            assert flag.lower() in cookie.lower(), flag
        session_value = cookie.split(";")[0].split("=", 1)[1]
        client.cookies.set("__Host-zb_staff", session_value)  # as a browser would send it
        forged = client.post(
            "/staff/shares",
            data={
                "csrf": "nope",
                "study_uids": portal.study_uid,
                "recipient": "patient",
                "delivery": "url",
                "phone": "0612345678",
                "language": "nl",
            },
        )
        assert forged.status_code == 303 and forged.headers["location"] == "/staff/login"
        page = client.get("/staff")
        assert page.status_code == 200
        for header, value in (
            ("content-security-policy", "script-src 'self'"),
            ("referrer-policy", "no-referrer"),
            ("x-content-type-options", "nosniff"),
            ("cache-control", "no-store"),
        ):
            assert value in page.headers[header]
    with portal.runtime.sessions() as db:
        assert db.scalar(select(func.count(Share.id))) == 0
