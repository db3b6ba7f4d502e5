"""The recipient API of DESIGN §8 and the pages that use it."""

from __future__ import annotations

import hmac
import io
import logging
from datetime import date
from typing import Annotated, Literal

import pydicom
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field, field_validator
from sqlalchemy.orm import Session

from zorgbericht.audit import service as audit
from zorgbericht.db import utcnow
from zorgbericht.deps import RuntimeDep, SessionDep
from zorgbericht.errors import Forbidden, NotFound, TooMany, Unauthorized, Unreadable
from zorgbericht.recipients import archive, gate, reports, sessions, throttle
from zorgbericht.recipients import service as recipients
from zorgbericht.recipients.models import RecipientSession
from zorgbericht.runtime import Runtime
from zorgbericht.shares import codes
from zorgbericht.shares.models import Share
from zorgbericht.staging.service import preview_key
from zorgbericht.tenants.models import Tenant
from zorgbericht.web.pages import render

log = logging.getLogger(__name__)
api = APIRouter(prefix="/api/v1/recipient", tags=["recipient"])
pages = APIRouter(include_in_schema=False)


class OpenIn(BaseModel):
    code: str = Field(max_length=32, description="the link code, XXXX-XXXX-XXXX")


class TermsIn(BaseModel):
    accepted: Literal[True]


class BirthDateIn(BaseModel):
    birth_date: date

    @field_validator("birth_date")
    @classmethod
    def _plausible(cls, value: date) -> date:
        if value.year < 1880 or value > date.today():
            raise ValueError("a date of birth lies between 1880 and today")
        return value


class SmsCodeIn(BaseModel):
    code: str = Field(max_length=16, description="the 6 digits from the SMS")


def current_session(
    request: Request, session: SessionDep, runtime: RuntimeDep
) -> RecipientSession | None:
    """The browser's live recipient session, or None."""
    return sessions.find(
        session=session,
        token=request.cookies.get(sessions.COOKIE),
        timeouts=sessions.Timeouts.of(runtime.settings),
        now=utcnow(),
    )


MaybeRecipient = Annotated[RecipientSession | None, Depends(current_session)]


def _posting(request: Request, runtime: Runtime, row: RecipientSession | None) -> RecipientSession:
    """A live session whose CSRF header matches; every POST after open needs both."""
    if row is None:
        raise Unauthorized("open the link again: this session has ended")
    expected = sessions.csrf_token(row, runtime.settings.secret_key.get_secret_value())
    given = request.headers.get(sessions.CSRF_HEADER, "")
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Forbidden("the CSRF token is missing or wrong; reload the page")
    return row


def _gate(request: Request, runtime: Runtime) -> gate.Gate:
    return gate.Gate(runtime.settings, sessions.actor(request, None, None), utcnow())


def _throttle(session: Session, request: Request, runtime: Runtime, g: gate.Gate) -> None:
    """Per-address limit on the gate, behind the per-share counters."""
    settings = runtime.settings
    hits = throttle.hit(
        session=session,
        scope="recipient-gate",
        address=sessions.client_ip(request) or "unknown",
        secret=g.secret,
        window=settings.recipient_ip_window,
        now=g.now,
    )
    if hits <= settings.recipient_ip_limit:
        return
    if hits == settings.recipient_ip_limit + 1:  # once per window, not per request
        audit.record(
            session=session,
            event=audit.Ev.recipient_throttled,
            actor=g.actor,
            tenant_id=None,
            outcome=audit.Outcome.serious_failure,
        )
    retry = int(settings.recipient_ip_window.total_seconds())
    raise TooMany(
        "too many attempts from this address; wait a while and try again",
        headers={"Retry-After": str(retry)},
        reason="throttled",
    )


def _opened(response: Response, runtime: Runtime, row: RecipientSession, token: str) -> Response:
    csrf = sessions.csrf_token(row, runtime.settings.secret_key.get_secret_value())
    sessions.set_cookies(
        response, token=token, csrf=csrf, max_age=runtime.settings.recipient_max_age
    )
    return response


@api.post("/open")
def open_link(
    body: OpenIn, request: Request, session: SessionDep, runtime: RuntimeDep, row: MaybeRecipient
) -> JSONResponse:
    """Exchange a link code for a session; any well-formed code answers alike."""
    g = _gate(request, runtime)
    _throttle(session, request, runtime, g)
    new, token = gate.open_link(session=session, gate=g, code=body.code, previous=row)
    csrf = sessions.csrf_token(new, runtime.settings.secret_key.get_secret_value())
    return _opened(JSONResponse({"csrf_token": csrf, "step": "terms"}), runtime, new, token)  # type: ignore[return-value]


@api.post("/terms")
def accept_terms(
    body: TermsIn, request: Request, session: SessionDep, runtime: RuntimeDep, row: MaybeRecipient
) -> dict[str, str]:
    live = _posting(request, runtime, row)
    gate.accept_terms(session=session, gate=_gate(request, runtime), row=live)
    return {"step": "birth_date"}


@api.post("/birth-date")
def birth_date(
    body: BirthDateIn,
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
    row: MaybeRecipient,
) -> dict[str, object]:
    live = _posting(request, runtime, row)
    g = _gate(request, runtime)
    _throttle(session, request, runtime, g)
    return gate.check_birth_date(
        session=session, gate=g, row=live, birth_date=body.birth_date, sms=runtime.sms
    )


@api.post("/sms-code")
def sms_code(
    body: SmsCodeIn,
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
    row: MaybeRecipient,
) -> JSONResponse:
    live = _posting(request, runtime, row)
    g = _gate(request, runtime)
    _throttle(session, request, runtime, g)
    signed_in = gate.check_code(session=session, gate=g, row=live, code=body.code)
    token = gate.rotate(signed_in)
    csrf = sessions.csrf_token(signed_in, runtime.settings.secret_key.get_secret_value())
    return _opened(JSONResponse({"step": "studies", "csrf_token": csrf}), runtime, signed_in, token)  # type: ignore[return-value]


@api.post("/sms-code/resend")
def resend(
    request: Request, session: SessionDep, runtime: RuntimeDep, row: MaybeRecipient
) -> dict[str, bool]:
    live = _posting(request, runtime, row)
    g = _gate(request, runtime)
    _throttle(session, request, runtime, g)
    gate.resend_code(session=session, gate=g, row=live, sms=runtime.sms)
    return {"sms_sent": True}


@api.post("/logout", status_code=204)
def logout(
    request: Request, session: SessionDep, runtime: RuntimeDep, row: MaybeRecipient
) -> Response:
    live = _posting(request, runtime, row)
    gate.log_out(session=session, gate=_gate(request, runtime), row=live)
    response = Response(status_code=204)
    sessions.clear_cookies(response)
    return response


def _signed_in(
    request: Request, session: Session, row: RecipientSession | None
) -> tuple[RecipientSession, Share, audit.Actor]:
    live = gate.require_signed_in(row)
    share = session.get(Share, live.share_id)
    actor = sessions.actor(request, live, share.recipient if share else None)
    return live, recipients.live_share(session=session, row=live, actor=actor, now=utcnow()), actor


@api.get("/studies")
def studies(
    request: Request, session: SessionDep, runtime: RuntimeDep, row: MaybeRecipient
) -> dict[str, object]:
    """The share's studies, series and images; ``pending`` while they are being prepared."""
    _, share, actor = _signed_in(request, session, row)
    return recipients.list_studies(
        session=session,
        share=share,
        actor=actor,
        limit=runtime.settings.daily_download_limit,
        now=utcnow(),
    )


@api.get("/images/{instance_id}/{kind}")
def image(
    instance_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    kind: Literal["thumbnail", "preview"],
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
    row: MaybeRecipient,
    frame: Annotated[int, Query(ge=0)] = 0,
) -> Response:
    """A JPEG of one image of the share (a preview per frame, a thumbnail of the first)."""
    live, share, actor = _signed_in(request, session, row)
    instance = recipients.shared_instance(session=session, share=share, instance_id=instance_id)
    if frame >= instance.frames or (kind == "thumbnail" and frame):
        raise NotFound("no such frame")
    key = preview_key(instance.object_key, "thumb" if kind == "thumbnail" else "preview", frame)
    try:
        data = runtime.store.get_bytes(key)
    except KeyError:
        raise NotFound("this image has no preview") from None
    if kind == "preview":  # after the read: the audit chain's lock is held until commit
        recipients.note_view(
            session=session, share=share, row=live, instance=instance, actor=actor, now=utcnow()
        )
    return Response(data, media_type="image/jpeg")


@api.get("/reports/{instance_id}")
def report(
    instance_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
    row: MaybeRecipient,
) -> Response:
    """A report of the share: SR as plain text, an encapsulated PDF as the PDF."""
    _, share, actor = _signed_in(request, session, row)
    instance = recipients.shared_instance(session=session, share=share, instance_id=instance_id)
    kind = reports.is_report(instance.sop_class_uid)
    if kind is None:
        raise NotFound("no such report")
    try:
        dataset = pydicom.dcmread(io.BytesIO(runtime.store.get_bytes(instance.object_key)))
        if kind == "pdf":
            answer = Response(
                reports.encapsulated_pdf(dataset),
                media_type="application/pdf",
                headers={"Content-Disposition": 'inline; filename="report.pdf"'},
            )
        else:
            answer = Response(reports.sr_text(dataset), media_type="text/plain; charset=utf-8")
    except KeyError:
        raise NotFound("this report is no longer stored") from None
    except Exception as exc:  # whatever a malformed stored report makes pydicom raise
        log.warning("report %s unreadable: %s", instance.id, type(exc).__name__)
        raise Unreadable("this report cannot be shown; download the DICOM files instead") from None
    recipients.note_report(session=session, share=share, instance=instance, actor=actor)
    return answer


@api.get("/download", response_model=None)
def download(
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
    row: MaybeRecipient,
    format: Annotated[Literal["dicom", "jpeg"], Query()],
    study: Annotated[str, Query(max_length=64)] = "all",
) -> Response:
    """A streamed ZIP of one study or all; counted against the day's limit before it starts."""
    live, share, actor = _signed_in(request, session, row)
    wanted = recipients.DownloadRequest(format, study)
    ids = wanted.study_ids(session, share)
    limit = runtime.settings.daily_download_limit
    try:
        studies = archive.archive_studies(session, ids)
        uids = [s.study_uid for s in studies]
        recipients.refuse_when_spent(
            session=session,
            share=share,
            request=wanted,
            study_uids=uids,
            limit=limit,
            actor=actor,
            now=utcnow(),
        )
        # Sizes and old headers come from the store: no transaction stays open meanwhile
        # (on SQLite it would hold the database's write lock).
        session.commit()
        zs = (archive.dicom_zip if format == "dicom" else archive.jpeg_zip)(runtime.store, studies)
        size = len(zs)
        recipients.reserve_download(
            session=session,
            row=live,
            request=wanted,
            size=size,
            study_uids=uids,
            limit=limit,
            actor=actor,
            now=utcnow(),
        )
    except TooMany:
        if "text/html" not in request.headers.get("accept", ""):
            raise
        return render(
            request,
            "recipient/message.html",
            429,
            title_key="download_limit_title",
            message_key="download_limit",
            institution=None,
            csrf=None,
            lang_base="/",  # the language link must not reload the download URL
        )
    name = f"{'dicom' if format == 'dicom' else 'images'}-{live.share_id}.zip"
    return StreamingResponse(
        archive.stream_zip(zs),
        media_type="application/zip",
        headers={
            "Content-Length": str(size),
            "Content-Disposition": f'attachment; filename="{name}"',
        },
    )


def _step(row: RecipientSession | None) -> str:
    if row is None:
        return "start"
    if row.terms_accepted_at is None:
        return "terms"
    if row.birth_date_ok_at is None:
        return "birth_date"
    return "sms" if row.signed_in_at is None else "studies"


@pages.get("/")
def landing(
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
    row: MaybeRecipient,
    code: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """The recipient's page; a ``?code=`` is moved into the session cookie at once."""
    if code is not None:
        # Not a 303: after a cross-site click (mail, QR app) the browser would not send the
        # SameSite=Strict cookie on the redirect. This page moves on to "/" from our own site.
        response = render(request, "recipient/continue.html")
        g = _gate(request, runtime)
        _throttle(session, request, runtime, g)
        if codes.normalise(code) is not None:
            new, token = gate.open_link(session=session, gate=g, code=code, previous=row)
            _opened(response, runtime, new, token)
        return response
    share = session.get(Share, row.share_id) if row and row.birth_date_ok_at else None
    tenant = session.get(Tenant, share.tenant_id) if share else None
    secret = runtime.settings.secret_key.get_secret_value()
    return render(
        request,
        "recipient/index.html",
        step=_step(row),
        institution=tenant.name if tenant else None,
        csrf=sessions.csrf_token(row, secret) if row else None,
        phone_hint=gate.phone_hint(share) if share else None,
        daily_limit=runtime.settings.daily_download_limit,
    )


@pages.get("/terms")
def terms(request: Request) -> Response:
    return render(request, "recipient/terms.html")
