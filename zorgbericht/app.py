"""The FastAPI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text

from zorgbericht import __version__
from zorgbericht.admin.routes import router as admin_router
from zorgbericht.errors import DomainError
from zorgbericht.recipients.routes import api as recipient_api
from zorgbericht.recipients.routes import pages as recipient_pages
from zorgbericht.runtime import Runtime, build_runtime
from zorgbericht.settings import Settings
from zorgbericht.shares.routes import record_invalid_request
from zorgbericht.shares.routes import router as shares_router
from zorgbericht.staff.routes import SignInRequired
from zorgbericht.staff.routes import router as staff_router
from zorgbericht.staging.routes import router as studies_router
from zorgbericht.web.pages import STATIC
from zorgbericht.web.security import SecurityHeaders


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    """Build the app; the runtime is made in the lifespan unless one is handed in."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = runtime is None
        app.state.runtime = runtime or build_runtime(settings or Settings())
        try:
            yield
        finally:
            if owned:
                app.state.runtime.close()

    app = FastAPI(
        title="zorgbericht",
        version=__version__,
        summary="Share imaging studies through a secure 14-day link",
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
        lifespan=lifespan,
    )

    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(SignInRequired)
    async def sign_in_required(request: Request, _: SignInRequired) -> RedirectResponse:
        return RedirectResponse("/staff/login", status_code=303)

    @app.exception_handler(DomainError)
    async def domain_error(request: Request, exc: DomainError) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 401 and not request.url.path.startswith("/api/v1/recipient/"):
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse(
            {"detail": exc.detail, **exc.extra}, status_code=exc.status_code, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """422 with one readable sentence per problem; never echoes what was sent."""
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"] if p not in ("body", "query", "path"))
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append({"field": where or None, "message": message})
        detail = "; ".join(
            f"{p['field']}: {p['message']}" if p["field"] else p["message"] for p in problems
        )
        if request.method == "POST" and request.url.path == "/api/v1/shares":
            await run_in_threadpool(
                record_invalid_request, request, request.app.state.runtime, detail, exc.body
            )
        return JSONResponse({"detail": detail, "problems": problems}, status_code=422)

    @app.get("/healthz", tags=["operations"])
    def healthz(request: Request) -> dict[str, str]:
        """Liveness and readiness: the database answers."""
        rt: Runtime = request.app.state.runtime
        with rt.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"status": "ok", "version": __version__}

    app.include_router(studies_router)
    app.include_router(shares_router)
    app.include_router(staff_router)
    app.include_router(admin_router)
    app.include_router(recipient_api)
    app.include_router(recipient_pages)
    return app
