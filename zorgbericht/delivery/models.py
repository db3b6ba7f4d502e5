"""The outbox: every email and SMS goes through it, so a relay outage delays, never loses."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from zorgbericht.db import Base, utcnow


class OutboxState(enum.StrEnum):
    held = "held"  # waits for its share to become ready
    pending = "pending"
    sent = "sent"
    failed = "failed"  # gave up after the last attempt; visible to staff


class OutboxMessage(Base):
    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    share_id: Mapped[int | None] = mapped_column(
        ForeignKey("share.id", ondelete="CASCADE"), index=True
    )
    channel: Mapped[str] = mapped_column(String(8))  # email | sms
    template: Mapped[str] = mapped_column(String(64))
    recipient: Mapped[str | None] = mapped_column(String(320))
    subject: Mapped[str | None] = mapped_column(String(255))
    # The rendered message holds the link: it is blanked once sent.
    body_text: Mapped[str | None] = mapped_column(Text)
    body_html: Mapped[str | None] = mapped_column(Text)
    message_id: Mapped[str] = mapped_column(String(255))
    state: Mapped[OutboxState] = mapped_column(String(16), default=OutboxState.pending)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(String(255))
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
