"""Per-address throttling of the recipient gate, counted in the database (any replica)."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.orm import Session

from zorgbericht.recipients.models import ThrottleWindow
from zorgbericht.sqlutil import insert


def _key(scope: str, address: str, secret: str) -> str:
    # Keyed hash: the table never holds addresses in clear.
    key = hashlib.sha256(b"zorgbericht throttle\0" + secret.encode()).digest()
    return hmac.new(key, f"{scope}\0{address}".encode(), hashlib.sha256).hexdigest()


def window_start(now: datetime, window: timedelta) -> datetime:
    seconds = int(window.total_seconds()) or 1
    epoch = int(now.timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, UTC)


def hit(
    *,
    session: Session,
    scope: str,
    address: str,
    secret: str,
    window: timedelta,
    now: datetime,
) -> int:
    """Count one request from ``address`` in the current window; return the window's count."""
    stmt = insert(session, ThrottleWindow).values(
        key=_key(scope, address, secret), window_start=window_start(now, window), hits=1
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["key", "window_start"], set_={"hits": ThrottleWindow.hits + 1}
    ).returning(ThrottleWindow.hits)
    return int(session.execute(stmt).scalar_one())


def forget_before(*, session: Session, moment: datetime) -> int:
    """Drop windows that ended before ``moment``."""
    result = session.execute(delete(ThrottleWindow).where(ThrottleWindow.window_start < moment))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
