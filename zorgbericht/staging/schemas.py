"""Plain data passed between the DICOM node and the staging service."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from pydantic import BaseModel


@dataclass(frozen=True)
class InstanceMeta:
    """What the index needs from one instance's header."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    patient_id: str | None = None
    issuer_of_patient_id: str | None = None
    patient_name: str | None = None
    birth_date: date | None = None
    bsn: str | None = None
    study_description: str | None = None
    study_date: date | None = None
    accession_number: str | None = None
    modality: str | None = None
    series_description: str | None = None
    series_number: int | None = None
    instance_number: int | None = None
    frames: int = 1
    has_pixels: bool = True
    # The header attributes this instance's DICOMDIR records need, as DICOM JSON (bounded).
    dir_record: dict[str, Any] | None = field(default=None, hash=False, compare=False)


@dataclass(frozen=True)
class StoredInstance:
    """An instance durably in the object store, ready to be indexed."""

    meta: InstanceMeta
    object_key: str
    bytes: int
    sha256: str


class StudyOut(BaseModel):
    study_uid: str
    patient_id: str | None
    patient_name: str | None
    birth_date: date | None
    description: str | None
    study_date: date | None
    modalities: list[str]
    series_count: int
    instance_count: int
    bytes: int
    state: str
    last_activity_at: datetime
