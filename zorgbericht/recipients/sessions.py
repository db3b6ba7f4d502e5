"""Recipient sessions: a random cookie id stored hashed, idle and absolute timeouts, CSRF."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from fastapi import Request
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from zorgbericht.audit import service as audit
from zorgbericht.recipients.models import RecipientSession
from zorgbericht.settings import Settings

COOKIE = "__Host-zb_session"
CSRF_COOKIE = "zb_csrf"
CSRF_HEADER = "X-CSRF-Token"
# Writing last_seen_at on every image request would make each one a write.
TOUCH_EVERY = timedelta(seconds=30)


def new_token() -> str:
    """A fresh 128-bit session id for the cookie; the database only sees its hash."""
    return secrets.token_urlsafe(16)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_token(row: RecipientSession, secret: str) -> str:
    """The CSRF token of a session: stable for its life, unguessable without the key."""
    key = hashlib.sha256(b"zorgbericht recipient csrf\0" + secret.encode()).digest()
    message = f"{row.id}\0{row.created_at.isoformat()}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:32]


@dataclass(frozen=True)
class Timeouts:
    idle: timedelta
    absolute: timedelta

    @classmethod
    def of(cls, settings: Settings) -> Timeouts:
        return cls(settings.recipient_idle, settings.recipient_max_age)


def find(
    *, session: Session, token: str | None, timeouts: Timeouts, now: datetime
) -> RecipientSession | None:
    """The live session behind a cookie, touched; None when absent, ended or timed out."""
    if not token or len(token) > 64:
        return None
    row = session.scalar(
        select(RecipientSession).where(RecipientSession.token_hash == token_hash(token))
    )
    if row is None or row.ended_at is not None:
        return None
    if now - row.last_seen_at > timeouts.idle or now - row.created_at > timeouts.absolute:
        row.ended_at = now
        return None
    if now - row.last_seen_at > TOUCH_EVERY:
        row.last_seen_at = now
    return row


def set_cookies(response: Response, *, token: str, csrf: str, max_age: timedelta) -> None:
    """The session cookie (HttpOnly) and the CSRF cookie the page's script reads."""
    seconds = int(max_age.total_seconds())
    response.set_cookie(
        COOKIE, token, max_age=seconds, path="/", secure=True, httponly=True, samesite="strict"
    )
    response.set_cookie(
        CSRF_COOKIE,
        csrf,
        max_age=seconds,
        path="/",
        secure=True,
        httponly=False,
        samesite="strict",
    )


def clear_cookies(response: Response) -> None:
    for name, httponly in ((COOKIE, True), (CSRF_COOKIE, False)):
        response.delete_cookie(name, path="/", secure=True, httponly=httponly, samesite="strict")


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def actor(request: Request, row: RecipientSession | None, on_behalf_of: str | None) -> audit.Actor:
    """The audit actor: the session by its row id, never by its secret."""
    return audit.Actor(
        "recipient",
        f"recipient-session:{row.id}" if row is not None and row.id else None,
        on_behalf_of=on_behalf_of,
        ip=client_ip(request),
        user_agent=request.headers.get("user-agent"),
    )
