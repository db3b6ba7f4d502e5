"""What every admin page needs: the signed-in admin, its pages, and friendly refusals."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute

from zorgbericht.admin.words import Words
from zorgbericht.audit import service as audit
from zorgbericht.deps import SessionDep
from zorgbericht.errors import DomainError
from zorgbericht.staff import service as staff
from zorgbericht.staff.routes import CurrentStaff, staff_actor
from zorgbericht.tenants.models import StaffUser, Tenant
from zorgbericht.web.pages import language, render
from zorgbericht.web.texts import TEXTS

# A refusal's status and the text that explains it; others reach the app's handlers.
REFUSALS = {403: "admin_only", 404: "admin_not_found", 409: "admin_conflict"}


class AdminOnly(Exception):
    """A signed-in staff member without the admin role."""


@dataclass(frozen=True)
class Admin:
    user: StaffUser
    tenant: Tenant
    actor: audit.Actor

    @property
    def tenant_id(self) -> int:
        return self.tenant.id


def current_admin(request: Request, user: CurrentStaff, session: SessionDep) -> Admin:
    """The signed-in admin; staff without the role get the admins-only page."""
    tenant = session.get(Tenant, user.tenant_id)
    assert tenant is not None
    request.state.portal = (user, tenant)  # for a refusal page's header and navigation
    if user.role != "admin":
        raise AdminOnly
    return Admin(user, tenant, staff_actor(request, user))


AdminDep = Annotated[Admin, Depends(current_admin)]


def _csrf(request: Request) -> str:
    secret = request.app.state.runtime.settings.secret_key.get_secret_value()
    return staff.csrf_token(cookie=request.cookies.get(staff.COOKIE, ""), secret=secret)


def words(request: Request, people: dict[str, tuple[str, str]] | None = None) -> Words:
    return Words(TEXTS[language(request)], people or {})


def page(
    request: Request,
    admin: Admin,
    template: str,
    status_code: int = 200,
    **context: object,
) -> Response:
    """Render an admin page with the header, navigation and CSRF token of the portal."""
    context.setdefault("w", words(request))
    return render(
        request,
        template,
        status_code,
        user=admin.user,
        tenant=admin.tenant,
        csrf=_csrf(request),
        **context,
    )


def refusal(request: Request, status_code: int) -> Response:
    """A page that says why not, in the portal's frame when the visitor is known."""
    user, tenant = getattr(request.state, "portal", (None, None))
    return render(
        request,
        "admin/message.html",
        status_code,
        user=user,
        tenant=tenant,
        csrf=_csrf(request),
        message=REFUSALS[status_code],
    )


class AdminRoute(APIRoute):
    """Turns the admins-only refusal and not-found or conflicting requests into pages."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except AdminOnly:
                return refusal(request, 403)
            except DomainError as exc:
                if exc.status_code not in REFUSALS:
                    raise
                return refusal(request, exc.status_code)

        return guarded
