"""Tenant isolation on every share API, studies API, staff portal and recipient route: one
institution's key, staff or recipient never reaches another's studies, shares or trail.

The probes are keyed by route; a route added without a probe here fails the first test.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.integration.recipient_flow import Link, browser, create_link, share_row, sign_in
from tests.integration.test_shares import PATIENT, stage
from tests.routes import app_routes
from zorgbericht import worker
from zorgbericht.app import create_app
from zorgbericht.db import transaction
from zorgbericht.runtime import Runtime
from zorgbericht.staff import service as staff
from zorgbericht.tenants import service as tenants

pytestmark = [pytest.mark.peers, pytest.mark.parametrize("storage", ["file"], indirect=True)]
OTHER_PATIENT = {**PATIENT, "PatientID": "OTH-7", "PatientName": "PIETERS^ANNA"}
PASSWORD = "correct horse battery"
# Routes without another tenant's data to reach, and why.
NO_TENANT_DATA = {
    ("GET", "/staff/login"): "the sign-in form",
    ("POST", "/staff/login"): "checks a password; tested in test_staff",
    ("POST", "/staff/logout"): "drops the cookie",
    ("GET", "/staff"): "an empty search form",
    ("POST", "/api/v1/recipient/open"): "unknown codes answer alike: test_recipients",
    ("POST", "/api/v1/recipient/terms"): "the session's own share only",
    ("POST", "/api/v1/recipient/birth-date"): "the session's own share only",
    ("POST", "/api/v1/recipient/sms-code"): "the session's own share only",
    ("POST", "/api/v1/recipient/sms-code/resend"): "the session's own share only",
    ("POST", "/api/v1/recipient/logout"): "the session's own row only",
    ("GET", "/"): "the recipient page; its data comes from the API",
    ("GET", "/terms"): "the terms of use",
    ("GET", "/healthz"): "says the service is up",
}


@dataclass
class Side:
    """One institution: its staged study, a share, and clients acting for it."""

    slug: str
    study_uid: str
    link: Link
    api: TestClient
    staff: TestClient
    staff_csrf: str
    recipient: TestClient


@dataclass
class World:
    rt: Runtime
    ours: Side
    theirs: Side


def _side(
    rt: Runtime, app: FastAPI, slug: str, folder: Path, patient: dict[str, str], tenant_id: int
) -> Side:
    with transaction(rt.sessions) as db:
        tenant = tenants.get_tenant(session=db, slug=slug)
        key = tenants.create_api_key(session=db, tenant=tenant, label=slug)[0]
        tenants.create_user(
            session=db, tenant=tenant, email=f"staff@{slug}.nl", password=PASSWORD, role="staff"
        )
    uid = stage(rt, tenant_id, folder, patient=patient)
    api = TestClient(app)
    api.headers["Authorization"] = f"Bearer {key}"
    link = create_link(api, [uid])
    worker.run_once(rt)
    recipient = browser(rt, app)
    birth = patient["PatientBirthDate"]
    sign_in(recipient, rt, link.code, birth_date=f"{birth[:4]}-{birth[4:6]}-{birth[6:]}")
    portal = browser(rt, app)
    signed = portal.post(
        "/staff/login",
        data={"email": f"staff@{slug}.nl", "password": PASSWORD},
        follow_redirects=False,
    )
    assert signed.status_code == 303
    csrf = staff.csrf_token(
        cookie=portal.cookies[staff.COOKIE], secret=rt.settings.secret_key.get_secret_value()
    )
    return Side(slug, uid, link, api, portal, csrf, recipient)


@pytest.fixture
def app(runtime: Runtime) -> Iterator[FastAPI]:
    runtime.settings.public_url = "http://zb.test"
    made = create_app(runtime=runtime)
    with TestClient(made):
        yield made


@pytest.fixture
def world(runtime: Runtime, app: FastAPI, tenant_id: int, tmp_path: Path) -> World:
    with transaction(runtime.sessions) as db:
        other = tenants.create_tenant(session=db, slug="other", name="Other", ae_titles=["OTH"])
        other_id = other.id
    ours = _side(runtime, app, "acme", tmp_path / "ours", PATIENT, tenant_id)
    theirs = _side(runtime, app, "other", tmp_path / "theirs", OTHER_PATIENT, other_id)
    return World(runtime, ours, theirs)


def _instance_ids(client: TestClient) -> list[int]:
    listing = client.get("/api/v1/recipient/studies").json()
    urls = [i["preview_url"] for s in listing["studies"] for r in s["series"] for i in r["images"]]
    return [int(re.search(r"/images/([0-9]+)/", url).group(1)) for url in urls]  # type: ignore[union-attr]


# -- probes: ours acts, theirs is what it must not reach -----------------------------------


def studies_api(w: World) -> None:
    listed = w.ours.api.get("/api/v1/studies").json()
    assert [s["study_uid"] for s in listed] == [w.ours.study_uid]
    by_patient = w.ours.api.get("/api/v1/studies", params={"patient_id": "OTH-7"}).json()
    assert by_patient == []


def create_share(w: World) -> None:
    answer = w.ours.api.post(
        "/api/v1/shares",
        json={"study_uids": [w.theirs.study_uid], "recipient": "patient", "delivery": "url",
              "phone": "0612345678"},
    )  # fmt: skip
    unknown = "1.2.3.4.5.6.7.8.9"
    stranger = w.ours.api.post(
        "/api/v1/shares",
        json={"study_uids": [unknown], "recipient": "patient", "delivery": "url",
              "phone": "0612345678"},
    )  # fmt: skip
    # Their study is answered exactly as a study that exists nowhere.
    assert answer.status_code == stranger.status_code == 422
    assert answer.json() == {
        "detail": stranger.json()["detail"].replace(unknown, w.theirs.study_uid)
    }


def list_shares(w: World) -> None:
    ids = [s["id"] for s in w.ours.api.get("/api/v1/shares").json()]
    assert ids == [w.ours.link.share_id]
    assert w.ours.api.get("/api/v1/shares", params={"patient_id": "OTH-7"}).json() == []


def one_share(method: str, suffix: str) -> Callable[[World], None]:
    def probe(w: World) -> None:
        path = f"/api/v1/shares/{w.theirs.link.share_id}{suffix}"
        assert w.ours.api.request(method, path).status_code == 404
        assert w.theirs.api.request("GET", path.removesuffix(suffix)).status_code == 200

    return probe


def revoke(w: World) -> None:
    one_share("DELETE", "")(w)
    assert share_row(w.rt, w.theirs.link.share_id).state == "ready"


def staff_search(w: World) -> None:
    page = w.ours.staff.post(
        "/staff/search", data={"csrf": w.ours.staff_csrf, "patient_id": "OTH-7"}
    )
    assert page.status_code == 200 and w.theirs.study_uid not in page.text
    own = w.ours.staff.post(
        "/staff/search", data={"csrf": w.ours.staff_csrf, "patient_id": "PAT-0042"}
    )
    assert w.ours.study_uid in own.text  # the probe can see what it is allowed to


def staff_new(w: World) -> None:
    def form(uid: str) -> str:
        page = w.ours.staff.get("/staff/new", params={"study": uid})
        assert page.status_code == 200
        return page.text.replace(uid, "UID")

    unknown = "1.2.3.4.5.6.7.8.9"
    assert form(w.theirs.study_uid) == form(unknown)  # shown as a study staged nowhere
    assert form(w.ours.study_uid) != form(unknown)  # the probe sees what it may


def staff_create(w: World) -> None:
    page = w.ours.staff.post(
        "/staff/shares",
        data={"csrf": w.ours.staff_csrf, "study_uids": w.theirs.study_uid, "recipient": "patient",
              "delivery": "url", "phone": "0612345678", "language": "nl"},
    )  # fmt: skip
    assert page.status_code == 422
    assert len(w.ours.api.get("/api/v1/shares").json()) == 1


def staff_shares(w: World) -> None:
    page = w.ours.staff.get("/staff/shares")
    assert page.status_code == 200
    assert "PAT-0042" in page.text and "OTH-7" not in page.text


def staff_letter(w: World) -> None:
    answer = w.ours.staff.get(f"/staff/shares/{w.theirs.link.share_id}/letter.pdf")
    assert answer.status_code == 404


def pacs_launch(w: World) -> None:
    with transaction(w.rt.sessions) as db:
        mine = tenants.get_tenant(session=db, slug="acme")
        token = staff.launch_link_token(
            tenant=mine, email="staff@acme.nl", study_uids=[w.theirs.study_uid]
        )
    forged = browser(w.rt, w.ours.staff.app).get(
        "/staff/share", params={"tenant": "other", "token": token}, follow_redirects=False
    )
    assert forged.status_code == 400


def recipient_studies(w: World) -> None:
    listing = w.ours.recipient.get("/api/v1/recipient/studies").json()
    assert [s["study_uid"] for s in listing["studies"]] == [w.ours.study_uid]


def recipient_image(w: World) -> None:
    for instance in _instance_ids(w.theirs.recipient):
        for kind in ("thumbnail", "preview"):
            answer = w.ours.recipient.get(f"/api/v1/recipient/images/{instance}/{kind}")
            assert answer.status_code == 404


def recipient_report(w: World) -> None:
    for instance in _instance_ids(w.theirs.recipient):
        assert w.ours.recipient.get(f"/api/v1/recipient/reports/{instance}").status_code == 404


def recipient_download(w: World) -> None:
    answer = w.ours.recipient.get(
        "/api/v1/recipient/download", params={"format": "dicom", "study": w.theirs.study_uid}
    )
    assert answer.status_code == 404


PROBES: dict[tuple[str, str], Callable[[World], None]] = {
    ("GET", "/api/v1/studies"): studies_api,
    ("POST", "/api/v1/shares"): create_share,
    ("GET", "/api/v1/shares"): list_shares,
    ("GET", "/api/v1/shares/{share_id}"): one_share("GET", ""),
    ("GET", "/api/v1/shares/{share_id}/letter.pdf"): one_share("GET", "/letter.pdf"),
    ("GET", "/api/v1/shares/{share_id}/audit"): one_share("GET", "/audit"),
    ("DELETE", "/api/v1/shares/{share_id}"): revoke,
    ("POST", "/staff/search"): staff_search,
    ("GET", "/staff/new"): staff_new,
    ("POST", "/staff/shares"): staff_create,
    ("GET", "/staff/shares"): staff_shares,
    ("GET", "/staff/shares/{share_id}/letter.pdf"): staff_letter,
    ("GET", "/staff/share"): pacs_launch,
    ("GET", "/api/v1/recipient/studies"): recipient_studies,
    ("GET", "/api/v1/recipient/images/{instance_id}/{kind}"): recipient_image,
    ("GET", "/api/v1/recipient/reports/{instance_id}"): recipient_report,
    ("GET", "/api/v1/recipient/download"): recipient_download,
}


def test_every_route_has_an_isolation_probe_or_a_reason_it_needs_none(app: FastAPI) -> None:
    covered = set(PROBES) | set(NO_TENANT_DATA)
    assert {r for r in app_routes(app) if not r[1].startswith("/admin")} == covered


def test_another_institution_is_out_of_reach_on_every_route(world: World) -> None:
    """One world per database, every probe against it (none of them changes anything)."""
    failures = {}
    for route, probe in sorted(PROBES.items()):
        try:
            probe(world)
        except AssertionError as exc:
            failures[" ".join(route)] = str(exc)[:400]
    assert failures == {}
