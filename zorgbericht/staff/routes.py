"""The staff portal: sign in, find staged studies, share them, see the tenant's shares."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session

from zorgbericht.audit import service as audit
from zorgbericht.db import utcnow
from zorgbericht.delivery import service as delivery
from zorgbericht.deps import RuntimeDep, SessionDep, StoreDep
from zorgbericht.errors import DomainError
from zorgbericht.runtime import Runtime
from zorgbericht.shares import service as shares
from zorgbericht.shares.schemas import ShareIn
from zorgbericht.staff import service as staff
from zorgbericht.staging import service as staging
from zorgbericht.tenants import service as tenants
from zorgbericht.tenants.models import StaffUser, Tenant
from zorgbericht.web.pages import pdf_response, render

router = APIRouter(prefix="/staff", include_in_schema=False)


class SignInRequired(Exception):
    """Turned into a redirect to the sign-in page."""


def staff_actor(request: Request, user: StaffUser | None = None) -> audit.Actor:
    return audit.Actor(
        "staff",
        f"staff:{user.id}" if user else None,
        ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
    )


def current_staff(request: Request, session: SessionDep, runtime: RuntimeDep) -> StaffUser:
    user = staff.user_from_cookie(
        session=session,
        cookie=request.cookies.get(staff.COOKIE),
        secret=runtime.settings.secret_key.get_secret_value(),
    )
    if user is None:
        raise SignInRequired
    return user


CurrentStaff = Annotated[StaffUser, Depends(current_staff)]


def _page(
    request: Request,
    runtime: Runtime,
    session: Session,
    user: StaffUser,
    template: str,
    status_code: int = 200,
    **context: object,
) -> Response:
    """Render a portal page; uses the request's session (a second one would wait on it)."""
    cookie = request.cookies.get(staff.COOKIE, "")
    tenant = session.get(Tenant, user.tenant_id)
    return render(
        request,
        template,
        status_code,
        user=user,
        tenant=tenant,
        csrf=staff.csrf_token(cookie=cookie, secret=secret_key(runtime)),
        **context,
    )


def secret_key(runtime: Runtime) -> str:
    return runtime.settings.secret_key.get_secret_value()


def check_csrf(request: Request, runtime: Runtime, token: str) -> None:
    if not staff.check_csrf(
        cookie=request.cookies.get(staff.COOKIE, ""), secret=secret_key(runtime), token=token
    ):
        raise SignInRequired


def _signed_in(response: Response, user: StaffUser, runtime: Runtime) -> Response:
    response.set_cookie(
        staff.COOKIE,
        staff.session_cookie(user=user, secret=secret_key(runtime)),
        max_age=staff.SESSION_SECONDS,
        secure=True,
        httponly=True,
        samesite="strict",
        path="/",
    )
    return response


@router.get("/login")
def login_page(request: Request) -> Response:
    return render(request, "staff/login.html", error=None, email="")


@router.post("/login")
def login(
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
    email: Annotated[str, Form(max_length=320)],
    password: Annotated[str, Form(max_length=1024)],
) -> Response:
    user = staff.sign_in(
        session=session, email=email, password=password, actor=staff_actor(request)
    )
    if user is None:
        return render(request, "staff/login.html", 400, error="bad_login", email=email)
    return _signed_in(RedirectResponse("/staff", status_code=303), user, runtime)


@router.post("/logout")
def logout(request: Request, runtime: RuntimeDep, csrf: Annotated[str, Form()] = "") -> Response:
    check_csrf(request, runtime, csrf)
    response = RedirectResponse("/staff/login", status_code=303)
    response.delete_cookie(staff.COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return response


@router.get("")
def home(
    request: Request, user: CurrentStaff, session: SessionDep, runtime: RuntimeDep
) -> Response:
    return _page(request, runtime, session, user, "staff/home.html", patient_id="", studies=None)


@router.post("/search")
def search(
    request: Request,
    user: CurrentStaff,
    session: SessionDep,
    runtime: RuntimeDep,
    csrf: Annotated[str, Form()],
    patient_id: Annotated[str, Form(max_length=64)],
) -> Response:
    """Find staged studies by patient ID (a POST: the ID stays out of URLs and history)."""
    check_csrf(request, runtime, csrf)
    patient_id = patient_id.strip()
    found = staging.list_studies(session=session, tenant_id=user.tenant_id, patient_id=patient_id)
    audit.record(
        session=session,
        event=audit.Ev.studies_queried,
        actor=staff_actor(request, user),
        tenant_id=user.tenant_id,
        patient_id=patient_id,
        study_uids=[s.study_uid for s in found],
        details={"matches": len(found)},
    )
    return _page(
        request, runtime, session, user, "staff/home.html", patient_id=patient_id, studies=found
    )


@router.get("/new")
def new_share(
    request: Request,
    user: CurrentStaff,
    runtime: RuntimeDep,
    session: SessionDep,
    study: Annotated[list[str], Query(max_length=100)] = (),
) -> Response:  # type: ignore[assignment]
    return _form(request, runtime, session, user, list(study))


def _form(
    request: Request,
    runtime: Runtime,
    session: Session,
    user: StaffUser,
    study_uids: list[str],
    values: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    tenant = session.get(Tenant, user.tenant_id)
    staged = {
        s.study_uid: s for s in staging.list_studies(session=session, tenant_id=user.tenant_id)
    }
    defaults = {
        "recipient": "patient",
        "delivery": "email",
        "email": "",
        "phone": "",
        "language": tenant.default_language if tenant else "nl",
    }
    return _page(
        request,
        runtime,
        session,
        user,
        "staff/new.html",
        status_code,
        study_uids=study_uids,
        staged=staged,
        values={**defaults, **(values or {})},
        errors=errors or {},
    )


@router.post("/shares")
def create(
    request: Request,
    user: CurrentStaff,
    session: SessionDep,
    runtime: RuntimeDep,
    store: StoreDep,
    csrf: Annotated[str, Form()],
    study_uids: Annotated[list[str], Form()],
    recipient: Annotated[str, Form()],
    delivery_kind: Annotated[str, Form(alias="delivery")],
    phone: Annotated[str, Form()],
    language: Annotated[str, Form()],
    email: Annotated[str, Form()] = "",
) -> Response:
    """Create the share from the form; on a problem, the form again with what to fix."""
    check_csrf(request, runtime, csrf)
    values = {
        "recipient": recipient,
        "delivery": delivery_kind,
        "email": email,
        "phone": phone,
        "language": language,
    }
    try:
        share_in = ShareIn(
            study_uids=study_uids,
            recipient=recipient,
            delivery=delivery_kind,
            email=email or None,
            phone=phone,
            language=language,
        )
    except ValidationError as exc:
        errors = {
            str(e["loc"][0]) if e["loc"] else "form": str(e["msg"]).removeprefix("Value error, ")
            for e in exc.errors()
        }
        tenant_id, actor = user.tenant_id, staff_actor(request, user)  # before the rollback
        session.rollback()  # SQLite allows one writer: free it before the refusal is kept
        shares.record_refusal(
            sessions=runtime.sessions,
            tenant_id=tenant_id,
            actor=actor,
            study_uids=study_uids,
            reason="; ".join(f"{k}: {v}" for k, v in errors.items()),
        )
        return _form(request, runtime, session, user, study_uids, values, errors, 422)
    tenant = session.get(Tenant, user.tenant_id)
    assert tenant is not None
    now, actor = utcnow(), staff_actor(request, user)
    try:
        created = shares.create_share(
            session=session,
            tenant=tenant,
            actor=actor,
            share_in=share_in,
            settings=runtime.settings,
            pacs=runtime.pacs,
            now=now,
        )
    except DomainError as exc:
        tenant_id = user.tenant_id  # before the rollback expires it
        session.rollback()
        shares.record_refusal(
            sessions=runtime.sessions,
            tenant_id=tenant_id,
            actor=actor,
            study_uids=study_uids,
            reason=exc.detail,
        )
        return _form(request, runtime, session, user, study_uids, values, {"form": exc.detail}, 422)
    delivery.deliver_new_share(
        session=session,
        store=store,
        share=created.share,
        tenant=tenant,
        url=created.url,
        code=created.code,
        sender_domain=runtime.settings.mail_from.split("@")[-1],
        now=now,
    )
    share = created.share
    return _page(
        request,
        runtime,
        session,
        user,
        "staff/result.html",
        201,
        share=share,
        url=created.url if share.delivery in ("url", "letter") else None,
        expires=delivery.format_moment(share.expires_at, share.language),
    )


@router.get("/shares")
def list_page(
    request: Request, user: CurrentStaff, session: SessionDep, runtime: RuntimeDep
) -> Response:
    found = shares.list_shares(session=session, tenant_id=user.tenant_id)
    now = utcnow()
    rows = [(s, shares.effective_state(s, now)) for s in found]
    audit.record(
        session=session,
        event=audit.Ev.shares_listed,
        actor=staff_actor(request, user),
        tenant_id=user.tenant_id,
        details={"matches": len(found)},
    )
    return _page(request, runtime, session, user, "staff/shares.html", rows=rows)


@router.get("/shares/{share_id}/letter.pdf")
def letter(
    request: Request, share_id: int, user: CurrentStaff, session: SessionDep, store: StoreDep
) -> Response:
    share = shares.get_share(session=session, tenant_id=user.tenant_id, share_id=share_id)
    pdf = delivery.read_letter(
        session=session, store=store, share=share, actor=staff_actor(request, user)
    )
    return pdf_response(pdf, f"zorgbericht-{share.id}.pdf")


@router.get("/share")
def pacs_launch(
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
    tenant: Annotated[str, Query(max_length=64)],
    token: Annotated[str, Query(max_length=8192)],
) -> Response:
    """The PACS button: a link signed with the tenant's launch secret, valid 5 minutes."""
    try:
        owner = tenants.get_tenant(session=session, slug=tenant)
        launch = staff.read_launch(session=session, tenant=owner, token=token)
    except DomainError:
        launch = None
    if launch is None:
        audit.record(
            session=session,
            event=audit.Ev.staff_launch,
            actor=staff_actor(request),
            tenant_id=None,
            outcome=audit.Outcome.minor_failure,
        )
        return render(request, "staff/login.html", 400, error="launch_invalid", email="")
    audit.record(
        session=session,
        event=audit.Ev.staff_launch,
        actor=staff_actor(request, launch.user),
        tenant_id=launch.user.tenant_id,
        study_uids=launch.study_uids,
    )
    query = urlencode([("study", uid) for uid in launch.study_uids])
    return _signed_in(
        RedirectResponse(f"/staff/new?{query}", status_code=303), launch.user, runtime
    )
