"""Shares: one patient's studies behind one link code, for 14 days."""

from __future__ import annotations

import enum
from datetime import date, datetime

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from zorgbericht.db import Base, utcnow


class ShareState(enum.StrEnum):
    pending = "pending"
    ready = "ready"
    expired = "expired"
    revoked = "revoked"
    failed = "failed"


LIVE_STATES = (ShareState.pending, ShareState.ready)


class Share(Base):
    __tablename__ = "share"
    __table_args__ = (
        Index("ix_share_tenant_state", "tenant_id", "state"),
        Index("ix_share_expires", "expires_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    created_by: Mapped[str] = mapped_column(String(64))  # "staff:12" or "apikey:3"
    recipient: Mapped[str] = mapped_column(String(16))  # patient | provider
    delivery: Mapped[str] = mapped_column(String(16))  # email | letter | url
    language: Mapped[str] = mapped_column(String(2))
    state: Mapped[ShareState] = mapped_column(String(16), default=ShareState.pending)
    failed_reason: Mapped[str | None] = mapped_column(String(255))
    code_hmac: Mapped[str] = mapped_column(String(64), unique=True)
    # Patient data, removed by the purge once the share is over:
    email: Mapped[str | None] = mapped_column(String(320))
    phone: Mapped[str | None] = mapped_column(String(20))
    patient_id: Mapped[str | None] = mapped_column(String(64))
    issuer_of_patient_id: Mapped[str | None] = mapped_column(String(64))
    birth_date: Mapped[date | None]
    bsn_last3: Mapped[str | None] = mapped_column(String(3))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    ready_at: Mapped[datetime | None]
    expires_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    purged_at: Mapped[datetime | None]
    # The recipient gate, counted per share (DESIGN §5): never per browser or address.
    # A right answer does not reset them: they count the last day's failures (a rolling
    # window from the latest failure), so nobody gets 4 more tries after each real sign-in.
    dob_failures: Mapped[int] = mapped_column(default=0)
    dob_failed_at: Mapped[datetime | None]
    sms_failures: Mapped[int] = mapped_column(default=0)
    sms_failed_at: Mapped[datetime | None]
    locked_until: Mapped[datetime | None]

    studies: Mapped[list[ShareStudy]] = relationship(
        back_populates="share",
        cascade="all, delete-orphan",
        lazy="selectin",
        order_by="ShareStudy.position",
    )


class ShareStudy(Base):
    __tablename__ = "share_study"

    share_id: Mapped[int] = mapped_column(
        ForeignKey("share.id", ondelete="CASCADE"), primary_key=True
    )
    study_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(default=0)

    share: Mapped[Share] = relationship(back_populates="studies")


class PullState(enum.StrEnum):
    pending = "pending"
    running = "running"
    done = "done"
    failed = "failed"


class PullJob(Base):
    """A study to retrieve from the tenant's PACS with C-MOVE (destination: our AE)."""

    __tablename__ = "pull_job"
    __table_args__ = (Index("ix_pull_job_due", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    study_uid: Mapped[str] = mapped_column(String(64))
    state: Mapped[PullState] = mapped_column(String(16), default=PullState.pending)
    attempts: Mapped[int] = mapped_column(default=0)
    expected_instances: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(String(255))
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
