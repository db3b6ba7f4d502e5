"""The index of what is staged: study, series, instance."""

from __future__ import annotations

import enum
from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from zorgbericht.db import Base, utcnow


class StudyState(enum.StrEnum):
    receiving = "receiving"
    stable = "stable"


class PreviewState(enum.StrEnum):
    pending = "pending"
    done = "done"
    failed = "failed"
    none = "none"  # no pixel data (SR, encapsulated PDF, ...)


class Study(Base):
    __tablename__ = "study"
    __table_args__ = (
        UniqueConstraint("tenant_id", "study_uid"),
        Index("ix_study_tenant_patient", "tenant_id", "patient_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    study_uid: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str | None] = mapped_column(String(64))
    issuer_of_patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(324))
    birth_date: Mapped[date | None]
    bsn: Mapped[str | None] = mapped_column(String(16))
    description: Mapped[str | None] = mapped_column(String(64))
    study_date: Mapped[date | None]
    accession_number: Mapped[str | None] = mapped_column(String(16))
    modalities: Mapped[str] = mapped_column(String(128), default="")
    series_count: Mapped[int] = mapped_column(default=0)
    instance_count: Mapped[int] = mapped_column(default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    state: Mapped[StudyState] = mapped_column(String(16), default=StudyState.receiving)
    interrupted: Mapped[bool] = mapped_column(default=False)
    first_received_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_activity_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    stable_at: Mapped[datetime | None]
    purged_at: Mapped[datetime | None]

    series: Mapped[list[Series]] = relationship(
        back_populates="study", cascade="all, delete-orphan", order_by="Series.number"
    )


class Series(Base):
    __tablename__ = "series"
    __table_args__ = (UniqueConstraint("study_id", "series_uid"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    series_uid: Mapped[str] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(16))
    description: Mapped[str | None] = mapped_column(String(64))
    number: Mapped[int | None]
    instance_count: Mapped[int] = mapped_column(default=0)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(
        back_populates="series", cascade="all, delete-orphan", order_by="Instance.number"
    )


class Instance(Base):
    __tablename__ = "instance"
    __table_args__ = (
        UniqueConstraint("series_id", "sop_uid"),
        Index("ix_instance_preview_pending", "preview_state"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    sop_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    number: Mapped[int | None]
    frames: Mapped[int] = mapped_column(default=1)
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    object_key: Mapped[str] = mapped_column(String(255))
    preview_state: Mapped[PreviewState] = mapped_column(String(16), default=PreviewState.pending)
    preview_error: Mapped[str | None] = mapped_column(String(255))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Header attributes a DICOMDIR record of this instance needs (PS3.3 F.5), read at ingest.
    dir_record: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    series: Mapped[Series] = relationship(back_populates="instances")
