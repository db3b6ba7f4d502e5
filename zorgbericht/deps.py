"""FastAPI dependencies, as ``Annotated`` aliases a route signature can read."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from zorgbericht.audit import service as audit
from zorgbericht.errors import DomainError, Unauthorized
from zorgbericht.runtime import Runtime
from zorgbericht.storage import ObjectStore
from zorgbericht.tenants import service as tenants
from zorgbericht.tenants.models import ApiKey, Tenant


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


def get_session(runtime: Annotated[Runtime, Depends(get_runtime)]) -> Iterator[Session]:
    """One session per request: committed on success, rolled back on error.

    Used with ``scope="function"``: the commit happens before the response is sent, so a
    client that acts on an answer at once (a cookie just set) always finds it committed.
    """
    with runtime.sessions() as session:
        try:
            yield session
            session.commit()
        except DomainError as exc:
            session.commit() if exc.keep_changes else session.rollback()
            raise
        except BaseException:
            session.rollback()
            raise


def get_store(runtime: Annotated[Runtime, Depends(get_runtime)]) -> ObjectStore:
    return runtime.store


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]

_bearer = HTTPBearer(auto_error=False, description="API key from `zorgbericht apikey create`")


def get_api_client(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> tuple[Tenant, ApiKey]:
    if credentials is None:
        raise Unauthorized("an API key is required: Authorization: Bearer <key>")
    found = tenants.tenant_for_api_key(session=session, key=credentials.credentials)
    if found is None:
        raise Unauthorized("unknown or revoked API key")
    return found


def api_actor(request: Request, key: ApiKey) -> audit.Actor:
    """The audit actor for a request made with an API key."""
    return audit.Actor(
        "apikey",
        f"apikey:{key.id}",
        ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
    )


StoreDep = Annotated[ObjectStore, Depends(get_store)]
ApiClientDep = Annotated[tuple[Tenant, ApiKey], Depends(get_api_client)]
