"""Recipient sessions, SMS challenges, downloads and the counters that guard them."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from zorgbericht.db import Base, utcnow


class RecipientSession(Base):
    """A browser that opened a link; only the hash of its cookie's random id is kept."""

    __tablename__ = "recipient_session"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The code's HMAC, also for codes that match no share: those must behave alike.
    code_hmac: Mapped[str] = mapped_column(String(64), index=True)
    share_id: Mapped[int | None] = mapped_column(
        ForeignKey("share.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    terms_accepted_at: Mapped[datetime | None]
    birth_date_ok_at: Mapped[datetime | None]
    signed_in_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]


class CodeProbe(Base):
    """Wrong birth dates against a code that matches no share, counted like a share's."""

    __tablename__ = "code_probe"

    code_hmac: Mapped[str] = mapped_column(String(64), primary_key=True)
    dob_failures: Mapped[int] = mapped_column(default=0)
    locked_until: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class SmsChallenge(Base):
    """One SMS code: 6 digits stored as an HMAC, valid 5 minutes, single use."""

    __tablename__ = "sms_challenge"
    __table_args__ = (Index("ix_sms_challenge_share_created", "share_id", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    share_id: Mapped[int] = mapped_column(ForeignKey("share.id", ondelete="CASCADE"))
    session_id: Mapped[int] = mapped_column(
        ForeignKey("recipient_session.id", ondelete="CASCADE"), index=True
    )
    code_hmac: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    checks: Mapped[int] = mapped_column(default=0)
    used_at: Mapped[datetime | None]
    superseded: Mapped[bool] = mapped_column(default=False)


class Download(Base):
    """One ZIP handed out; the rows of a share's Europe/Amsterdam day make its daily cap."""

    __tablename__ = "download"
    __table_args__ = (Index("ix_download_share_day", "share_id", "day"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    share_id: Mapped[int] = mapped_column(ForeignKey("share.id", ondelete="CASCADE"))
    session_id: Mapped[int | None] = mapped_column(
        ForeignKey("recipient_session.id", ondelete="SET NULL")
    )
    format: Mapped[str] = mapped_column(String(8))  # dicom | jpeg
    scope: Mapped[str] = mapped_column(String(8))  # study | all
    study_count: Mapped[int] = mapped_column(default=1)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    day: Mapped[date]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SeriesView(Base):
    """A series a session has looked at; the first look is what the trail records."""

    __tablename__ = "series_view"
    __table_args__ = (UniqueConstraint("session_id", "series_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("recipient_session.id", ondelete="CASCADE"))
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"))
    viewed_at: Mapped[datetime] = mapped_column(default=utcnow)


class ThrottleWindow(Base):
    """Requests per client address (stored as an HMAC) and fixed time window."""

    __tablename__ = "throttle_window"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(primary_key=True)
    hits: Mapped[int] = mapped_column(default=0)
