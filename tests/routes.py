"""The app's HTTP routes as (method, path) pairs, for tests that must cover every one."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.routing import APIRoute


def app_routes(app: FastAPI, prefix: str = "/") -> set[tuple[str, str]]:
    """Every (method, path) the app serves under ``prefix``, through included routers too."""
    found: set[tuple[str, str]] = set()
    for route in app.routes:
        if isinstance(route, APIRoute):
            contexts = [route]
        else:  # FastAPI keeps an included router as one entry that expands on demand
            expand = getattr(route, "effective_route_contexts", None)
            contexts = list(expand()) if expand else []
        for context in contexts:
            if context.path.startswith(prefix):
                found |= {(m, context.path) for m in context.methods or () if m != "HEAD"}
    return found
