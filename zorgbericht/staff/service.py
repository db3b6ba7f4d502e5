"""Staff sign-in: password check, a signed session cookie, CSRF tokens, PACS launch links."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from functools import cache

from argon2.exceptions import VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import select
from sqlalchemy.orm import Session

from zorgbericht.audit import service as audit
from zorgbericht.tenants import service as tenants
from zorgbericht.tenants.models import StaffUser, Tenant

COOKIE = "__Host-zb_staff"
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
SESSION_SECONDS = 8 * 3600
LAUNCH_SECONDS = 300


@cache
def _dummy_hash() -> str:
    return tenants.PASSWORDS.hash(secrets.token_hex(16))


def _spend_time_like_a_check(password: str) -> None:
    """An unknown email costs as much as a wrong password: no account discovery by timing."""
    with contextlib.suppress(VerificationError):
        tenants.PASSWORDS.verify(_dummy_hash(), password)


@dataclass(frozen=True)
class Launch:
    """What a PACS button asks for: this staff member, these studies."""

    user: StaffUser
    study_uids: list[str]


def _sessions(secret: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret, salt="zorgbericht staff session")


def sign_in(*, session: Session, email: str, password: str, actor: audit.Actor) -> StaffUser | None:
    """Check a password; every attempt is audited (user authentication, 110114)."""
    user = session.scalar(
        select(StaffUser).where(
            StaffUser.email == email.strip().lower(), StaffUser.active.is_(True)
        )
    )
    if user is None:
        _spend_time_like_a_check(password)
    ok = user is not None and tenants.check_password(user, password)
    audit.record(
        session=session,
        event=audit.Ev.staff_sign_in,
        actor=audit.Actor(
            "staff", f"staff:{user.id}" if user else None, ip=actor.ip, user_agent=actor.user_agent
        ),
        tenant_id=user.tenant_id if user else None,
        outcome=audit.Outcome.success if ok else audit.Outcome.minor_failure,
    )
    return user if ok else None


def session_cookie(*, user: StaffUser, secret: str) -> str:
    return _sessions(secret).dumps({"u": user.id, "n": secrets.token_hex(8)})


def user_from_cookie(*, session: Session, cookie: str | None, secret: str) -> StaffUser | None:
    if not cookie:
        return None
    try:
        data = _sessions(secret).loads(cookie, max_age=SESSION_SECONDS)
    except BadSignature:
        return None
    user = session.get(StaffUser, data.get("u"))
    return user if user is not None and user.active else None


def csrf_token(*, cookie: str, secret: str) -> str:
    """Bound to the session cookie: a page of another site cannot know it."""
    key = hashlib.sha256(b"zorgbericht csrf\0" + secret.encode()).digest()
    return hmac.new(key, cookie.encode(), hashlib.sha256).hexdigest()[:40]


def check_csrf(*, cookie: str, secret: str, token: str) -> bool:
    return hmac.compare_digest(csrf_token(cookie=cookie, secret=secret), token or "")


def launch_link_token(*, tenant: Tenant, email: str, study_uids: list[str]) -> str:
    """What a PACS integration computes (see README): signed with the tenant's secret."""
    return URLSafeTimedSerializer(tenant.launch_secret, salt="zorgbericht pacs launch").dumps(
        {"user": email.strip().lower(), "studies": study_uids}
    )


def read_launch(*, session: Session, tenant: Tenant, token: str) -> Launch | None:
    """A valid, fresh (5 minutes) launch for an active staff member of this tenant."""
    serializer = URLSafeTimedSerializer(tenant.launch_secret, salt="zorgbericht pacs launch")
    try:
        data = serializer.loads(token, max_age=LAUNCH_SECONDS)
    except BadSignature:
        return None
    user = session.scalar(
        select(StaffUser).where(
            StaffUser.email == str(data.get("user", "")),
            StaffUser.tenant_id == tenant.id,
            StaffUser.active.is_(True),
        )
    )
    studies = [str(uid) for uid in data.get("studies", []) if _UID.fullmatch(str(uid))][:100]
    return Launch(user, studies) if user and studies else None
