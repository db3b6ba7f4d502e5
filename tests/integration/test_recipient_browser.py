"""The recipient pages and image viewer in headless Chromium, desktop and phone, over HTTP."""

from __future__ import annotations

import json
import re
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from fpdf import FPDF
from playwright.sync_api import Browser, Page, expect
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    BasicTextSRStorage,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    generate_uid,
)

from dicom_ingest.importer import import_path
from dicom_ingest.pipeline import Pipeline
from dicom_ingest.synthetic import phantom_slice, write_study
from tests.integration.test_shares import PATIENT
from tests.web import SHOTS, chromium, live_server
from zorgbericht import worker
from zorgbericht.audit import service as audit
from zorgbericht.db import transaction
from zorgbericht.runtime import Runtime
from zorgbericht.staging import service as staging
from zorgbericht.tenants import service as tenants

pytestmark = [
    pytest.mark.peers,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
    pytest.mark.parametrize("storage", ["file"], indirect=True),
]
DESKTOP = {"viewport": {"width": 1280, "height": 800}}
PHONE = {
    "viewport": {"width": 390, "height": 844},
    "is_mobile": True,
    "has_touch": True,
    "device_scale_factor": 3,
}
BIRTH_DATE = "1975-03-12"  # PATIENT's PatientBirthDate
SLICES = 8  # per CT series
FRAMES = 6  # of the multi-frame image
ALL_THUMBNAILS = "[...document.querySelectorAll('button.series img')].every(i => i.naturalWidth)"
VIEWER_IMAGE = "document.getElementById('viewer-image').naturalWidth > 0"
SR_TEXT = "No abnormalities <b>seen</b> in the thorax."


# --- a study with two CT series, a multi-frame image, an SR and a PDF report -------------------


def _sibling(template: Dataset, sop_class: str, modality: str, number: int, name: str) -> Dataset:
    """A new instance in the template's study and patient, in a series of its own."""
    ds = Dataset()
    for keyword in (*PATIENT, "OtherPatientIDsSequence", "StudyInstanceUID", "StudyDate"):
        if keyword in template:
            setattr(ds, keyword, template.data_element(keyword).value)
    ds.StudyTime, ds.StudyID = template.StudyTime, template.StudyID
    ds.AccessionNumber, ds.StudyDescription = template.AccessionNumber, template.StudyDescription
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = generate_uid(), number, 1
    ds.Modality, ds.SeriesDescription = modality, name
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _code(value: str, scheme: str, meaning: str) -> Sequence:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return Sequence([item])


def write_extras(folder: Path, template: Dataset) -> None:
    cine = _sibling(template, MultiFrameGrayscaleWordSecondaryCaptureImageStorage, "OT", 3, "CINE")
    cine.SamplesPerPixel, cine.PhotometricInterpretation = 1, "MONOCHROME2"
    cine.Rows = cine.Columns = 96
    cine.BitsAllocated, cine.BitsStored, cine.HighBit, cine.PixelRepresentation = 16, 12, 11, 0
    cine.NumberOfFrames = FRAMES
    frames = [np.roll(phantom_slice(k, 96), 8 * k, axis=1) for k in range(FRAMES)]
    cine.PixelData = np.stack(frames).astype(np.uint16).tobytes()
    cine.save_as(folder / "cine.dcm", enforce_file_format=True)

    sr = _sibling(template, BasicTextSRStorage, "SR", 4, "REPORT")
    sr.ValueType, sr.ContinuityOfContent = "CONTAINER", "SEPARATE"
    sr.CompletionFlag, sr.VerificationFlag = "COMPLETE", "VERIFIED"
    sr.ConceptNameCodeSequence = _code("18748-4", "LN", "Diagnostic Imaging Report")
    finding = Dataset()
    finding.RelationshipType, finding.ValueType, finding.TextValue = "CONTAINS", "TEXT", SR_TEXT
    finding.ConceptNameCodeSequence = _code("121071", "DCM", "Finding")
    sr.ContentSequence = Sequence([finding])
    sr.save_as(folder / "sr.dcm", enforce_file_format=True)

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=14)
    pdf.cell(text="Radiology report")
    doc = _sibling(template, EncapsulatedPDFStorage, "DOC", 5, "PDF REPORT")
    doc.MIMETypeOfEncapsulatedDocument = "application/pdf"
    doc.EncapsulatedDocument = bytes(pdf.output())
    doc.save_as(folder / "pdf.dcm", enforce_file_format=True)


def stage_study(rt: Runtime, tenant_id: int, folder: Path, *, settle: bool = True) -> str:
    uid = write_study(folder, series=2, slices=SLICES, size=128, patient=PATIENT, bsn="123456782")
    write_extras(folder, pydicom.dcmread(next(iter(sorted(folder.glob("*.dcm"))))))
    pipeline = Pipeline(settings=rt.settings, store=rt.store, sessions=rt.sessions)
    pipeline.start()
    try:
        import_path(
            path=folder, tenant_id=tenant_id, pipeline=pipeline, actor=audit.Actor("cli", "test")
        )
    finally:
        pipeline.close()
    if settle:
        settle_study(rt, tenant_id, uid)
    return uid


def settle_study(rt: Runtime, tenant_id: int, uid: str) -> None:
    with transaction(rt.sessions) as db:
        staging.settle_studies(session=db, quiet=timedelta(0), force_uids=[(tenant_id, uid)])
    worker.run_once(rt)


# --- the running site -------------------------------------------------------------------------


@dataclass
class Site:
    url: str
    runtime: Runtime
    tenant_id: int
    key: str

    def share(self, study_uid: str) -> tuple[int, str]:
        """A URL share of the study, made through the share API: its id and code."""
        answer = httpx.post(
            f"{self.url}/api/v1/shares",
            headers={"Authorization": f"Bearer {self.key}"},
            json={
                "study_uids": [study_uid],
                "recipient": "patient",
                "delivery": "url",
                "phone": "0612345678",
                "language": "nl",
            },
        )
        assert answer.status_code == 201, answer.text
        return answer.json()["id"], answer.json()["url"].split("code=")[1]

    def sms_code(self) -> str:
        """The code in the newest SMS the file backend wrote."""
        files = sorted((self.runtime.settings.data_dir / "sms").glob("*.json"))
        newest = max(files, key=lambda p: p.stat().st_mtime_ns)
        found = re.search(r"\b(\d{6})\b", json.loads(newest.read_text())["body"])
        assert found
        return found.group(1)


@pytest.fixture
def site(runtime: Runtime, tenant_id: int) -> Iterator[Site]:
    runtime.settings.public_url = "http://zb.test"
    with transaction(runtime.sessions) as db:
        tenant = tenants.get_tenant(session=db, slug="acme")
        key = tenants.create_api_key(session=db, tenant=tenant, label="pacs")[0]
    with live_server(runtime) as url:
        yield Site(url, runtime, tenant_id, key)


@pytest.fixture
def study_uid(site: Site, tmp_path: Path) -> str:
    return stage_study(site.runtime, site.tenant_id, tmp_path / "study")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


def new_page(browser: Browser, size: dict[str, object], locale: str = "nl-NL") -> Page:
    context = browser.new_context(**size, locale=locale, accept_downloads=True)  # type: ignore[arg-type]
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on(
        "console",
        lambda message: (
            errors.append(message.text)
            if message.type == "error" and "Content Security Policy" in message.text
            else None
        ),
    )
    page.js_errors = errors  # type: ignore[attr-defined]
    return page


def wait_until(page: Page, script: str, timeout: float = 10.0) -> None:
    """Poll a page expression; wait_for_function would need eval, which the CSP forbids."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(script):
        assert time.monotonic() < deadline, script
        page.wait_for_timeout(50)


def shot(page: Page, name: str, *, full: bool = False) -> None:
    page.screenshot(path=SHOTS / f"recipient-{name}.png", full_page=full)


def fits(page: Page) -> bool:
    return bool(page.evaluate("document.scrollingElement.scrollWidth <= window.innerWidth"))


def step(page: Page, name: str) -> None:
    """The section of this step is the one shown."""
    expect(page.locator(f"section.step[data-step={name}]")).to_be_visible()
    assert page.locator("section.step:visible").count() == 1


def through_terms(page: Page, site: Site, code: str) -> None:
    page.goto(f"{site.url}/?code={code}")
    expect(page).to_have_url(f"{site.url}/")
    step(page, "terms")
    page.check("#terms-accept")
    page.click("#terms-continue")
    step(page, "birth_date")


def type_birth_date(page: Page, digits: str) -> None:
    page.fill("#dob-text", "")
    page.locator("#dob-text").press_sequentially(digits)
    page.click("#dob-form button[type=submit]")


def sign_in(page: Page, site: Site, code: str) -> None:
    through_terms(page, site, code)
    type_birth_date(page, "12031975")
    step(page, "sms")
    page.fill("#sms-code", site.sms_code())
    page.click("#sms-form button[type=submit]")


# --- the whole flow, desktop ------------------------------------------------------------------


def test_recipient_reaches_views_and_downloads_the_images_on_a_desktop(
    browser: Browser, site: Site, study_uid: str
) -> None:
    _, code = site.share(study_uid)
    page = new_page(browser, DESKTOP)
    page.goto(f"{site.url}/")
    step(page, "start")
    page.fill("#open-code", "abc")
    page.click("#open-form button[type=submit]")
    expect(page.locator("#open-error")).to_contain_text("12 letters en cijfers")
    page.fill("#open-code", code.replace("-", "").lower())  # dashes optional, any case
    shot(page, "start-desktop")
    page.click("#open-form button[type=submit]")
    step(page, "terms")
    expect(page.locator("a[href='/terms']")).to_have_attribute("target", "_blank")
    expect(page.locator("#terms-continue")).to_be_disabled()
    page.check("#terms-accept")
    expect(page.locator("#terms-continue")).to_be_enabled()
    shot(page, "terms-desktop")
    page.click("#terms-continue")
    step(page, "birth_date")

    expect(page.locator("#dob-text")).to_have_attribute("placeholder", "dd-mm-jjjj")
    type_birth_date(page, "31021975")  # typed as dd-mm-jjjj: the dashes come by themselves
    expect(page.locator("#dob-text")).to_have_value("31-02-1975")
    expect(page.locator("#dob-error")).to_have_text(
        "Deze datum bestaat niet. Controleer de dag en de maand."
    )
    type_birth_date(page, "01011980")
    expect(page.locator("#dob-error")).to_have_text(
        "Deze geboortedatum klopt niet. U kunt het nog 4 keer proberen."
    )
    shot(page, "birth-date-wrong-desktop")
    type_birth_date(page, "12031975")
    step(page, "sms")
    expect(page.locator("#sms-sent")).to_contain_text("eindigt op •• 78")
    sms = page.locator("#sms-code")
    for name, value in (
        ("inputmode", "numeric"),
        ("autocomplete", "one-time-code"),
        ("maxlength", "6"),
    ):
        expect(sms).to_have_attribute(name, value)
    page.click("#sms-resend")
    expect(page.locator("#sms-info")).to_have_text(
        "Er is een nieuwe code verstuurd. Gebruik alleen de nieuwste code."
    )
    wrong = f"{(int(site.sms_code()) + 1) % 10**6:06d}"
    page.fill("#sms-code", wrong)
    page.click("#sms-form button[type=submit]")
    expect(page.locator("#sms-error")).to_contain_text("Deze code klopt niet of is verlopen.")
    shot(page, "sms-desktop")
    page.fill("#sms-code", site.sms_code())
    page.click("#sms-form button[type=submit]")

    step(page, "studies")
    expect(page.locator("#studies-institution")).to_have_text("Gedeeld door Acme Ziekenhuis")
    expect(page.locator("#studies-expiry")).to_contain_text("Beschikbaar tot")
    expect(page.locator("article.study")).to_have_count(1)
    expect(page.locator("article.study h2")).to_have_text("CT THORAX (DEMO)")
    expect(page.locator("article.study time")).to_have_text("1 januari 2026")
    series = page.locator("button.series")
    expect(series).to_have_count(3)  # two CT series and the multi-frame one; reports are no series
    expect(series.nth(0)).to_contain_text(f"{SLICES} beelden")
    expect(series.filter(has_text="CINE")).to_contain_text(f"{FRAMES} beelden")
    wait_until(page, ALL_THUMBNAILS)
    expect(page.locator("#downloads-left")).to_have_text(
        "U kunt vandaag nog 10 van de 10 keer downloaden."
    )
    pdf = page.locator("a.report-link")
    expect(pdf).to_have_attribute("target", "_blank")
    expect(pdf).to_have_attribute("rel", "noopener")
    answer = page.request.get(site.url + (pdf.get_attribute("href") or ""))
    assert answer.headers["content-type"] == "application/pdf" and answer.body()[:5] == b"%PDF-"
    shot(page, "studies-desktop", full=True)

    page.click("button.report-button")
    expect(page.locator("#report-text")).to_contain_text(SR_TEXT)  # as text, never as markup
    assert page.locator("#report-text b").count() == 0
    shot(page, "report-desktop")
    page.keyboard.press("Escape")
    expect(page.locator("#report-dialog")).to_be_hidden()

    _view_on_desktop(page)

    page.click("button.download-study")
    dialog = page.locator("#download-dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("diagnostische kwaliteit")
    expect(dialog).to_contain_text("Niet geschikt voor een diagnose")
    expect(dialog.locator("input[value=dicom]")).to_be_checked()
    shot(page, "download-desktop")
    with page.expect_download() as started:
        page.click("#download-go")
    archive = Path(started.value.path())
    assert archive.stat().st_size > 0
    with zipfile.ZipFile(archive) as zipped:
        names = zipped.namelist()
    assert "DICOMDIR" in names and len(names) > 2 * SLICES
    expect(page.locator("#download-left")).to_have_text(
        "U kunt vandaag nog 9 van de 10 keer downloaden."
    )
    page.keyboard.press("Escape")

    page.click("#logout")
    step(page, "signed_out")
    shot(page, "signed-out-desktop")
    page.goto(f"{site.url}/")
    step(page, "start")
    assert page.js_errors == []  # type: ignore[attr-defined]


def _view_on_desktop(page: Page) -> None:
    first = page.locator("button.series").first
    first.click()
    viewer = page.locator("#viewer")
    counter = page.locator("#viewer-counter")
    expect(viewer).to_be_visible()
    expect(counter).to_have_text(f"Beeld 1 / {SLICES}")
    expect(page.locator("#viewer-prev")).to_be_disabled()
    wait_until(page, VIEWER_IMAGE)
    shot(page, "viewer-desktop")
    page.keyboard.press("ArrowRight")
    expect(counter).to_have_text(f"Beeld 2 / {SLICES}")
    page.mouse.move(640, 400)
    page.mouse.wheel(0, 120)
    expect(counter).to_have_text(f"Beeld 3 / {SLICES}")
    page.click("#viewer-next")
    expect(counter).to_have_text(f"Beeld 4 / {SLICES}")
    page.keyboard.press("ArrowLeft")
    expect(counter).to_have_text(f"Beeld 3 / {SLICES}")
    page.mouse.move(640, 400)  # back over the image after clicking the button
    page.keyboard.down("Control")
    page.mouse.wheel(0, -150)
    page.keyboard.up("Control")
    expect(viewer).to_have_attribute("data-zoomed", "true")
    expect(counter).to_have_text(f"Beeld 3 / {SLICES}")  # zooming is not paging
    page.mouse.dblclick(640, 400)
    expect(viewer).to_have_attribute("data-zoomed", "false")
    page.mouse.dblclick(640, 400)
    expect(viewer).to_have_attribute("data-zoomed", "true")
    shot(page, "viewer-zoomed-desktop")
    page.keyboard.press("Escape")
    expect(viewer).to_be_hidden()
    assert page.evaluate("document.activeElement.classList.contains('series')")

    page.locator("button.series", has_text="CINE").click()
    expect(counter).to_have_text(f"Beeld 1 / {FRAMES}")
    page.keyboard.press("End")
    expect(counter).to_have_text(f"Beeld {FRAMES} / {FRAMES}")
    expect(page.locator("#viewer-image")).to_have_attribute(
        "src", re.compile(rf"/preview\?frame={FRAMES - 1}$")
    )
    wait_until(page, VIEWER_IMAGE)
    page.click("#viewer-close")
    expect(viewer).to_be_hidden()


# --- the whole flow, phone --------------------------------------------------------------------


def _touch(page: Page, kind: str, points: list[tuple[float, float]]) -> None:
    """Real touch input (pointer events of type touch), through one DevTools session a page."""
    cdp = getattr(page, "cdp", None)
    if cdp is None:
        cdp = page.cdp = page.context.new_cdp_session(page)  # type: ignore[attr-defined]
    cdp.send(
        "Input.dispatchTouchEvent",
        {
            "type": kind,
            "touchPoints": [{"x": x, "y": y, "id": i} for i, (x, y) in enumerate(points)],
        },
    )


def _swipe(page: Page, start: tuple[float, float], end: tuple[float, float]) -> None:
    _touch(page, "touchStart", [start])
    for k in range(1, 6):
        t = k / 5
        _touch(page, "touchMove", [(start[0] + (end[0] - start[0]) * t, start[1])])
    _touch(page, "touchEnd", [])


def _pinch_open(page: Page, centre: tuple[float, float]) -> None:
    x, y = centre
    _touch(page, "touchStart", [(x - 30, y), (x + 30, y)])
    for k in range(1, 6):
        _touch(page, "touchMove", [(x - 30 - 20 * k, y), (x + 30 + 20 * k, y)])
    _touch(page, "touchEnd", [])


def _double_tap(page: Page, point: tuple[float, float]) -> None:
    for _ in range(2):
        _touch(page, "touchStart", [point])
        _touch(page, "touchEnd", [])


def test_recipient_reaches_views_and_downloads_the_images_on_a_phone(
    browser: Browser, site: Site, study_uid: str
) -> None:
    _, code = site.share(study_uid)
    page = new_page(browser, PHONE)
    page.goto(f"{site.url}/?code={code}")
    step(page, "terms")
    page.click("header a.lang")  # the language switch keeps the flow where it was
    expect(page.locator("html")).to_have_attribute("lang", "en")
    step(page, "terms")
    expect(page.locator("#terms-title")).to_have_text("Terms of use")
    page.locator("label.choice").tap()
    page.locator("#terms-continue").tap()
    step(page, "birth_date")
    expect(page.locator("#dob-text")).to_have_attribute("placeholder", "dd-mm-yyyy")
    expect(page.locator("#dob-text")).to_have_attribute("inputmode", "numeric")
    picker = page.locator("#dob-picker")
    assert picker.get_attribute("type") == "date"
    box = picker.bounding_box()
    assert box and box["width"] >= 44 and box["height"] >= 44  # big enough to tap
    picker.fill(BIRTH_DATE)  # what the phone's own date picker does
    expect(page.locator("#dob-text")).to_have_value("12-03-1975")
    shot(page, "birth-date-phone")
    page.locator("#dob-form button[type=submit]").tap()
    step(page, "sms")
    expect(page.locator("#sms-sent")).to_contain_text("ending in •• 78")
    shot(page, "sms-phone")
    page.fill("#sms-code", site.sms_code())
    page.locator("#sms-form button[type=submit]").tap()

    step(page, "studies")
    expect(page.locator("#studies-institution")).to_have_text("Shared by Acme Ziekenhuis")
    expect(page.locator("article.study time")).to_have_text("1 January 2026")
    wait_until(page, ALL_THUMBNAILS)
    assert fits(page)
    shot(page, "studies-phone", full=True)

    first = page.locator("button.series").first
    first.tap()
    viewer = page.locator("#viewer")
    counter = page.locator("#viewer-counter")
    expect(counter).to_have_text(f"Image 1 / {SLICES}")
    wait_until(page, VIEWER_IMAGE)
    stage = page.locator("#viewer-stage").bounding_box()
    assert stage and stage["width"] == 390
    close = page.locator("#viewer-close").bounding_box()
    assert close and close["x"] + close["width"] <= 390
    centre = (stage["x"] + stage["width"] / 2, stage["y"] + stage["height"] / 2)
    shot(page, "viewer-phone")
    _swipe(page, (centre[0] + 120, centre[1]), (centre[0] - 120, centre[1]))
    expect(counter).to_have_text(f"Image 2 / {SLICES}")
    _swipe(page, (centre[0] + 120, centre[1]), (centre[0] - 120, centre[1]))
    expect(counter).to_have_text(f"Image 3 / {SLICES}")
    _swipe(page, (centre[0] - 120, centre[1]), (centre[0] + 120, centre[1]))
    expect(counter).to_have_text(f"Image 2 / {SLICES}")
    _pinch_open(page, centre)
    expect(viewer).to_have_attribute("data-zoomed", "true")
    shot(page, "viewer-pinched-phone")
    _swipe(page, (centre[0] + 60, centre[1]), (centre[0] - 60, centre[1]))  # pans, not pages
    expect(counter).to_have_text(f"Image 2 / {SLICES}")
    _double_tap(page, centre)
    expect(viewer).to_have_attribute("data-zoomed", "false")
    page.locator("#viewer-next").tap()
    expect(counter).to_have_text(f"Image 3 / {SLICES}")
    page.locator("#viewer-close").tap()
    expect(viewer).to_be_hidden()
    page.locator("button.series", has_text="CINE").tap()
    expect(counter).to_have_text(f"Image 1 / {FRAMES}")
    page.go_back()  # the phone's back button closes the viewer, not the page
    expect(viewer).to_be_hidden()
    step(page, "studies")

    page.locator("#download-all").tap()
    dialog = page.locator("#download-dialog")
    expect(dialog).to_contain_text("Recommended when the images are for a doctor")
    shot(page, "download-phone")
    dialog.locator("label.format-choice", has_text="DICOM").tap()
    with page.expect_download() as started:
        page.locator("#download-go").tap()
    assert Path(started.value.path()).stat().st_size > 0
    expect(page.locator("#download-started")).to_be_visible()
    expect(page.locator("#download-left")).to_have_text("You have 9 of 10 downloads left today.")
    dialog.locator("button[value=cancel]").tap()
    page.locator("#logout").tap()
    step(page, "signed_out")
    expect(page.locator("#signed-out-title")).to_have_text("You are signed out")
    shot(page, "signed-out-phone")
    assert page.js_errors == []  # type: ignore[attr-defined]


# --- the friendly panels ----------------------------------------------------------------------


def test_pending_images_are_being_prepared_until_they_are_ready(
    browser: Browser, site: Site, tmp_path: Path
) -> None:
    uid = stage_study(site.runtime, site.tenant_id, tmp_path / "busy", settle=False)
    _, code = site.share(uid)
    page = new_page(browser, PHONE)
    sign_in(page, site, code)
    step(page, "pending")
    expect(page.locator("#pending-title")).to_have_text("Uw beelden worden klaargezet")
    expect(page.locator("section[data-step=pending]")).to_contain_text("tot 24 uur")
    expect(page.locator("#logout")).to_be_visible()
    assert page.locator("#page-error").is_hidden()
    shot(page, "pending-phone")
    settle_study(site.runtime, site.tenant_id, uid)
    page.locator("#pending-retry").tap()
    step(page, "studies")
    expect(page.locator("button.series")).to_have_count(3)


def test_wrong_birth_dates_count_down_then_lock_the_link(
    browser: Browser, site: Site, study_uid: str
) -> None:
    _, code = site.share(study_uid)
    page = new_page(browser, DESKTOP)
    through_terms(page, site, code)
    error = page.locator("#dob-error")
    for left in ("4 keer", "3 keer", "2 keer", "1 keer"):
        type_birth_date(page, "01011980")
        expect(error).to_have_text(
            f"Deze geboortedatum klopt niet. U kunt het nog {left} proberen."
        )
    type_birth_date(page, "01011980")
    step(page, "locked")
    expect(page.locator("section[data-step=locked]")).to_contain_text("24 uur geblokkeerd")
    shot(page, "locked-desktop")
    other = new_page(browser, DESKTOP)  # the lock is the link's, not the browser's
    through_terms(other, site, code)
    type_birth_date(other, "12031975")
    step(other, "locked")


def test_a_revoked_link_says_whom_to_ask_for_a_new_one(
    browser: Browser, site: Site, study_uid: str
) -> None:
    share_id, code = site.share(study_uid)
    page = new_page(browser, PHONE)
    sign_in(page, site, code)
    step(page, "studies")
    httpx.delete(
        f"{site.url}/api/v1/shares/{share_id}", headers={"Authorization": f"Bearer {site.key}"}
    ).raise_for_status()
    page.reload()
    step(page, "ended")
    expect(page.locator("#ended-title")).to_have_text("Deze link werkt niet meer")
    expect(page.locator("#ended-reason")).to_have_text(
        "De zorginstelling heeft de link ingetrokken."
    )
    expect(page.locator("#ended-ask")).to_have_text("Vraag Acme Ziekenhuis om een nieuwe link.")
    shot(page, "ended-phone")


def test_an_ended_link_names_no_institution_before_the_birth_date(
    browser: Browser, site: Site, study_uid: str
) -> None:
    share_id, code = site.share(study_uid)
    page = new_page(browser, PHONE)
    through_terms(page, site, code)
    httpx.delete(
        f"{site.url}/api/v1/shares/{share_id}", headers={"Authorization": f"Bearer {site.key}"}
    ).raise_for_status()
    type_birth_date(page, "01011990")  # any date: the link itself has ended
    step(page, "ended")
    expect(page.locator("#ended-ask")).to_have_text(
        "Vraag de zorginstelling die de beelden met u deelde om een nieuwe link."
    )
    assert "Acme" not in page.content()


def test_the_days_last_download_is_announced_before_the_limit_page(
    browser: Browser, site: Site, study_uid: str
) -> None:
    site.runtime.settings.daily_download_limit = 1
    _, code = site.share(study_uid)
    page = new_page(browser, DESKTOP)
    sign_in(page, site, code)
    expect(page.locator("#downloads-left")).to_have_text(
        "U kunt vandaag nog 1 van de 1 keer downloaden."
    )
    page.click("#download-all")
    page.check("#download-dialog input[value=jpeg]")
    with page.expect_download() as started:
        page.click("#download-go")
    with zipfile.ZipFile(started.value.path()) as zipped:
        assert any(name.lower().endswith((".jpg", ".jpeg")) for name in zipped.namelist())
    expect(page.locator("#download-limit")).to_be_visible()
    expect(page.locator("#download-go")).to_be_disabled()
    shot(page, "download-limit-desktop")
    page.reload()  # the count is the server's, not only this page's
    step(page, "studies")
    page.click("button.download-study")
    expect(page.locator("#download-limit")).to_contain_text("maximale aantal downloads")
    expect(page.locator("#download-go")).to_be_disabled()
    page.goto(f"{site.url}/api/v1/recipient/download?format=dicom&study=all")
    expect(page.locator("h1")).to_have_text("Daglimiet bereikt")
    shot(page, "download-limit-page-desktop")


def test_a_link_clicked_on_another_site_reaches_the_terms(
    browser: Browser, site: Site, study_uid: str
) -> None:
    """A mail or QR app opens the link cross-site: the Strict session cookie must still hold."""
    _, code = site.share(study_uid)
    page = new_page(browser, PHONE)
    page.set_content(f'<a id="mail-link" href="{site.url}/?code={code}">Open your images</a>')
    page.click("#mail-link")
    expect(page).to_have_url(f"{site.url}/")
    step(page, "terms")
    assert code not in page.content()
