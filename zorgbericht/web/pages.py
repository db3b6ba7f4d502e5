"""Server-rendered pages: Jinja2 templates, the page language, the static files."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

import viewer_static
from zorgbericht.web.texts import TEXTS

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(viewer_static.__file__).parent
LANG_COOKIE = "zb_lang"


@cache
def environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(),
        undefined=StrictUndefined,
    )


def language(request: Request) -> str:
    """``?lang=`` wins, then the cookie, then the browser's preference; Dutch first."""
    chosen = request.query_params.get("lang") or request.cookies.get(LANG_COOKIE)
    if chosen in TEXTS:
        return chosen
    accept = request.headers.get("accept-language", "").lower()
    return "en" if accept.startswith("en") else "nl"


def render(
    request: Request, template: str, status_code: int = 200, **context: object
) -> HTMLResponse:
    lang = language(request)
    html = (
        environment()
        .get_template(template)
        .render(t=TEXTS[lang], lang=lang, path=request.url.path, **context)
    )
    response = HTMLResponse(html, status_code=status_code)
    if request.query_params.get("lang") in TEXTS:
        response.set_cookie(
            LANG_COOKIE, lang, max_age=365 * 86400, samesite="strict", secure=True, httponly=True
        )
    return response


def pdf_response(pdf: bytes, name: str) -> Response:
    """A PDF shown in the browser, never cached."""
    return Response(
        pdf,
        media_type="application/pdf",
        headers={"Content-Disposition": f'inline; filename="{name}"', "Cache-Control": "no-store"},
    )
