"""The append-only, hash-chained audit trail (NEN 7513, DICOM audit event codes)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from zorgbericht.db import Base


class AuditEvent(Base):
    __tablename__ = "audit_event"
    __table_args__ = (
        Index("ix_audit_tenant_time", "tenant_id", "occurred_at"),
        Index("ix_audit_share", "share_id"),
        Index("ix_audit_tenant_patient", "tenant_id", "patient_id"),
    )

    # seq is the position in the chain: assigned under the chain-head lock, gap-free.
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    occurred_at: Mapped[datetime]
    # No foreign key: the trail outlives what it speaks of and is never rewritten by a cascade.
    tenant_id: Mapped[int | None]
    event: Mapped[str] = mapped_column(String(64))
    event_code: Mapped[str] = mapped_column(String(6))
    action: Mapped[str] = mapped_column(String(1))  # DICOM EventActionCode: C R U D E
    outcome: Mapped[int] = mapped_column(default=0)  # 0 success, 4 minor, 8 serious, 12 major
    actor_kind: Mapped[str] = mapped_column(String(16))  # staff, recipient, system, dicom, apikey
    actor_id: Mapped[str | None] = mapped_column(String(128))
    on_behalf_of: Mapped[str | None] = mapped_column(String(128))
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(255))
    patient_id: Mapped[str | None] = mapped_column(String(64))
    bsn_last3: Mapped[str | None] = mapped_column(String(3))
    share_id: Mapped[int | None] = mapped_column(BigInteger)
    study_uids: Mapped[list[str]] = mapped_column(JSON, default=list)
    details: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """One row: the end of the chain. Updating it first serialises audit writers.

    ``floor_seq`` and ``floor_hash`` are where the chain starts after the retention job
    removed events older than the retention period: the last removed row's position and
    hash. ``verify`` starts there, and the removal itself is an event in the chain.
    """

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    last_hash: Mapped[str] = mapped_column(String(64))
    floor_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    floor_hash: Mapped[str] = mapped_column(String(64), default="0" * 64, server_default="0" * 64)


class AuditForward(Base):
    """One row: how far the trail has been forwarded to the ATNA collector.

    The position only moves after the collector took the events, so an unreachable
    collector delays forwarding and never loses an event (the trail itself is the queue).
    """

    __tablename__ = "audit_forward"

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(String(255))
    forwarded_at: Mapped[datetime | None]
